//! The endpoints zmesh binds and connects to, parsed once: [`Endpoint`] is `tcp://host:port`
//! or `ipc://path`, exactly what zmesh supports, and [`EndpointError`] says precisely what is
//! wrong with anything else.
//!
//! Every place that takes an endpoint (node, client, publisher, subscriber, device, CLI)
//! parses it with [`str::parse`] before doing anything with it, so a bad endpoint is refused
//! at once with one error type, instead of when a socket first tries it (for a client, after
//! its connect deadline).
//!
//! ```
//! use zmesh_proto::endpoint::{Endpoint, EndpointError};
//!
//! let tcp: Endpoint = "tcp://127.0.0.1:4242".parse()?;
//! assert_eq!(tcp.host(), Some("127.0.0.1"));
//! assert_eq!(tcp.port(), Some(4242));
//! assert_eq!(tcp.to_string(), "tcp://127.0.0.1:4242");
//!
//! let err = "127.0.0.1:4242".parse::<Endpoint>().unwrap_err();
//! assert_eq!(err, EndpointError::NoScheme);
//! assert_eq!(err.to_string(), "no scheme: use tcp://host:port or ipc:///path");
//! # Ok::<(), EndpointError>(())
//! ```

use std::fmt;
use std::net::Ipv6Addr;
use std::path::Path;
use std::str::FromStr;

/// The forms zmesh supports, for error messages.
const USE: &str = "use tcp://host:port or ipc:///path";

/// An endpoint zmesh can bind or connect: TCP or a Unix domain socket.
///
/// Only [`FromStr`] (`"tcp://…".parse()`) makes one, so every `Endpoint` is valid; its
/// [`Display`](fmt::Display) gives back the canonical string, which the sockets accept.
/// `inproc://` is not supported (the `zeromq` crate zmesh runs on has no such transport),
/// nor an `ipc://` path with a `*` (the crate panics on a wildcard path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `tcp://host:port`. Port 0 binds a free port (the bound endpoint shows the real one);
    /// host `*` binds every interface.
    #[non_exhaustive]
    Tcp {
        /// The host as written: an IPv4 address, `[IPv6]` in brackets, a name, or `*`.
        host: String,
        /// The port.
        port: u16,
    },
    /// `ipc://path`: a Unix domain socket at `path` (absolute as in `ipc:///tmp/n.sock`, or
    /// relative to the working directory).
    #[non_exhaustive]
    Ipc {
        /// The socket file's path, as written.
        path: String,
    },
}

/// Why a string is not an [`Endpoint`]. Every message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Nothing was given.
    #[error("empty endpoint: {USE}")]
    Empty,
    /// No `scheme://`, such as `127.0.0.1:4242`.
    #[error("no scheme: {USE}")]
    NoScheme,
    /// A scheme zmesh does not support, such as `inproc` or `udp`.
    #[error("unsupported scheme {0:?}: {USE}")]
    UnsupportedScheme(String),
    /// `tcp://` with nothing before the port, such as `tcp://:4242`.
    #[error("empty host: use tcp://host:port, such as tcp://127.0.0.1:4242")]
    EmptyHost,
    /// A host in brackets that is not an IPv6 address.
    #[error("bad host {0:?}: brackets hold an IPv6 address, such as tcp://[::1]:4242")]
    BadHost(String),
    /// `tcp://` without `:port`, such as `tcp://localhost`.
    #[error("no port: use tcp://host:port, such as tcp://127.0.0.1:4242")]
    MissingPort,
    /// A port that is not a number from 0 to 65535.
    #[error("bad port {0:?}: a port is a number from 0 to 65535")]
    BadPort(String),
    /// `ipc://` with no path.
    #[error("empty path: use ipc:///path, such as ipc:///tmp/node.sock")]
    EmptyPath,
    /// An `ipc://` path with a `*`: the `zeromq` crate cannot bind a wildcard path.
    #[error("wildcard path {0:?}: ipc needs a file path, such as ipc:///tmp/node.sock")]
    WildcardPath(String),
}

impl Endpoint {
    /// `"tcp"` or `"ipc"`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Tcp { .. } => "tcp",
            Self::Ipc { .. } => "ipc",
        }
    }

    /// True for `tcp://`.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Self::Tcp { .. })
    }

    /// True for `ipc://`.
    pub fn is_ipc(&self) -> bool {
        matches!(self, Self::Ipc { .. })
    }

    /// The host of a `tcp://` endpoint, as written (IPv6 in its brackets).
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Tcp { host, .. } => Some(host),
            Self::Ipc { .. } => None,
        }
    }

    /// True for a `tcp://` endpoint on an unspecified host (`*`, `0.0.0.0`, `[::]`): one to
    /// bind every interface on, never one a peer can connect to.
    pub fn is_unspecified(&self) -> bool {
        match self {
            Self::Tcp { host, .. } => {
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                host == "*"
                    || bare
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_unspecified())
            }
            Self::Ipc { .. } => false,
        }
    }

    /// The port of a `tcp://` endpoint.
    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Tcp { port, .. } => Some(*port),
            Self::Ipc { .. } => None,
        }
    }

    /// `host:port` of a `tcp://` endpoint, as a socket address string
    /// (`127.0.0.1:4242`, `[::1]:4242`, `localhost:4242`).
    pub fn address(&self) -> Option<String> {
        match self {
            Self::Tcp { host, port } => Some(format!("{host}:{port}")),
            Self::Ipc { .. } => None,
        }
    }

    /// The socket file of an `ipc://` endpoint.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Tcp { .. } => None,
            Self::Ipc { path } => Some(Path::new(path)),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, EndpointError> {
        if text.is_empty() {
            return Err(EndpointError::Empty);
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(EndpointError::NoScheme);
        };
        match scheme {
            "tcp" => parse_tcp(rest),
            "ipc" => parse_ipc(rest),
            "" => Err(EndpointError::NoScheme),
            other => Err(EndpointError::UnsupportedScheme(other.to_owned())),
        }
    }
}

fn parse_tcp(rest: &str) -> Result<Endpoint, EndpointError> {
    // The port follows the last colon, so an IPv6 host keeps its own (`[::1]:4242`).
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(if rest.is_empty() {
            EndpointError::EmptyHost
        } else {
            EndpointError::MissingPort
        });
    };
    if host.is_empty() {
        return Err(EndpointError::EmptyHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let is_ipv6 = inner
            .strip_suffix(']')
            .is_some_and(|address| address.parse::<Ipv6Addr>().is_ok());
        if !is_ipv6 {
            return Err(EndpointError::BadHost(host.to_owned()));
        }
    } else if host.ends_with(']') {
        return Err(EndpointError::BadHost(host.to_owned()));
    }
    if port.is_empty() {
        return Err(EndpointError::MissingPort);
    }
    // Digits only: `u16::from_str` would also take `+80`, which the sockets do not.
    let port_number = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| EndpointError::BadPort(port.to_owned()))?;
    Ok(Endpoint::Tcp {
        host: host.to_owned(),
        port: port_number,
    })
}

fn parse_ipc(path: &str) -> Result<Endpoint, EndpointError> {
    if path.is_empty() {
        return Err(EndpointError::EmptyPath);
    }
    if path.contains('*') {
        return Err(EndpointError::WildcardPath(path.to_owned()));
    }
    Ok(Endpoint::Ipc {
        path: path.to_owned(),
    })
}

impl TryFrom<&str> for Endpoint {
    type Error = EndpointError;

    fn try_from(text: &str) -> Result<Self, EndpointError> {
        text.parse()
    }
}

impl TryFrom<String> for Endpoint {
    type Error = EndpointError;

    fn try_from(text: String) -> Result<Self, EndpointError> {
        text.parse()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Ipc { path } => write!(f, "ipc://{path}"),
        }
    }
}

/// The canonical string, so an `Endpoint` goes wherever an endpoint string does
/// (`Client::new`, `NodeBuilder::bind`, ...).
impl From<Endpoint> for String {
    fn from(endpoint: Endpoint) -> Self {
        endpoint.to_string()
    }
}

impl From<&Endpoint> for String {
    fn from(endpoint: &Endpoint) -> Self {
        endpoint.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        text.parse()
    }

    #[test]
    fn tcp_endpoints_parse_into_host_and_port() {
        for (text, host, port) in [
            ("tcp://127.0.0.1:4242", "127.0.0.1", 4242),
            ("tcp://127.0.0.1:0", "127.0.0.1", 0),
            ("tcp://0.0.0.0:65535", "0.0.0.0", 65535),
            ("tcp://localhost:80", "localhost", 80),
            ("tcp://node-a.example.com:4242", "node-a.example.com", 4242),
            ("tcp://*:4242", "*", 4242),
            ("tcp://[::1]:4242", "[::1]", 4242),
            ("tcp://[2001:db8::7]:4242", "[2001:db8::7]", 4242),
        ] {
            let endpoint = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(endpoint.is_tcp() && !endpoint.is_ipc(), "{text}");
            assert_eq!(endpoint.scheme(), "tcp");
            assert_eq!(endpoint.host(), Some(host), "{text}");
            assert_eq!(endpoint.port(), Some(port), "{text}");
            assert_eq!(endpoint.address(), Some(format!("{host}:{port}")));
            assert_eq!(endpoint.path(), None);
            assert_eq!(endpoint.to_string(), text, "the canonical string");
        }
    }

    /// Only the bind-everything hosts are unspecified: a peer can connect to none of them.
    #[test]
    fn unspecified_hosts_are_told_apart() {
        for text in [
            "tcp://0.0.0.0:1",
            "tcp://*:1",
            "tcp://[::]:1",
            "tcp://[0:0::0]:1",
        ] {
            assert!(parse(text).expect(text).is_unspecified(), "{text}");
        }
        for text in [
            "tcp://127.0.0.1:1",
            "tcp://[::1]:1",
            "tcp://localhost:1",
            "tcp://10.0.0.7:1",
            "ipc:///tmp/node.sock",
        ] {
            assert!(!parse(text).expect(text).is_unspecified(), "{text}");
        }
    }

    #[test]
    fn ipc_endpoints_parse_into_a_path() {
        for (text, path) in [
            ("ipc:///tmp/node.sock", "/tmp/node.sock"),
            ("ipc://relative/dir/n.sock", "relative/dir/n.sock"),
            ("ipc://@abstract", "@abstract"),
        ] {
            let endpoint = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(endpoint.is_ipc() && !endpoint.is_tcp());
            assert_eq!(endpoint.scheme(), "ipc");
            assert_eq!(endpoint.path(), Some(Path::new(path)));
            assert_eq!(endpoint.host(), None);
            assert_eq!(endpoint.port(), None);
            assert_eq!(endpoint.address(), None);
            assert_eq!(endpoint.to_string(), text);
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for text in ["tcp://127.0.0.1:1", "tcp://[::1]:2", "ipc:///a/b.sock"] {
            let endpoint = parse(text).expect("valid");
            assert_eq!(parse(&endpoint.to_string()), Ok(endpoint.clone()));
            assert_eq!(String::from(&endpoint), text);
            assert_eq!(String::from(endpoint), text);
            assert_eq!(Endpoint::try_from(text), parse(text));
            assert_eq!(Endpoint::try_from(text.to_owned()), parse(text));
        }
    }

    #[test]
    fn an_empty_string_is_empty() {
        assert_eq!(parse(""), Err(EndpointError::Empty));
        assert_eq!(
            EndpointError::Empty.to_string(),
            "empty endpoint: use tcp://host:port or ipc:///path"
        );
    }

    #[test]
    fn a_missing_scheme_says_which_to_use() {
        for text in [
            "127.0.0.1:4242",
            "localhost",
            "/tmp/node.sock",
            "tcp:/x:1",
            "://x:1",
        ] {
            assert_eq!(parse(text), Err(EndpointError::NoScheme), "{text}");
        }
        assert_eq!(
            EndpointError::NoScheme.to_string(),
            "no scheme: use tcp://host:port or ipc:///path"
        );
    }

    #[test]
    fn an_unsupported_scheme_is_named() {
        for (text, scheme) in [
            ("inproc://x", "inproc"),
            ("udp://127.0.0.1:1", "udp"),
            ("pgm://eth0;239.192.1.1:5555", "pgm"),
            ("TCP://127.0.0.1:1", "TCP"),
        ] {
            assert_eq!(
                parse(text),
                Err(EndpointError::UnsupportedScheme(scheme.to_owned())),
                "{text}"
            );
        }
        assert_eq!(
            parse("inproc://x").expect_err("unsupported").to_string(),
            "unsupported scheme \"inproc\": use tcp://host:port or ipc:///path"
        );
    }

    #[test]
    fn a_tcp_endpoint_needs_a_host() {
        for text in ["tcp://", "tcp://:4242", "tcp://:"] {
            assert_eq!(parse(text), Err(EndpointError::EmptyHost), "{text}");
        }
        assert!(
            EndpointError::EmptyHost
                .to_string()
                .starts_with("empty host")
        );
    }

    #[test]
    fn brackets_hold_an_ipv6_address() {
        for (text, host) in [
            ("tcp://[nonsense]:1", "[nonsense]"),
            ("tcp://[::1:1", "[::1"),
            ("tcp://::1]:1", "::1]"),
            ("tcp://[]:1", "[]"),
        ] {
            assert_eq!(
                parse(text),
                Err(EndpointError::BadHost(host.to_owned())),
                "{text}"
            );
        }
        assert!(
            EndpointError::BadHost("[x]".into())
                .to_string()
                .contains("IPv6")
        );
    }

    #[test]
    fn a_tcp_endpoint_needs_a_port() {
        for text in ["tcp://localhost", "tcp://127.0.0.1", "tcp://127.0.0.1:"] {
            assert_eq!(parse(text), Err(EndpointError::MissingPort), "{text}");
        }
        assert!(
            EndpointError::MissingPort
                .to_string()
                .starts_with("no port")
        );
    }

    #[test]
    fn a_port_is_a_number_from_0_to_65535() {
        for (text, port) in [
            ("tcp://127.0.0.1:65536", "65536"),
            ("tcp://127.0.0.1:99999999999", "99999999999"),
            ("tcp://127.0.0.1:http", "http"),
            ("tcp://127.0.0.1:+80", "+80"),
            ("tcp://127.0.0.1:-1", "-1"),
            ("tcp://127.0.0.1:80/path", "80/path"),
            ("tcp://127.0.0.1: 80", " 80"),
        ] {
            assert_eq!(
                parse(text),
                Err(EndpointError::BadPort(port.to_owned())),
                "{text}"
            );
        }
        assert_eq!(
            EndpointError::BadPort("http".into()).to_string(),
            "bad port \"http\": a port is a number from 0 to 65535"
        );
    }

    #[test]
    fn an_ipc_endpoint_needs_a_path() {
        assert_eq!(parse("ipc://"), Err(EndpointError::EmptyPath));
        assert!(
            EndpointError::EmptyPath
                .to_string()
                .starts_with("empty path")
        );
    }

    #[test]
    fn an_ipc_wildcard_is_refused() {
        // The `zeromq` crate panics binding `ipc://*`.
        for (text, path) in [("ipc://*", "*"), ("ipc:///tmp/*.sock", "/tmp/*.sock")] {
            assert_eq!(
                parse(text),
                Err(EndpointError::WildcardPath(path.to_owned())),
                "{text}"
            );
        }
        assert!(
            EndpointError::WildcardPath("*".into())
                .to_string()
                .starts_with("wildcard path \"*\"")
        );
    }
}
