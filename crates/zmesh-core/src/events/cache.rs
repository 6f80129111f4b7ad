//! Provides the publisher's per-topic table, pure: the next sequence number of every topic
//! and, when the last-value cache is on, the payload of the last event, with prefix
//! snapshots of both.

use std::collections::HashMap;

use bytes::Bytes;

#[derive(Debug, Default)]
struct TopicState {
    seq: u64,
    last: Option<Bytes>,
}

/// Sequence numbers (and last values) by topic.
#[derive(Debug)]
pub(super) struct TopicTable {
    topics: HashMap<String, TopicState>,
    keep_values: bool,
}

/// One topic of a snapshot: topic, last sequence number, last payload (encoded).
pub(super) type SnapshotRow = (String, u64, Option<Bytes>);

impl TopicTable {
    pub(super) fn new(keep_values: bool) -> Self {
        Self {
            topics: HashMap::new(),
            keep_values,
        }
    }

    /// Takes the next sequence number of `topic` (1 for its first event).
    pub(super) fn next_seq(&mut self, topic: &str) -> u64 {
        let state = match self.topics.get_mut(topic) {
            Some(state) => state,
            None => self.topics.entry(topic.to_owned()).or_default(),
        };
        state.seq += 1;
        state.seq
    }

    /// Remembers the payload of the event just numbered (a no-op without the cache).
    pub(super) fn store(&mut self, topic: &str, payload: impl FnOnce() -> Bytes) {
        if self.keep_values
            && let Some(state) = self.topics.get_mut(topic)
        {
            state.last = Some(payload());
        }
    }

    /// Every topic starting with `prefix`, sorted by topic.
    pub(super) fn snapshot(&self, prefix: &str) -> Vec<SnapshotRow> {
        let mut rows: Vec<SnapshotRow> = self
            .topics
            .iter()
            .filter(|(topic, _)| topic.starts_with(prefix))
            .map(|(topic, state)| (topic.clone(), state.seq, state.last.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    pub(super) fn keeps_values(&self) -> bool {
        self.keep_values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_per_topic_and_snapshots_by_prefix() {
        let mut table = TopicTable::new(true);
        assert_eq!(table.next_seq("orders.a"), 1);
        table.store("orders.a", || Bytes::from_static(b"1"));
        assert_eq!(table.next_seq("orders.a"), 2);
        table.store("orders.a", || Bytes::from_static(b"2"));
        assert_eq!(table.next_seq("users.x"), 1);
        assert_eq!(table.next_seq("orders.b"), 1);
        let snap = table.snapshot("orders.");
        assert_eq!(
            snap,
            vec![
                ("orders.a".to_owned(), 2, Some(Bytes::from_static(b"2"))),
                ("orders.b".to_owned(), 1, None),
            ]
        );
        assert_eq!(table.snapshot("").len(), 3);
    }

    #[test]
    fn without_the_cache_only_numbers_are_kept() {
        let mut table = TopicTable::new(false);
        table.next_seq("t");
        table.store("t", || Bytes::from_static(b"x"));
        assert_eq!(table.snapshot(""), vec![("t".to_owned(), 1, None)]);
    }
}
