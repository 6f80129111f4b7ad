//! Reads `--config FILE` (TOML) for the long-running verbs (`zmesh serve`, `zmesh proxy`):
//! each key is one of the verb's long flags (`heartbeat = 2.5`, `bind = ["tcp://..."]`,
//! `last-value-cache = true`), and becomes that flag's default before the command line is
//! parsed, so a value on the command line beats its `ZMESH_...` variable, which beats the
//! file, which beats the built-in default. A key that is no flag of the verb, or a value its
//! flag does not accept, is an error naming the file and the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Command;

/// The verbs that take `--config`.
const VERBS: [&str; 2] = ["serve", "proxy"];
/// The flag (and its variable) that names the file.
const FLAG: &str = "config";
const VARIABLE: &str = "ZMESH_CONFIG";

/// Why a config file was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {} is not valid TOML: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A key, or its value, that the verb does not take.
    #[error("config file {}: key `{key}`: {reason}", path.display())]
    Key {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// A key of a config file and the values it gave its flag.
type FileKey = (String, Vec<String>);

/// A command line's command with a config file's defaults on it.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The command to parse the command line with.
    pub(crate) command: Command,
    /// The file, and each key it set with its values.
    from_file: Option<(PathBuf, Vec<FileKey>)>,
}

impl Applied {
    /// The config file's error behind clap's `error`, when a value the file gave is the
    /// one clap refused (clap checks defaults with the flag's own parser as it parses).
    pub(crate) fn blame(&self, error: &clap::Error) -> Option<ConfigFileError> {
        use clap::error::{ContextKind, ContextValue};
        let (path, keys) = self.from_file.as_ref()?;
        let text = |kind| match error.get(kind) {
            Some(ContextValue::String(s)) => Some(s.as_str()),
            _ => None,
        };
        let refused = text(ContextKind::InvalidValue)?;
        let flag = text(ContextKind::InvalidArg)?;
        let (key, _) = keys.iter().find(|(key, values)| {
            values.iter().any(|v| v == refused)
                && (flag == format!("--{key}") || flag.starts_with(&format!("--{key} ")))
        })?;
        let rendered = error.to_string();
        Some(ConfigFileError::Key {
            path: path.clone(),
            key: key.clone(),
            reason: first_line(&rendered),
        })
    }
}

/// `command` with the defaults of the config file that `args` (the whole command line,
/// program name first) or `ZMESH_CONFIG` name, for the verb `args` runs; unchanged when
/// there is none or the verb takes none.
pub(crate) fn apply(command: Command, args: &[OsString]) -> Result<Applied, ConfigFileError> {
    let Some(verb) = args
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| VERBS.contains(a))
    else {
        return Ok(Applied {
            command,
            from_file: None,
        });
    };
    let Some(path) = named_file(&args[2..]) else {
        return Ok(Applied {
            command,
            from_file: None,
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigFileError::Parse {
        path: path.clone(),
        source,
    })?;
    let sub = command
        .find_subcommand(verb)
        .expect("every verb in VERBS is a subcommand")
        .clone();
    let mut defaults = Vec::with_capacity(table.len());
    for (key, value) in &table {
        defaults.push(default_for(&sub, &path, key, value)?);
    }
    let keys = defaults
        .iter()
        .map(|(_, key, values)| (key.clone(), values.clone()))
        .collect();
    let command = command.mut_subcommand(verb, |mut sub| {
        for (id, _, values) in defaults {
            // A required flag the file gives is given: clap checks presence before it
            // fills in defaults.
            sub = sub.mut_arg(id, |arg| arg.default_values(values).required(false));
        }
        sub
    });
    Ok(Applied {
        command,
        from_file: Some((path, keys)),
    })
}

/// The file `--config FILE` or `--config=FILE` names among a verb's arguments, else
/// `ZMESH_CONFIG`.
fn named_file(args: &[OsString]) -> Option<PathBuf> {
    let long = format!("--{FLAG}");
    let with_value = format!("--{FLAG}=");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == long {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix(&with_value) {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os(VARIABLE).map(PathBuf::from)
}

/// The id of the flag `key` names, the key, and the default values `value` gives it (clap
/// checks them with the flag's parser; [`Applied::blame`] names the key if it refuses one).
fn default_for(
    sub: &Command,
    path: &Path,
    key: &str,
    value: &toml::Value,
) -> Result<(String, String, Vec<String>), ConfigFileError> {
    let bad = |reason: String| ConfigFileError::Key {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let arg = sub
        .get_arguments()
        .find(|a| a.get_long() == Some(key) && key != FLAG)
        .ok_or_else(|| {
            bad(format!(
                "`zmesh {}` has no --{key} (keys are the verb's long flags, as in `{} = ...`; \
                 positional arguments stay on the command line)",
                sub.get_name(),
                first_long(sub)
            ))
        })?;
    let many = matches!(arg.get_action(), clap::ArgAction::Append);
    let values: Vec<String> = match value {
        toml::Value::Array(items) if many => items
            .iter()
            .map(|item| scalar(item).ok_or_else(|| bad("a list of strings or numbers".into())))
            .collect::<Result<_, _>>()?,
        toml::Value::Array(_) => return Err(bad("takes one value, not a list".into())),
        other => {
            vec![scalar(other).ok_or_else(|| bad("takes a string, a number or a boolean".into()))?]
        }
    };
    Ok((arg.get_id().to_string(), key.to_owned(), values))
}

/// A TOML scalar as the text its flag would be given on the command line.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A verb's first long flag, for the example in an unknown-key error.
fn first_long(sub: &Command) -> &str {
    sub.get_arguments()
        .find_map(|a| a.get_long().filter(|l| *l != FLAG))
        .unwrap_or("bind")
}

/// clap's error without its "Usage" and "For more information" lines.
fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or(text)
        .trim_start_matches("error: ")
        .to_owned()
}
