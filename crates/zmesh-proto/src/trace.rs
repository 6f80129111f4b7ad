//! Provides the W3C trace context a call carries in its `traceparent` header
//! (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), parsed once into a
//! [`TraceParent`], and the child a caller sends on: the same trace, a new span id.
//!
//! Pure: parsing and formatting are byte work; new ids come from a per-process keyed hash
//! of a counter, so they are unique and unpredictable enough for tracing (they are not
//! secrets) without a random-number dependency.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The only `traceparent` version this code writes (and the only one whose layout it
/// knows exactly; later versions are read by their first four fields, as W3C asks).
const VERSION: u8 = 0;

/// A parsed `traceparent`: which trace a call belongs to, and the span that made it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` when it is not a valid one (W3C: a
    /// receiver ignores an invalid header, and the call is then untraced).
    ///
    /// Version `00` is exactly 55 characters; a later version may append fields after a
    /// `-`, which are ignored. Version `ff`, an all-zero trace or parent id, and upper-case
    /// hex are invalid.
    pub fn parse(header: &str) -> Option<Self> {
        let bytes = header.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        match bytes.len() {
            55 => {}
            _ if version == VERSION => return None,
            _ if bytes[55] == b'-' => {}
            _ => return None,
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, out) in parent_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        Self::from_parts(trace_id, parent_id, flags)
    }

    /// A context from its parts (an OpenTelemetry span's ids, say); `None` for an all-zero
    /// trace or parent id, which W3C makes invalid.
    pub fn from_parts(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The start of a new trace: a fresh trace id and span id, not sampled.
    pub fn new_root() -> Self {
        let high = nonzero_id();
        let low = nonzero_id();
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&high.to_be_bytes());
        trace_id[8..].copy_from_slice(&low.to_be_bytes());
        Self {
            trace_id,
            parent_id: nonzero_id().to_be_bytes(),
            flags: 0,
        }
    }

    /// The context a call made on behalf of this one carries: the same trace id and
    /// flags, with `span` as its parent id.
    #[must_use]
    pub fn child_with(&self, span: [u8; 8]) -> Self {
        Self {
            parent_id: span,
            ..*self
        }
    }

    /// [`TraceParent::child_with`] a freshly generated span id (one per outgoing call).
    #[must_use]
    pub fn child(&self) -> Self {
        self.child_with(nonzero_id().to_be_bytes())
    }

    /// The 16-byte trace id every call of the trace shares.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The trace id as the header writes it: 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The 8-byte id of the span that made the call.
    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller recorded its span (flag bit 0).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The header value, version `00`: what [`TraceParent::parse`] reads back.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERSION:02x}-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

/// One byte from two lower-case hex digits (W3C allows no upper case).
fn hex_byte(digits: &[u8]) -> Option<u8> {
    fn nibble(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(digits[0])? << 4 | nibble(digits[1])?)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A fresh non-zero 64-bit id: a counter through SipHash under keys std seeds from the OS
/// once per process, so ids never repeat within a process and do not line up across
/// processes.
fn nonzero_id() -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
    loop {
        let mut hasher = keys.build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let id = hasher.finish();
        // All zeros is the one invalid id.
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parent.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            parent.parent_id(),
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert_eq!(parent.flags(), 1);
        assert!(parent.is_sampled());
        assert_eq!(parent.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "",
            "garbage",
            // upper-case hex
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            // all-zero trace id, all-zero parent id
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // version ff is forbidden
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // version 00 has nothing after the flags
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            // wrong separators, short fields, non-hex
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_known_fields() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more";
        let parent = TraceParent::parse(later).expect("readable");
        assert_eq!(parent.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        // Written back as the version this code knows.
        assert_eq!(parent.to_string(), EXAMPLE);
        assert_eq!(
            TraceParent::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"),
            None
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        let fixed = parent.child_with([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            fixed.to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-0102030405060708-01"
        );
        let (a, b) = (parent.child(), parent.child());
        for child in [a, b] {
            assert_eq!(child.trace_id(), parent.trace_id());
            assert_eq!(child.flags(), parent.flags());
            assert_ne!(child.parent_id(), parent.parent_id());
            assert_ne!(child.parent_id(), [0; 8]);
            // What a child sends parses back to itself.
            assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
        }
        assert_ne!(
            a.parent_id(),
            b.parent_id(),
            "one span id per outgoing call"
        );
    }

    #[test]
    fn roots_start_distinct_valid_traces() {
        let (a, b) = (TraceParent::new_root(), TraceParent::new_root());
        assert_ne!(a.trace_id(), b.trace_id());
        for root in [a, b] {
            assert!(!root.is_sampled());
            assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        }
    }
}
