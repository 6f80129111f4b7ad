//! Provides the figures a node's events add to its `/metrics`: what its publisher published,
//! dropped and served as snapshots, and what its subscriber (the node's event handlers)
//! received, lost and refused, by reason. Read at scrape time from the counters
//! [`Publisher::stats`] and [`SubscriberStats`] report anyway.

use std::sync::Arc;

use crate::metrics::{Collector, CounterFamily, DescriptorEncoder, encode_counters};

use super::{Publisher, PublisherStats, SubscriberStats};

/// A node's events, as a collector.
#[derive(Debug)]
pub(super) struct EventsFigures {
    pub(super) publisher: Option<Publisher>,
    pub(super) subscriber: Option<Arc<super::subscriber::Shared>>,
}

impl Collector for EventsFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let publisher = self.publisher.as_ref().map(Publisher::stats);
        let subscriber = self.subscriber.as_ref().map(|s| s.stats());
        encode_counters(&mut encoder, &families(publisher, subscriber))
    }
}

/// The counter families of a publisher's and a subscriber's counters (each only when the
/// node has one).
fn families(
    publisher: Option<PublisherStats>,
    subscriber: Option<SubscriberStats>,
) -> Vec<CounterFamily<'static>> {
    let mut families = Vec::new();
    if let Some(p) = publisher {
        families.push(CounterFamily {
            name: "zmesh_events_published",
            help: "Events this node's publisher sent, by kind (events, and snapshots served \
                   with their sync marker).",
            label: "kind",
            values: vec![("events", p.published), ("snapshots", p.snapshots)],
        });
        families.push(CounterFamily {
            name: "zmesh_events_publisher_dropped",
            help: "Events the publisher dropped for one subscriber, by reason (the \
                   subscriber sees a gap).",
            label: "reason",
            values: vec![("subscriber_queue_full", p.dropped)],
        });
    }
    if let Some(s) = subscriber {
        families.push(CounterFamily {
            name: "zmesh_events_received",
            help: "What this node's subscriber handed its event handlers, by kind (events, \
                   gap reports, and events known lost in gaps).",
            label: "kind",
            values: vec![("events", s.received), ("gaps", s.gaps), ("lost", s.lost)],
        });
        families.push(CounterFamily {
            name: "zmesh_events_subscriber_dropped",
            help: "Messages this node's subscriber dropped, by reason.",
            label: "reason",
            values: vec![
                ("queue_full", s.dropped),
                ("undecodable", s.undecodable),
                ("unauthenticated", s.unauthenticated),
                ("replay_rejected", s.replay_rejected),
                ("oversized", s.oversized),
                ("duplicates", s.duplicates),
            ],
        });
        families.push(CounterFamily {
            name: "zmesh_events_subscriber_reconnects",
            help: "Reconnections of this node's subscriber, by cause.",
            label: "cause",
            values: vec![
                ("connection_dropped", s.reconnects),
                ("publisher_restarted", s.publisher_restarts),
            ],
        });
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher-only node shows the publisher's families and nothing of a subscriber.
    #[test]
    fn a_publisher_encodes_its_counters_by_kind_and_reason() {
        let families = families(
            Some(PublisherStats {
                published: 7,
                dropped: 2,
                snapshots: 1,
            }),
            None,
        );
        let text = crate::metrics::render(Families(families));
        for line in [
            "zmesh_events_published_total{kind=\"events\"} 7",
            "zmesh_events_published_total{kind=\"snapshots\"} 1",
            "zmesh_events_publisher_dropped_total{reason=\"subscriber_queue_full\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("zmesh_events_received"), "{text}");
    }

    #[derive(Debug)]
    struct Families(Vec<CounterFamily<'static>>);

    impl Collector for Families {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_counters(&mut encoder, &self.0)
        }
    }
}
