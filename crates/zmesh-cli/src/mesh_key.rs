//! Gives the verbs the mesh key from the shell: `--mesh-key-file`, the `ZMESH_MESH_KEY`
//! environment variable and `--no-mesh-key` (and, for `serve`, a previous key for
//! rotation), and runs `zmesh keygen`. A key that cannot be loaded is a usage error (exit 2):
//! nothing was attempted, and the fix is in the command line or the environment.

use crate::output::outln;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zmesh_core::MeshKey;
use zmesh_core::trust::{MESH_KEY_ENV, MIN_SECRET_LEN};

use crate::CliError;

/// Random bytes in a key `zmesh keygen` writes (256 bits; written as 64 hex digits).
const KEYGEN_BYTES: usize = 32;

/// Where the key comes from, said once for every verb's --help.
pub(crate) const KEY_HELP: &str = "\
Mesh key: with --mesh-key-file FILE (or, without it, the key in the environment variable
ZMESH_MESH_KEY) every message is sealed with that pre-shared key, as keyed nodes require;
--no-mesh-key ignores ZMESH_MESH_KEY. A key file holds the secret itself: any bytes, at least
16 after surrounding whitespace is trimmed (`zmesh keygen` writes 64 hex digits); the variable
holds the same text. A key file that cannot be read, or a key under 16 bytes, exits 2.
A keyed node refuses unkeyed or wrongly keyed calls with `Unauthenticated` (exit 1).";

/// The mesh key options of the verbs that talk to nodes and publishers.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct KeyArgs {
    /// Seal messages with the mesh key in FILE (default: the key in $ZMESH_MESH_KEY, if set).
    #[arg(long, value_name = "FILE", env = "ZMESH_MESH_KEY_FILE")]
    mesh_key_file: Option<PathBuf>,
    /// Use no mesh key, even when ZMESH_MESH_KEY is set.
    #[arg(long, conflicts_with = "mesh_key_file", env = "ZMESH_NO_MESH_KEY")]
    no_mesh_key: bool,
}

/// The mesh key options of `zmesh serve`: the key, and a previous one for rotation.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeKeyArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Rotation: also accept messages sealed with the (old) key in FILE until the time
    /// given with --previous-until (answering such callers in the old key); the node
    /// otherwise seals with the new key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "previous_until",
        env = "ZMESH_PREVIOUS_KEY_FILE"
    )]
    previous_key_file: Option<PathBuf>,
    /// When the previous key stops being accepted: a wall-clock time, as UTC
    /// `YYYY-MM-DDTHH:MM:SSZ` or `@SECONDS` since the Unix epoch (e.g. `@$(date -d '+1 day'
    /// +%s)`). An absolute time, so restarting the node does not extend the grace.
    #[arg(long, value_name = "TIME", requires = "previous_key_file", value_parser = parse_wall_time, env = "ZMESH_PREVIOUS_UNTIL")]
    previous_until: Option<SystemTime>,
}

/// A wall-clock time from the command line: `@SECONDS` since the Unix epoch, or UTC
/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 with a `Z` or `+00:00` offset, no fractions).
pub(crate) fn parse_wall_time(text: &str) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "{text:?} is not a time: give @SECONDS since the Unix epoch or YYYY-MM-DDTHH:MM:SSZ (UTC)"
        )
    };
    if let Some(secs) = text.strip_prefix('@') {
        let secs: u64 = secs.parse().map_err(|_| bad())?;
        return UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(bad);
    }
    let stamp = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
        .ok_or_else(bad)?;
    let (date, time) = stamp.split_once(['T', ' ']).ok_or_else(bad)?;
    let numbers = |part: &str, sep: char| -> Result<Vec<u64>, String> {
        part.split(sep)
            .map(|n| {
                if n.is_empty() || n.len() > 4 {
                    Err(bad())
                } else {
                    n.parse().map_err(|_| bad())
                }
            })
            .collect()
    };
    let (date, time) = (numbers(date, '-')?, numbers(time, ':')?);
    let [year, month, day] = <[u64; 3]>::try_from(date).map_err(|_| bad())?;
    let [hour, minute, second] = <[u64; 3]>::try_from(time).map_err(|_| bad())?;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1970..=9999).contains(&year)
        || day == 0
        || day > days_in_month
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(bad)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year >= 1970), after
/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01, the inverse of [`days_from_civil`] (Howard
/// Hinnant's `civil_from_days`): `(year, month, day)`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `time` to the minute in UTC, `YYYY-MM-DD HH:MM UTC` (as `zmesh bench`'s plot is dated).
pub(crate) fn utc_minute(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let minutes = secs % 86_400 / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

/// A secret as loaded, before it becomes a [`MeshKey`]; never printed.
pub(crate) struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl KeyArgs {
    /// The key these options name: the file, else `ZMESH_MESH_KEY` unless `--no-mesh-key`,
    /// else none.
    pub(crate) fn load(&self) -> Result<Option<MeshKey>, CliError> {
        self.secret()?.map(|s| s.mesh_key()).transpose()
    }

    /// The secret behind [`load`](Self::load).
    pub(crate) fn secret(&self) -> Result<Option<Secret>, CliError> {
        if let Some(path) = &self.mesh_key_file {
            return read_key_file(path).map(Some);
        }
        if self.no_mesh_key {
            return Ok(None);
        }
        match std::env::var_os(MESH_KEY_ENV) {
            None => Ok(None),
            Some(value) => {
                let value = value
                    .into_string()
                    .map_err(|_| CliError::Usage(format!("{MESH_KEY_ENV} is not valid Unicode")))?;
                // As MeshKey::from_env reads it. Set but empty is refused rather than taken
                // as "no key": a `serve` whose key failed to expand must not run unkeyed.
                let secret = value.trim();
                if secret.is_empty() {
                    return Err(CliError::Usage(format!(
                        "{MESH_KEY_ENV} is set but empty; unset it or pass --no-mesh-key"
                    )));
                }
                Ok(Some(Secret(secret.as_bytes().to_vec())))
            }
        }
    }
}

impl ServeKeyArgs {
    /// The node's key, with the previous one accepted for its grace when given.
    pub(crate) fn load(&self) -> Result<Option<MeshKey>, CliError> {
        let key = self.key.load()?;
        match (key, &self.previous_key_file, self.previous_until) {
            (Some(key), Some(path), Some(until)) => {
                let previous = read_key_file(path)?.mesh_key()?;
                if previous.key_id() == key.key_id() {
                    return Err(CliError::Usage(format!(
                        "the previous key in {} is the current key",
                        path.display()
                    )));
                }
                if until <= SystemTime::now() {
                    eprintln!(
                        "zmesh: warning: --previous-until is in the past: the previous key in {} is refused",
                        path.display()
                    );
                }
                Ok(Some(key.with_previous_until(&previous, until)))
            }
            (None, Some(_), _) => Err(CliError::Usage(
                "--previous-key-file needs a current key (--mesh-key-file or ZMESH_MESH_KEY)"
                    .into(),
            )),
            (key, _, _) => Ok(key),
        }
    }
}

impl Secret {
    pub(crate) fn mesh_key(&self) -> Result<MeshKey, CliError> {
        MeshKey::from_secret(&self.0).map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// A key file's secret, as [`MeshKey::from_file`] reads it (surrounding ASCII whitespace
/// trimmed), with a warning when others may read the file.
pub(crate) fn read_key_file(path: &Path) -> Result<Secret, CliError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CliError::Usage(format!("cannot read mesh key file {}: {e}", path.display()))
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "zmesh: warning: mesh key file {} is readable by others (mode {mode:04o}); chmod 600 it",
                path.display()
            );
        }
    }
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET_LEN {
        return Err(CliError::Usage(format!(
            "mesh key file {}: a mesh key needs at least {MIN_SECRET_LEN} bytes of secret, got {}",
            path.display(),
            secret.len()
        )));
    }
    Ok(Secret(secret.to_vec()))
}

/// The options of `zmesh keygen`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The key is 32 random bytes from the operating system written as 64 hex digits and a newline,
the format --mesh-key-file reads (any secret of at least 16 bytes works there; surrounding
whitespace is ignored). With --out FILE the file is created with mode 0600 and an existing
file is left alone (exit 2) unless --force; stderr then names the key's id (derived from the
key, safe to show) so two machines' keys can be compared. Without --out the key goes to stdout.

Examples:
  zmesh keygen --out /etc/zmesh/mesh.key
  zmesh serve --mesh-key-file /etc/zmesh/mesh.key --bind tcp://0.0.0.0:4242 echo
  ZMESH_MESH_KEY=$(cat /etc/zmesh/mesh.key) zmesh call tcp://10.0.0.5:4242 echo.upper hi")]
pub(crate) struct KeygenArgs {
    /// Write the key to FILE (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace FILE when it exists.
    #[arg(long, requires = "out")]
    force: bool,
}

/// A fresh key as `zmesh keygen` writes it (without the newline): 64 hex digits of OS
/// randomness.
pub(crate) fn random_key_text() -> Result<String, CliError> {
    let mut random = [0u8; KEYGEN_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| CliError::Other(format!("no randomness for a key: {e}")))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// `zmesh keygen`.
pub(crate) fn keygen(args: &KeygenArgs) -> Result<(), CliError> {
    let text = random_key_text()?;
    let id = MeshKey::from_secret(text.as_bytes())
        .map_err(|e| CliError::Other(e.to_string()))?
        .key_id();
    let Some(path) = &args.out else {
        outln!("{text}");
        return Ok(());
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CliError::Usage(format!(
            "{} exists; pass --force to replace it",
            path.display()
        )),
        _ => CliError::Other(format!("cannot create {}: {e}", path.display())),
    })?;
    let write = |file: &mut std::fs::File| -> std::io::Result<()> {
        // A replaced file keeps its old mode at open: restrict it before the key goes in.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(format!("{text}\n").as_bytes())?;
        file.sync_all()
    };
    write(&mut file)
        .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
    eprintln!(
        "zmesh: wrote a new mesh key (id {id:08x}) to {}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(file: Option<&Path>, no_key: bool) -> KeyArgs {
        KeyArgs {
            mesh_key_file: file.map(Path::to_path_buf),
            no_mesh_key: no_key,
        }
    }

    #[test]
    fn a_key_file_reads_as_the_library_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        std::fs::write(&path, "  0123456789abcdef0123\n").expect("write");
        let ours = args(Some(&path), false)
            .load()
            .expect("loads")
            .expect("a key");
        let library = MeshKey::from_file(&path).expect("loads");
        assert_eq!(ours.key_id(), library.key_id());
    }

    #[test]
    fn short_and_missing_key_files_are_usage_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").expect("write");
        let err = args(Some(&short), false).load().expect_err("too short");
        assert!(
            matches!(&err, CliError::Usage(m) if m.contains("at least 16 bytes")),
            "{err}"
        );
        let err = args(Some(&dir.path().join("missing")), false)
            .load()
            .expect_err("missing");
        assert!(
            matches!(&err, CliError::Usage(m) if m.contains("cannot read mesh key file")),
            "{err}"
        );
    }

    #[test]
    fn a_sealed_event_opens_with_the_same_key_only() {
        use zmesh_core::trust::{Kind, Trust};
        let secret = Secret(b"0123456789abcdef0123".to_vec());
        let frame = secret.mesh_key().expect("a key").seal_event(b"event");
        let same = MeshKey::from_secret(b"0123456789abcdef0123").expect("a key");
        assert_eq!(
            Trust::new(same.clone())
                .open(&frame, Kind::Event)
                .expect("opens"),
            &b"event"[..]
        );
        // Sealed as an event, it opens as nothing else.
        assert!(Trust::new(same).open(&frame, Kind::Request).is_err());
        let other = MeshKey::from_secret(b"another secret, long enough").expect("a key");
        assert!(Trust::new(other).open(&frame, Kind::Event).is_err());
    }

    #[test]
    fn wall_times_parse_as_utc_or_epoch_seconds() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(parse_wall_time("@0"), Ok(at(0)));
        assert_eq!(parse_wall_time("@1700000000"), Ok(at(1_700_000_000)));
        assert_eq!(parse_wall_time("1970-01-01T00:00:00Z"), Ok(at(0)));
        // `date -u -d 2023-11-14T22:13:20Z +%s` = 1700000000.
        assert_eq!(
            parse_wall_time("2023-11-14T22:13:20Z"),
            Ok(at(1_700_000_000))
        );
        assert_eq!(
            parse_wall_time("2023-11-14 22:13:20+00:00"),
            Ok(at(1_700_000_000))
        );
        // 2024-02-29 is a leap day; 2024-03-01T00:00:00Z = 1709251200.
        assert_eq!(
            parse_wall_time("2024-03-01T00:00:00Z"),
            Ok(at(1_709_251_200))
        );
        assert!(parse_wall_time("2024-02-29T12:00:00Z").is_ok());
        for bad in [
            "",
            "@",
            "@-1",
            "@1.5",
            "tomorrow",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+01:00",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13Z",
            "1969-12-31T23:59:59Z",
            "2023-11-14",
        ] {
            assert!(parse_wall_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_minutes_read_back_as_the_same_time() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(utc_minute(at(0)), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(at(1_700_000_000)), "2023-11-14 22:13 UTC");
        assert_eq!(utc_minute(at(1_709_251_199)), "2024-02-29 23:59 UTC");
        // Every day of four years (a leap day among them) parses back to its own minute.
        for day in 19_000..19_000 + 4 * 366 {
            let secs = day * 86_400 + 3_600 * 13 + 60 * 7;
            let text = utc_minute(at(secs + 59));
            let stamp = format!("{}:00Z", text.trim_end_matches(" UTC").replace(' ', "T"));
            assert_eq!(parse_wall_time(&stamp), Ok(at(secs)), "{text}");
        }
    }
}
