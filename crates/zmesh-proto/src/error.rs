//! Provides the names of the errors zmesh sends and matches in `ERR [name, message,
//! traceback]`, as one enum, and what each means for retrying the call.
//!
//! On the wire an error is still a plain string, as zerorpc defines it, so stock peers read
//! zmesh's errors and zmesh reads theirs. The names here are the ones zmesh itself sends
//! (node, device, client-side trust checks) or acts upon; any other name (a handler's own
//! `EchoError`, Python's `ValueError`) is a remote name that zmesh passes through as is:
//! [`ErrorKind::from_str`](std::str::FromStr) refuses it with [`UnknownErrorName`] and the
//! caller keeps the string.

use std::fmt;
use std::str::FromStr;

/// The message of the `ERR Unavailable` a node answers, without running the call, to a
/// request that arrives while it shuts down; a device or mesh client may safely run such a
/// call elsewhere. See [`ErrorKind::ShuttingDown`].
pub const SHUTTING_DOWN: &str = "node is shutting down";

/// The error name a job's handler sends to say that no further attempt can succeed (bad
/// input, a refused operation): the queue moves the job to dead at once instead of
/// retrying it. Any name ending in it counts ([`is_permanent_error`]), so a worker in any
/// language raises an error class named `PermanentError`, or `InvalidOrderPermanentError`.
pub const PERMANENT_ERROR: &str = "PermanentError";

/// Whether an error name marks the error permanent for a job queue (see
/// [`PERMANENT_ERROR`]).
pub fn is_permanent_error(name: &str) -> bool {
    name.ends_with(PERMANENT_ERROR)
}

/// An error name zmesh sends or acts upon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such method (node or device); the zerorpc name, which stock clients expect.
    NameError,
    /// The arguments do not fit the method (zerorpc's name for it).
    TypeError,
    /// A built-in was asked about a method that does not exist (`_zerorpc_args`).
    KeyError,
    /// The node or device as a whole is at its bound; refused before running.
    Overloaded,
    /// This connection is at its own bound (calls open or bytes queued); refused before
    /// running.
    PeerOverloaded,
    /// The node is shutting down, or shut down before the call finished; or a device has no
    /// worker for a built-in.
    Unavailable,
    /// A node refused a new call because it is shutting down: the call did not run. On the
    /// wire this is `Unavailable` with the message [`SHUTTING_DOWN`] (see
    /// [`ErrorKind::of_err`]): the name every zmesh and zerorpc peer already knows, kept so
    /// that peers of earlier versions still recognise the refusal.
    ShuttingDown,
    /// A request or reply is over the receiver's size limit.
    MessageTooLarge,
    /// The request broke the protocol (bad header, duplicate channel id, and the like).
    ProtocolError,
    /// With a mesh key: not sealed, wrong or retired key, or a bad tag.
    Unauthenticated,
    /// With a mesh key: a stale or repeated request.
    Replayed,
    /// The call's deadline passed on the server before it finished.
    DeadlineExceeded,
    /// A proxy device lost the worker that was running the call.
    PeerLost,
    /// A repeat of a request (same request id) whose first run was aborted.
    RequestAborted,
    /// The handler panicked.
    HandlerPanic,
    /// The handler's result could not be encoded.
    EncodeError,
    /// A late joiner's snapshot could not be taken.
    SnapshotError,
    /// Gossip from a node of another mesh.
    WrongMesh,
    /// The name given to an `ERR` whose args are not `[name, message, traceback]`.
    RemoteError,
}

/// What a failed call means for running it again, elsewhere or on the same peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Certainly not run (not delivered, or refused before running): any method may go to
    /// another peer.
    NotRun,
    /// May have run: only an idempotent call may go to another peer; any call may be
    /// repeated on the same peer with the same request id (its reply cache answers).
    MayHaveRun,
    /// Retrying cannot help: the handler's own error, a deadline, a codec or trust problem.
    Final,
}

/// The name is not one of zmesh's [`ErrorKind`]s: a remote (handler or foreign) error name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an error name zmesh knows")]
pub struct UnknownErrorName(pub String);

impl ErrorKind {
    /// Every kind, for tests and tables.
    pub const ALL: [Self; 19] = [
        Self::NameError,
        Self::TypeError,
        Self::KeyError,
        Self::Overloaded,
        Self::PeerOverloaded,
        Self::Unavailable,
        Self::ShuttingDown,
        Self::MessageTooLarge,
        Self::ProtocolError,
        Self::Unauthenticated,
        Self::Replayed,
        Self::DeadlineExceeded,
        Self::PeerLost,
        Self::RequestAborted,
        Self::HandlerPanic,
        Self::EncodeError,
        Self::SnapshotError,
        Self::WrongMesh,
        Self::RemoteError,
    ];

    /// The name as it travels in `ERR [name, ...]`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NameError => "NameError",
            Self::TypeError => "TypeError",
            Self::KeyError => "KeyError",
            Self::Overloaded => "Overloaded",
            Self::PeerOverloaded => "PeerOverloaded",
            Self::Unavailable | Self::ShuttingDown => "Unavailable",
            Self::MessageTooLarge => "MessageTooLarge",
            Self::ProtocolError => "ProtocolError",
            Self::Unauthenticated => "Unauthenticated",
            Self::Replayed => "Replayed",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::PeerLost => "PeerLost",
            Self::RequestAborted => "RequestAborted",
            Self::HandlerPanic => "HandlerPanic",
            Self::EncodeError => "EncodeError",
            Self::SnapshotError => "SnapshotError",
            Self::WrongMesh => "WrongMesh",
            Self::RemoteError => "RemoteError",
        }
    }

    /// The kind of an `ERR [name, message, ...]`, or `None` for a remote name. The one place
    /// that looks at a message: `Unavailable` with the message [`SHUTTING_DOWN`] is
    /// [`ErrorKind::ShuttingDown`] (a node sends exactly that text, and only for calls it
    /// refused unrun); every other kind is its name alone.
    pub fn of_err(name: &str, message: &str) -> Option<Self> {
        match name.parse() {
            Ok(Self::Unavailable) if message == SHUTTING_DOWN => Some(Self::ShuttingDown),
            Ok(kind) => Some(kind),
            Err(UnknownErrorName(_)) => None,
        }
    }

    /// What this error means for running the call again.
    pub const fn retry(self) -> Retry {
        match self {
            // Refused before running: by the node as a whole, this connection's bounds, or
            // a node that is shutting down.
            Self::Overloaded | Self::PeerOverloaded | Self::ShuttingDown => Retry::NotRun,
            // A node that shut down before the call finished, a repeat of an aborted run,
            // a worker lost mid-call: it may have run.
            Self::Unavailable | Self::RequestAborted | Self::PeerLost => Retry::MayHaveRun,
            // Includes the refusals a keyed client takes unsealed (`Unauthenticated`,
            // `Replayed`): anyone on the path could send them, so they never count as "did
            // not run".
            _ => Retry::Final,
        }
    }

    /// True for the refusals a keyed client accepts unsealed: the node cannot seal an
    /// answer to a request it could not open (or refused as a replay).
    pub const fn is_trust_refusal(self) -> bool {
        matches!(self, Self::Unauthenticated | Self::Replayed)
    }
}

impl FromStr for ErrorKind {
    type Err = UnknownErrorName;

    /// Parses a wire name. `Unavailable` parses as [`ErrorKind::Unavailable`]; use
    /// [`ErrorKind::of_err`] to tell a shutting-down refusal apart.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .filter(|kind| *kind != Self::ShuttingDown)
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownErrorName(name.to_owned()))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<ErrorKind> for str {
    fn eq(&self, kind: &ErrorKind) -> bool {
        self == kind.as_str()
    }
}

impl PartialEq<ErrorKind> for String {
    fn eq(&self, kind: &ErrorKind) -> bool {
        self.as_str() == kind.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_kind() {
        for kind in ErrorKind::ALL {
            let parsed: ErrorKind = kind.as_str().parse().expect("known name");
            let expected = match kind {
                ErrorKind::ShuttingDown => ErrorKind::Unavailable,
                other => other,
            };
            assert_eq!(parsed, expected);
        }
        assert_eq!(
            "EchoError".parse::<ErrorKind>(),
            Err(UnknownErrorName("EchoError".into()))
        );
        // Names are case-sensitive on the wire.
        assert!("nameerror".parse::<ErrorKind>().is_err());
    }

    #[test]
    fn a_shutting_down_refusal_is_told_apart_by_its_exact_message() {
        assert_eq!(
            ErrorKind::of_err("Unavailable", SHUTTING_DOWN),
            Some(ErrorKind::ShuttingDown)
        );
        assert_eq!(
            ErrorKind::of_err("Unavailable", "shut down before the call finished"),
            Some(ErrorKind::Unavailable)
        );
        assert_eq!(ErrorKind::of_err("ValueError", SHUTTING_DOWN), None);
        assert_eq!(ErrorKind::ShuttingDown.as_str(), "Unavailable");
    }

    #[test]
    fn only_refusals_before_running_are_not_run() {
        let not_run: Vec<ErrorKind> = ErrorKind::ALL
            .into_iter()
            .filter(|k| k.retry() == Retry::NotRun)
            .collect();
        assert_eq!(
            not_run,
            [
                ErrorKind::Overloaded,
                ErrorKind::PeerOverloaded,
                ErrorKind::ShuttingDown
            ]
        );
        assert_eq!(ErrorKind::Unavailable.retry(), Retry::MayHaveRun);
        assert_eq!(ErrorKind::PeerLost.retry(), Retry::MayHaveRun);
        assert_eq!(ErrorKind::Unauthenticated.retry(), Retry::Final);
        assert_eq!(ErrorKind::Replayed.retry(), Retry::Final);
        assert_eq!(ErrorKind::DeadlineExceeded.retry(), Retry::Final);
    }
}
