//! Exposes a mesh member's discovery figures for Prometheus: the peers and DNS seeds it
//! knows now, and its beacons, gossip exchanges and DNS lookups by result, read at scrape
//! time from the counters `Discovery` keeps anyway (the same ones `Discovery::stats`
//! gives). An exporter renders it beside the node's figures (`metrics::render_all`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::Discovery;
use crate::metrics::{CounterFamily, encode_counters, encode_gauges};

/// A handle on a mesh member's discovery figures for an exporter (from
/// [`Discovery::metrics`]).
#[derive(Debug, Clone)]
pub struct MeshMetrics {
    discovery: Discovery,
}

impl Discovery {
    /// This discovery's figures as a Prometheus collector.
    pub fn metrics(&self) -> MeshMetrics {
        MeshMetrics {
            discovery: self.clone(),
        }
    }
}

impl Collector for MeshMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.discovery.stats();
        encode_gauges(
            &mut encoder,
            &[
                (
                    "zmesh_mesh_peers",
                    "Other members of the mesh this member knows now.",
                    s.peers as u64,
                ),
                (
                    "zmesh_mesh_dns_seeds",
                    "Endpoints the last good DNS lookup gave.",
                    s.dns_seeds as u64,
                ),
            ],
        )?;
        encode_counters(
            &mut encoder,
            &[
                CounterFamily {
                    name: "zmesh_mesh_beacons",
                    help: "Beacons sent and heard, by result (heard ones that were ignored, \
                           by why).",
                    label: "result",
                    values: vec![
                        ("sent", s.beacons_sent),
                        ("heard", s.beacons_heard),
                        ("foreign", s.beacons_foreign),
                        ("malformed", s.beacons_malformed),
                        ("unauthenticated", s.beacons_unauthenticated),
                        ("stale", s.beacons_stale),
                    ],
                },
                CounterFamily {
                    name: "zmesh_mesh_gossip_exchanges",
                    help: "Gossip exchanges with other members, by result.",
                    label: "result",
                    values: vec![("ok", s.gossip_ok), ("failed", s.gossip_failed)],
                },
                CounterFamily {
                    name: "zmesh_mesh_dns_lookups",
                    help: "DNS lookups for seeds, by result (a failed one keeps the last \
                           endpoints).",
                    label: "result",
                    values: vec![("ok", s.dns_lookups_ok), ("failed", s.dns_lookups_failed)],
                },
                CounterFamily {
                    name: "zmesh_mesh_peers_refused",
                    help: "Peers not taken into the directory, by reason.",
                    label: "reason",
                    values: vec![("directory_full", s.refused_full)],
                },
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::mesh::MeshNode;

    const LIMIT: Duration = Duration::from_secs(10);

    async fn member(seed: Option<&str>) -> MeshNode {
        let mut builder = MeshNode::builder("metrics-test")
            .bind("tcp://127.0.0.1:0")
            .timing(Duration::from_millis(50), Duration::from_secs(5));
        if let Some(seed) = seed {
            builder = builder.seed(seed);
        }
        tokio::time::timeout(LIMIT, builder.start())
            .await
            .expect("started in time")
            .expect("a mesh node")
    }

    /// A member alone knows no peer and has sent nothing; every family is there with its
    /// zero series, so a dashboard's queries find them from the start. Once a second
    /// member gossips with it, it shows one peer.
    #[tokio::test]
    async fn members_show_their_peers_and_zero_counters() {
        let first = member(None).await;
        let text = crate::metrics::render(first.discovery().metrics());
        assert!(text.contains("zmesh_mesh_peers 0\n"), "{text}");
        assert!(text.contains("zmesh_mesh_dns_seeds 0\n"), "{text}");
        for series in [
            r#"zmesh_mesh_beacons_total{result="sent"} 0"#,
            r#"zmesh_mesh_gossip_exchanges_total{result="failed"} 0"#,
            r#"zmesh_mesh_dns_lookups_total{result="ok"} 0"#,
            r#"zmesh_mesh_peers_refused_total{reason="directory_full"} 0"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }

        let mut presence = first.discovery().subscribe();
        let second = member(first.node().endpoints().first().map(String::as_str)).await;
        tokio::time::timeout(LIMIT, presence.recv())
            .await
            .expect("the first member learnt of the second in time")
            .expect("a presence event");
        let text = crate::metrics::render(first.discovery().metrics());
        assert!(text.contains("zmesh_mesh_peers 1\n"), "{text}");
        second.shutdown(Duration::from_millis(100)).await;
        first.shutdown(Duration::from_millis(100)).await;
    }
}
