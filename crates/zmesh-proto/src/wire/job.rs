//! Provides the header keys a job queue's dispatched call carries, `zmesh_job_id` and
//! `zmesh_job_attempt`, and their one encoding and parse: a worker reads them to tell a
//! redelivery (the same id, a later attempt) from a new job. Stock zerorpc peers ignore
//! keys they do not know, so a stock worker still serves the call.

use bytes::Bytes;

use super::event::{Header, keys};
use super::msgpack::{self, Cursor};

/// Which job, and which attempt of it, a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobTag {
    /// The job's id in its queue.
    pub id: u64,
    /// The attempt, from 1.
    pub attempt: u32,
}

impl JobTag {
    /// The tag as header entries (the two keys, uint values), for `Header::extra`.
    pub fn header_entries(&self) -> [(String, Bytes); 2] {
        let uint = |v: u64| {
            let mut out = Vec::with_capacity(msgpack::uint_encoded_len(v));
            msgpack::write_uint(&mut out, v);
            Bytes::from(out)
        };
        [
            (keys::JOB_ID.to_owned(), uint(self.id)),
            (keys::JOB_ATTEMPT.to_owned(), uint(u64::from(self.attempt))),
        ]
    }

    /// The tag in `header`, when both keys are there as uints (an attempt that does not
    /// fit a u32 is no tag).
    pub fn from_header(header: &Header) -> Option<Self> {
        let read = |key: &str| {
            let (_, value) = header.extra.iter().find(|(k, _)| k == key)?;
            Cursor::new(value).uint().ok().flatten()
        };
        Some(Self {
            id: read(keys::JOB_ID)?,
            attempt: u32::try_from(read(keys::JOB_ATTEMPT)?).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_round_trips_through_the_header_and_survives_the_wire() {
        let tag = JobTag {
            id: 1 << 40,
            attempt: 3,
        };
        let mut header = Header::zmesh(None);
        header.extra.extend(tag.header_entries());
        let event = super::super::encode_event(&header, "m", super::super::EMPTY_ARRAY_ARGS);
        let decoded = super::super::decode_event(&event).expect("decodes");
        assert_eq!(JobTag::from_header(&decoded.header), Some(tag));
    }

    #[test]
    fn a_missing_or_malformed_key_is_no_tag() {
        let mut header = Header::zmesh(None);
        assert_eq!(JobTag::from_header(&header), None);
        header
            .extra
            .push((keys::JOB_ID.to_owned(), Bytes::from_static(&[0x07])));
        assert_eq!(JobTag::from_header(&header), None, "no attempt");
        header
            .extra
            .push((keys::JOB_ATTEMPT.to_owned(), Bytes::from_static(b"\xa1x")));
        assert_eq!(JobTag::from_header(&header), None, "a str attempt");
    }
}
