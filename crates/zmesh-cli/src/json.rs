//! Converts between the command line's JSON and msgpack values, pure and unit-tested: how
//! `zmesh call` reads its arguments (JSON, words, bytes from a file, stdin or base64) and
//! prints results and stream items (JSON, with bytes that are not text as base64; or the
//! bytes themselves).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmpv::Value;
use serde_json::{Map, Number, Value as Json};

/// Where an argument's value comes from, as written on the command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ArgSource<'a> {
    /// JSON, or a plain word ([`parse_arg`]).
    Text(&'a str),
    /// `@PATH`: the file's bytes.
    File(&'a str),
    /// `-`: everything on stdin.
    Stdin,
    /// `base64:DATA`: the decoded bytes.
    Base64(&'a str),
}

impl<'a> ArgSource<'a> {
    /// How `arg` is read. A string that starts with `@` or `base64:` is given as JSON
    /// (`'"@home"'`).
    pub(crate) fn of(arg: &'a str) -> Self {
        if arg == "-" {
            Self::Stdin
        } else if let Some(path) = arg.strip_prefix('@') {
            Self::File(path)
        } else if let Some(data) = arg.strip_prefix("base64:") {
            Self::Base64(data)
        } else {
            Self::Text(arg)
        }
    }
}

/// Reads the arguments of `zmesh call`: bytes (msgpack bin) from `@PATH`, `-` (stdin, read
/// by `stdin` at most once) and `base64:DATA`, and [`parse_arg`] for the rest.
pub(crate) fn read_args(
    args: &[String],
    read_file: impl Fn(&str) -> std::io::Result<Vec<u8>>,
    stdin: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> Result<Vec<Value>, String> {
    let mut stdin = Some(stdin);
    args.iter()
        .map(|arg| match ArgSource::of(arg) {
            ArgSource::Text(text) => parse_arg(text),
            ArgSource::File(path) => read_file(path)
                .map(Value::Binary)
                .map_err(|e| format!("argument {arg:?}: cannot read {path}: {e}")),
            ArgSource::Stdin => match stdin.take() {
                Some(read) => read()
                    .map(Value::Binary)
                    .map_err(|e| format!("argument \"-\": cannot read stdin: {e}")),
                None => Err("stdin (`-`) can be given only once".to_owned()),
            },
            ArgSource::Base64(data) => BASE64
                .decode(data.trim())
                .map(Value::Binary)
                .map_err(|e| format!("argument {arg:?} is not valid base64: {e}")),
        })
        .collect()
}

/// The bytes of a result for `zmesh call --raw`: a bin or a string's bytes as they are.
pub(crate) fn raw_bytes(value: &Value) -> Result<&[u8], String> {
    match value {
        Value::Binary(bytes) => Ok(bytes),
        Value::String(s) => Ok(s.as_bytes()),
        other => Err(format!(
            "--raw prints bytes or strings, and the result is {}",
            to_json(other)
        )),
    }
}

/// Reads one command-line argument the way the zerorpc tool does: JSON when it parses as
/// JSON, otherwise the word itself as a string (so `zmesh call EP echo.upper hi` works
/// without quoting `"hi"`). An argument that starts like a JSON object, array or string
/// (`{`, `[`, `"`) but does not parse is a mistake, not a word: it is refused with the
/// parser's message rather than sent as a string nobody meant.
pub(crate) fn parse_arg(arg: &str) -> Result<Value, String> {
    match serde_json::from_str::<Json>(arg) {
        Ok(json) => Ok(from_json(&json)),
        Err(e) if arg.trim_start().starts_with(['{', '[', '"']) => {
            Err(format!("argument {arg:?} is not valid JSON: {e}"))
        }
        Err(_) => Ok(Value::from(arg)),
    }
}

/// A JSON value as msgpack: integers stay integers, other numbers become f64.
pub(crate) fn from_json(json: &Json) -> Value {
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        Json::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

/// A msgpack value as JSON, for printing. msgpack has more types than JSON, so:
/// - bin that is valid UTF-8 prints as a string (Python 2 zerorpc peers send text as bin),
///   other bin as `{"base64": "..."}`;
/// - map keys that are not strings print as their JSON text;
/// - NaN and infinities print as `null` (JSON has no such numbers);
/// - ext values print as `{"ext": type, "base64": "..."}`.
pub(crate) fn to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Json::from(u)
            } else if let Some(n) = i.as_i64() {
                Json::from(n)
            } else {
                Json::Null
            }
        }
        Value::F32(f) => float(f64::from(*f)),
        Value::F64(f) => float(*f),
        Value::String(s) => match s.as_str() {
            Some(text) => Json::from(text),
            None => bytes_json(s.as_bytes()),
        },
        Value::Binary(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Json::from(text),
            Err(_) => bytes_json(bytes),
        },
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (k, v) in entries {
                let key = match k {
                    Value::String(s) if s.as_str().is_some() => {
                        s.as_str().unwrap_or_default().to_owned()
                    }
                    other => to_json(other).to_string(),
                };
                map.insert(key, to_json(v));
            }
            Json::Object(map)
        }
        Value::Ext(kind, data) => {
            let mut map = Map::new();
            map.insert("ext".into(), Json::from(*kind));
            map.insert("base64".into(), Json::from(BASE64.encode(data)));
            Json::Object(map)
        }
    }
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn bytes_json(bytes: &[u8]) -> Json {
    let mut map = Map::with_capacity(1);
    map.insert("base64".into(), Json::from(BASE64.encode(bytes)));
    Json::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_words_parse_as_json_and_other_words_as_strings() {
        assert_eq!(parse_arg("42"), Ok(Value::from(42u64)));
        assert_eq!(parse_arg("-3"), Ok(Value::from(-3i64)));
        assert_eq!(parse_arg("1.5"), Ok(Value::F64(1.5)));
        assert_eq!(parse_arg("true"), Ok(Value::Boolean(true)));
        assert_eq!(parse_arg("null"), Ok(Value::Nil));
        assert_eq!(parse_arg("\"quoted\""), Ok(Value::from("quoted")));
        assert_eq!(parse_arg("hello"), Ok(Value::from("hello")));
        // Started like JSON but broken: refused, not sent as a string.
        for broken in [
            "{not json",
            "{\"a\": [1, 2.5, null",
            "[1, 2",
            "\"open",
            " [x",
        ] {
            let error = parse_arg(broken).expect_err(broken);
            assert!(error.contains("is not valid JSON"), "{error}");
        }
        assert_eq!(parse_arg("a{b"), Ok(Value::from("a{b")));
        assert_eq!(
            parse_arg("[1, \"a\", {\"k\": [true]}]"),
            Ok(Value::Array(vec![
                Value::from(1u64),
                Value::from("a"),
                Value::Map(vec![(
                    Value::from("k"),
                    Value::Array(vec![Value::Boolean(true)])
                )]),
            ]))
        );
    }

    #[test]
    fn msgpack_prints_as_json() {
        let value = Value::Map(vec![
            (Value::from("text"), Value::Binary(b"hi".to_vec())),
            (Value::from("raw"), Value::Binary(vec![0xff, 0x00])),
            (Value::from(7u64), Value::F64(f64::NAN)),
            (Value::from("neg"), Value::from(-5i64)),
            (Value::from("ext"), Value::Ext(3, vec![1, 2])),
        ]);
        assert_eq!(
            to_json(&value).to_string(),
            r#"{"text":"hi","raw":{"base64":"/wA="},"7":null,"neg":-5,"ext":{"ext":3,"base64":"AQI="}}"#
        );
    }

    /// `@PATH`, `-` and `base64:` give bytes; stdin is read once at most; bad base64 and an
    /// unreadable file are errors naming the argument.
    #[test]
    fn arguments_give_bytes_from_files_stdin_and_base64() {
        let file = |path: &str| match path {
            "blob" => Ok(vec![0u8, 255, 7]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            )),
        };
        let args: Vec<String> = ["@blob", "-", "base64:/wA=", "42", "word"]
            .map(String::from)
            .into();
        assert_eq!(
            read_args(&args, file, || Ok(b"in".to_vec())),
            Ok(vec![
                Value::Binary(vec![0, 255, 7]),
                Value::Binary(b"in".to_vec()),
                Value::Binary(vec![0xff, 0]),
                Value::from(42u64),
                Value::from("word"),
            ])
        );
        let twice: Vec<String> = ["-", "-"].map(String::from).into();
        assert_eq!(
            read_args(&twice, file, || Ok(Vec::new())),
            Err("stdin (`-`) can be given only once".to_owned())
        );
        let missing: Vec<String> = vec!["@nope".into()];
        let err = read_args(&missing, file, || Ok(Vec::new())).expect_err("missing");
        assert!(err.contains("\"@nope\": cannot read nope"), "{err}");
        let bad: Vec<String> = vec!["base64:***".into()];
        let err = read_args(&bad, file, || Ok(Vec::new())).expect_err("bad base64");
        assert!(err.contains("is not valid base64"), "{err}");
        // A string that starts like a source is given as JSON.
        let quoted: Vec<String> = vec!["\"@home\"".into()];
        assert_eq!(
            read_args(&quoted, file, || Ok(Vec::new())),
            Ok(vec![Value::from("@home")])
        );
    }

    #[test]
    fn raw_results_are_bytes_or_strings() {
        assert_eq!(raw_bytes(&Value::Binary(vec![1, 2])), Ok(&[1u8, 2][..]));
        assert_eq!(raw_bytes(&Value::from("hi")), Ok(&b"hi"[..]));
        assert!(raw_bytes(&Value::from(3u64)).is_err());
    }

    #[test]
    fn json_round_trips_through_msgpack() {
        let text = r#"{"a":[1,-2,3.25,"x",null,false],"b":{"c":"d"}}"#;
        let json: Json = serde_json::from_str(text).expect("test JSON parses");
        assert_eq!(to_json(&from_json(&json)), json);
    }
}
