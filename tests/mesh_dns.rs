//! Discovery through DNS against a real `dnsmasq` on loopback (Debian's `dnsmasq-base`,
//! installed by `.ci/run`; skipped with a message where it is absent): a caller with no
//! beacons and no static seeds finds the mesh's members from SRV records, finds a member
//! the records gain, loses one the records drop once it is gone, and calls them by service
//! name; A/AAAA records at a port work the same. The records change by restarting dnsmasq
//! with new ones on the same port.

mod common;
mod mesh_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{net, within};
use mesh_support::mesh_name;
use zmesh::mesh::{
    Discovery, DiscoveryConfig, DnsSeeds, MeshClient, MeshClientConfig, MeshNode, Presence,
};

/// How long any expected change may take (a few refresh and gossip periods).
const CHANGE_WITHIN: Duration = Duration::from_secs(15);
const REFRESH: Duration = Duration::from_millis(200);
const GOSSIP: Duration = Duration::from_millis(200);
const EXPIRE: Duration = Duration::from_millis(1500);
/// The SRV name the test zone serves.
const SRV: &str = "_zmesh._tcp.mesh.test";

/// A dnsmasq answering only from its config, on 127.0.0.1:`port`, killed on drop.
struct Dnsmasq {
    child: tokio::process::Child,
}

impl Dnsmasq {
    fn binary() -> Option<PathBuf> {
        ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    /// Serves `records` (dnsmasq config lines) on `port`.
    async fn start(binary: &Path, dir: &Path, port: u16, records: &str) -> Self {
        let conf = dir.join("zone.conf");
        std::fs::write(&conf, records).expect("dnsmasq config");
        let child = tokio::process::Command::new(binary)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=0",
                "--pid-file=",
                "--log-facility=-",
                &format!("--port={port}"),
                &format!("--conf-file={}", conf.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq starts");
        Self { child }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = within(Duration::from_secs(5), "dnsmasq exit", self.child.wait()).await;
    }
}

/// Zone lines for SRV records pointing at `members` (name, port), each name with an A
/// record on 127.0.0.1.
fn srv_zone(members: &[(&str, u16)]) -> String {
    members
        .iter()
        .map(|(name, port)| {
            format!(
                "srv-host={SRV},{name}.mesh.test,{port}\nhost-record={name}.mesh.test,127.0.0.1\n"
            )
        })
        .collect()
}

/// A free loopback port for dnsmasq (UDP and TCP).
fn free_port() -> u16 {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    tcp.local_addr().expect("addr").port()
}

async fn member(mesh: &str, name: &str) -> MeshNode {
    net(
        "mesh node start",
        MeshNode::builder(mesh)
            .name(name)
            .bind("tcp://127.0.0.1:0")
            .service(mesh_support::billing(name, None))
            .timing(GOSSIP, EXPIRE)
            .start(),
    )
    .await
    .expect("mesh node starts")
}

fn port_of(node: &MeshNode) -> u16 {
    let endpoint: zmesh::Endpoint = node.node().endpoints()[0].parse().expect("endpoint");
    endpoint.port().expect("tcp")
}

/// Waits for `who` to be in (`joined`) or out of the caller's directory: already so, or
/// told by `events` (subscribed before the check, so no change falls between).
async fn presence_of(
    discovery: &Discovery,
    events: &mut tokio::sync::broadcast::Receiver<Presence>,
    who: &str,
    joined: bool,
) {
    if discovery.peers().iter().any(|p| p.name == who) == joined {
        return;
    }
    let what = format!("{who} {}", if joined { "joining" } else { "leaving" });
    within(CHANGE_WITHIN, &what, async {
        loop {
            match events.recv().await {
                Ok(Presence::Joined(p)) if joined && p.name == who => return,
                Ok(Presence::Left(p)) if !joined && p.name == who => return,
                Ok(_) => {}
                Err(e) => panic!("presence stream broke: {e}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_feed_discovery_as_members_come_and_go() {
    let Some(binary) = Dnsmasq::binary() else {
        eprintln!("skipped: dnsmasq is not installed (Debian's dnsmasq-base)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = mesh_name("dns");
    let port = free_port();
    let alpha = member(&mesh, "alpha").await;
    let beta = member(&mesh, "beta").await;
    let dns = Dnsmasq::start(
        &binary,
        dir.path(),
        port,
        &srv_zone(&[("alpha", port_of(&alpha))]),
    )
    .await;

    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let discovery = net(
        "discovery start",
        Discovery::start(
            DiscoveryConfig::new(&mesh)
                .dns(DnsSeeds::srv(SRV).nameserver(server).refresh(REFRESH))
                .gossip_interval(GOSSIP)
                .expire_after(EXPIRE),
        ),
    )
    .await
    .expect("discovery starts");
    let mut events = discovery.subscribe();
    presence_of(&discovery, &mut events, "alpha", true).await;
    assert!(
        discovery.peers().iter().all(|p| p.name != "beta"),
        "beta is in no record yet"
    );
    let client = MeshClient::new(discovery.clone(), MeshClientConfig::default());
    let (answered, doubled): (String, u64) =
        net("call by name", client.call("billing.quote", (21,)))
            .await
            .expect("billing.quote");
    assert_eq!((answered.as_str(), doubled), ("alpha", 42));

    // The records gain beta.
    dns.stop().await;
    let dns = Dnsmasq::start(
        &binary,
        dir.path(),
        port,
        &srv_zone(&[("alpha", port_of(&alpha)), ("beta", port_of(&beta))]),
    )
    .await;
    presence_of(&discovery, &mut events, "beta", true).await;
    assert_eq!(discovery.stats().dns_seeds, 2);

    // The records drop alpha, which goes away.
    dns.stop().await;
    let dns = Dnsmasq::start(
        &binary,
        dir.path(),
        port,
        &srv_zone(&[("beta", port_of(&beta))]),
    )
    .await;
    alpha.shutdown(Duration::from_secs(1)).await;
    presence_of(&discovery, &mut events, "alpha", false).await;
    common::eventually(CHANGE_WITHIN, "one DNS seed left", || {
        discovery.stats().dns_seeds == 1
    })
    .await;
    let (answered, _): (String, u64) =
        net("call after the change", client.call("billing.quote", (1,)))
            .await
            .expect("billing.quote");
    assert_eq!(answered, "beta");
    let stats = discovery.stats();
    assert!(stats.dns_lookups_ok >= 3, "{stats:?}");

    // A lookup that fails (the server is gone) keeps the last seeds.
    dns.stop().await;
    let failed_before = discovery.stats().dns_lookups_failed;
    common::eventually(CHANGE_WITHIN, "a failed lookup", || {
        discovery.stats().dns_lookups_failed > failed_before
    })
    .await;
    assert_eq!(discovery.stats().dns_seeds, 1, "the last seeds stay");
    beta.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_at_a_port_feed_discovery() {
    let Some(binary) = Dnsmasq::binary() else {
        eprintln!("skipped: dnsmasq is not installed (Debian's dnsmasq-base)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = mesh_name("dns-a");
    let port = free_port();
    let gamma = member(&mesh, "gamma").await;
    let dns = Dnsmasq::start(
        &binary,
        dir.path(),
        port,
        "host-record=members.mesh.test,127.0.0.1\n",
    )
    .await;
    let discovery = net(
        "discovery start",
        Discovery::start(
            DiscoveryConfig::new(&mesh)
                .dns(
                    DnsSeeds::host("members.mesh.test", port_of(&gamma))
                        .nameserver(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                        .refresh(REFRESH),
                )
                .gossip_interval(GOSSIP)
                .expire_after(EXPIRE),
        ),
    )
    .await
    .expect("discovery starts");
    let mut events = discovery.subscribe();
    presence_of(&discovery, &mut events, "gamma", true).await;
    dns.stop().await;
    gamma.shutdown(Duration::from_secs(1)).await;
}
