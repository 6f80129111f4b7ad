#!/usr/bin/env bash
# Bounded fuzz run: builds every cargo-fuzz target and runs each for SECONDS (default 30),
# starting from the committed seed corpus; exits non-zero when a target crashes (libFuzzer
# leaves the crashing input under fuzz/artifacts/<target>/).
#
# Only a stable toolchain is installed here. cargo-fuzz passes nightly-only rustc flags
# (-Zsanitizer=address and the sanitizer-coverage options), so we set RUSTC_BOOTSTRAP=1,
# which lets a stable rustc accept -Z flags. It affects only this script's cargo processes;
# the workspace itself never needs it. With a nightly toolchain it is harmless.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Fuzz into a scratch copy so the committed seed corpus only changes on purpose.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

status=0
for target in $(cargo fuzz list); do
  echo "=== fuzz $target for ${seconds}s"
  cargo fuzz build "$target"
  mkdir -p "$work/$target"
  cp -r "corpus/$target/." "$work/$target/"
  # -rss_limit_mb bounds memory; -max_len keeps inputs near real message sizes.
  if ! cargo fuzz run "$target" "$work/$target" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1; then
    echo "fuzz target $target FAILED; crashing input under fuzz/artifacts/$target/" >&2
    status=1
  fi
done
exit "$status"
