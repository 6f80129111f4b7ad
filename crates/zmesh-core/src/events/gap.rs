//! Provides sequence tracking for one publisher endpoint, pure: which sequence numbers of
//! which topic were accounted for, what a newly arrived event says was missed, and what a
//! publisher restart leaves unknown.
//!
//! Rules (also in docs/PROTOCOL.md):
//! - Per topic, the tracker remembers the last sequence number accounted for (delivered, or
//!   reported missing). An event with the next number is in order; a higher number reports
//!   the numbers in between as a [`Gap`]; a lower or equal one is a duplicate.
//! - The first publisher seen on an endpoint is joined late: the first event of a topic sets
//!   its baseline unless a snapshot installed one. A publisher that replaces another on the
//!   same endpoint (a restart) is followed from its start: its topics start at 0, so events
//!   it sent before this subscriber reconnected are reported missing; and every topic of the
//!   old publisher gets a gap with an unknown end.
//! - An event this subscriber drops itself (its queue is full) leaves the topic's baseline
//!   where it was (or sets one just before it), so the next delivered event reports it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Gap, GapReason};

/// What an arriving event means for its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Check {
    /// New: deliver it, after the gap report if any.
    Fresh(Option<Gap>),
    /// Already accounted for: drop it.
    Duplicate,
    /// The tracker is full of topics: deliver it untracked.
    Untracked,
}

/// Sequence state of one endpoint (one publisher at a time).
#[derive(Debug)]
pub(super) struct Tracker {
    endpoint: Arc<str>,
    current: Option<Arc<str>>,
    /// The current publisher replaced an earlier one: follow it from its first event.
    successor: bool,
    topics: HashMap<String, u64>,
    max_topics: usize,
    /// Gap reports not yet handed to the consumer (restart reports), oldest first.
    pending: VecDeque<Gap>,
}

impl Tracker {
    pub(super) fn new(endpoint: Arc<str>, max_topics: usize) -> Self {
        Self {
            endpoint,
            current: None,
            successor: false,
            topics: HashMap::new(),
            max_topics,
            pending: VecDeque::new(),
        }
    }

    /// The current publisher's id.
    pub(super) fn current(&self) -> Option<Arc<str>> {
        self.current.clone()
    }

    /// Makes `publisher` the current one (queuing restart reports if it replaces another)
    /// and returns its shared id.
    pub(super) fn publisher(&mut self, publisher: &str) -> Arc<str> {
        match &self.current {
            Some(current) if &**current == publisher => current.clone(),
            Some(previous) => {
                let successor: Arc<str> = Arc::from(publisher);
                let previous = previous.clone();
                let mut topics: Vec<(String, u64)> = self.topics.drain().collect();
                topics.sort();
                for (topic, last) in topics {
                    self.pending.push_back(Gap {
                        endpoint: self.endpoint.clone(),
                        publisher: previous.clone(),
                        topic,
                        first: last + 1,
                        last: None,
                        reason: GapReason::PublisherRestarted {
                            successor: successor.clone(),
                        },
                    });
                }
                self.successor = true;
                self.current = Some(successor.clone());
                successor
            }
            None => {
                let id: Arc<str> = Arc::from(publisher);
                self.current = Some(id.clone());
                id
            }
        }
    }

    /// What event `seq` of `topic` from the current publisher means.
    pub(super) fn check(&self, topic: &str, seq: u64) -> Check {
        let last = match self.topics.get(topic) {
            Some(&last) => last,
            None if self.topics.len() >= self.max_topics => return Check::Untracked,
            None if self.successor => 0,
            None => return Check::Fresh(None),
        };
        if seq <= last {
            return Check::Duplicate;
        }
        if seq == last + 1 {
            return Check::Fresh(None);
        }
        Check::Fresh(Some(Gap {
            endpoint: self.endpoint.clone(),
            publisher: self.current.clone().unwrap_or_else(|| Arc::from("")),
            topic: topic.to_owned(),
            first: last + 1,
            last: Some(seq - 1),
            reason: GapReason::Missed,
        }))
    }

    /// Records that event `seq` of `topic` was delivered (with its gap report, if any).
    pub(super) fn delivered(&mut self, topic: &str, seq: u64) {
        self.account(topic, seq);
    }

    /// Records that event `seq` of `topic` was dropped here; the next delivered event of the
    /// topic will report it.
    pub(super) fn dropped(&mut self, topic: &str, seq: u64) {
        if !self.topics.contains_key(topic)
            && !self.successor
            && self.topics.len() < self.max_topics
        {
            self.topics.insert(topic.to_owned(), seq - 1);
        }
    }

    /// Installs baselines from a snapshot of `publisher`: every event of these topics up to
    /// these numbers is accounted for.
    pub(super) fn install(&mut self, publisher: &str, baselines: &[(String, u64)]) {
        self.publisher(publisher);
        for (topic, seq) in baselines {
            if self.topics.contains_key(topic.as_str()) || self.topics.len() < self.max_topics {
                self.account(topic, *seq);
            }
        }
    }

    fn account(&mut self, topic: &str, seq: u64) {
        let full = self.topics.len() >= self.max_topics;
        match self.topics.get_mut(topic) {
            Some(last) => *last = (*last).max(seq),
            None if !full => {
                self.topics.insert(topic.to_owned(), seq);
            }
            None => {}
        }
    }

    /// Restart reports waiting to be handed over.
    pub(super) fn pending(&mut self) -> &mut VecDeque<Gap> {
        &mut self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(Arc::from("tcp://x"), 100)
    }

    fn deliver(t: &mut Tracker, topic: &str, seq: u64) -> Check {
        let check = t.check(topic, seq);
        if matches!(check, Check::Fresh(_)) {
            t.delivered(topic, seq);
        }
        check
    }

    fn range(check: &Check) -> Option<(u64, Option<u64>)> {
        match check {
            Check::Fresh(Some(gap)) => Some((gap.first, gap.last)),
            _ => None,
        }
    }

    #[test]
    fn late_join_then_in_order_then_gap() {
        let mut t = tracker();
        t.publisher("A");
        assert_eq!(deliver(&mut t, "a", 5), Check::Fresh(None));
        assert_eq!(deliver(&mut t, "a", 6), Check::Fresh(None));
        let check = deliver(&mut t, "a", 10);
        assert_eq!(range(&check), Some((7, Some(9))));
        assert_eq!(deliver(&mut t, "a", 10), Check::Duplicate);
        assert_eq!(deliver(&mut t, "a", 3), Check::Duplicate);
        // Topics are independent.
        assert_eq!(deliver(&mut t, "b", 1), Check::Fresh(None));
        assert_eq!(deliver(&mut t, "a", 11), Check::Fresh(None));
    }

    #[test]
    fn restart_reports_old_topics_and_follows_the_new_publisher_from_its_start() {
        let mut t = tracker();
        t.publisher("A");
        deliver(&mut t, "a", 4);
        deliver(&mut t, "b", 9);
        assert!(t.pending().is_empty());
        let id = t.publisher("B");
        assert_eq!(&*id, "B");
        let pending: Vec<Gap> = t.pending().drain(..).collect();
        assert_eq!(pending.len(), 2);
        assert_eq!(
            (
                pending[0].topic.as_str(),
                &*pending[0].publisher,
                pending[0].first,
                pending[0].last
            ),
            ("a", "A", 5, None)
        );
        assert_eq!((pending[1].topic.as_str(), pending[1].first), ("b", 10));
        assert!(matches!(
            &pending[0].reason,
            GapReason::PublisherRestarted { successor } if &**successor == "B"
        ));
        // B sent 1..=2 before we reconnected: reported; a topic starting at 1 is clean.
        assert_eq!(range(&deliver(&mut t, "a", 3)), Some((1, Some(2))));
        assert_eq!(deliver(&mut t, "c", 1), Check::Fresh(None));
        assert_eq!(deliver(&mut t, "c", 2), Check::Fresh(None));
    }

    #[test]
    fn local_drops_surface_at_the_next_delivery() {
        let mut t = tracker();
        t.publisher("A");
        // Dropped before anything of the topic was delivered: still reported.
        assert_eq!(t.check("a", 3), Check::Fresh(None));
        t.dropped("a", 3);
        t.dropped("a", 4);
        assert_eq!(range(&deliver(&mut t, "a", 5)), Some((3, Some(4))));
        deliver(&mut t, "a", 6);
        t.dropped("a", 7);
        assert_eq!(range(&deliver(&mut t, "a", 8)), Some((7, Some(7))));
    }

    #[test]
    fn snapshot_baselines_make_first_events_exact() {
        let mut t = tracker();
        t.install("A", &[("a".into(), 10), ("b".into(), 0)]);
        assert_eq!(deliver(&mut t, "a", 9), Check::Duplicate);
        assert_eq!(deliver(&mut t, "a", 11), Check::Fresh(None));
        assert_eq!(range(&deliver(&mut t, "b", 3)), Some((1, Some(2))));
    }

    #[test]
    fn topic_table_is_bounded() {
        let mut t = Tracker::new(Arc::from("e"), 2);
        t.publisher("A");
        deliver(&mut t, "a", 1);
        deliver(&mut t, "b", 1);
        assert_eq!(t.check("c", 1), Check::Untracked);
        t.delivered("c", 1);
        t.dropped("c", 2);
        assert_eq!(t.check("c", 5), Check::Untracked);
        assert_eq!(deliver(&mut t, "a", 2), Check::Fresh(None));
    }
}
