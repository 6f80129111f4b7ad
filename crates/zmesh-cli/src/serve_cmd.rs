//! Runs `zmesh serve`: hosts reference services on a node (bound endpoints, a worker of a
//! proxy device, or a member of a mesh found by beacons and seeds), optionally publishing
//! their events, until Ctrl-C or SIGTERM; then shuts down gracefully.

use crate::output::outln;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use zmesh_core::mesh::{BeaconConfig, DnsSeeds, MeshClient, MeshClientConfig, MeshNode};
use zmesh_core::{Endpoint, MeshKey, Node, NodeConfig, Publisher, Service};

use crate::CliError;

/// The services `zmesh serve` can host.
pub(crate) const SERVICES: [&str; 3] = ["echo", "kv", "jobs"];

/// The options of `zmesh serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Services:
  echo  echo, upper, sleep, fail, count, size (echo, upper, size, sleep marked idempotent)
  kv    get, put, delete, scan over an in-memory map; publishes kv.changed.<key> with --events
  jobs  a durable job queue stored in --data DIR, running its jobs through --jobs-workers
        (with --mesh, by default on the members serving each job's method; docs/JOBS.md);
        publishes jobs.<state> with --events

At start it prints, one per line (port 0 picks a free port; the lines show the real one):
  serving SERVICES on ENDPOINT...        (or: serving SERVICES as a worker of BACKEND)
  plain ENDPOINT...                      (with --plain-bind)
  events ENDPOINT                        (with --events)
  mesh NAME peer ID                      (with --mesh)

Examples:
  zmesh serve --bind tcp://127.0.0.1:4242 --events tcp://127.0.0.1:4250 kv
  zmesh serve --worker-of tcp://127.0.0.1:4243 echo        # behind `zmesh proxy`
  zmesh serve --bind tcp://127.0.0.1:0 --mesh prod --beacon-port 47000 echo
  zmesh serve --mesh-key-file mesh.key --bind tcp://0.0.0.0:4242 --plain-bind tcp://127.0.0.1:4243 echo

With a mesh key (--mesh-key-file, or ZMESH_MESH_KEY) the --bind endpoints, the events
publisher and the mesh's gossip require it; --plain-bind endpoints serve plain zerorpc beside
them (stock clients, local tools). stderr names the key's id. Not with --worker-of (the proxy
device reads requests to route them). A key file that cannot be read, or is under 16 bytes,
exits 2.")]
pub(crate) struct ServeArgs {
    /// Endpoint to bind (repeatable); port 0 picks a free port, printed at start.
    #[arg(
        long = "bind",
        value_name = "ENDPOINT",
        default_value = "tcp://127.0.0.1:4242",
        env = "ZMESH_BIND",
        value_delimiter = ','
    )]
    binds: Vec<Endpoint>,
    /// Also bind this endpoint for plain zerorpc, unsealed, beside the keyed --bind ones
    /// (repeatable; printed on a `plain ENDPOINT...` line). Not with --mesh or --worker-of.
    #[arg(
        long = "plain-bind",
        value_name = "ENDPOINT",
        conflicts_with_all = ["mesh", "worker_of"],
        env = "ZMESH_PLAIN_BIND",
        value_delimiter = ','
    )]
    plain_binds: Vec<Endpoint>,
    /// The node's name (answered by _zerorpc_name).
    #[arg(long, env = "ZMESH_NAME")]
    name: Option<String>,
    /// Also export this service's methods without prefix (as zerorpc servers do).
    #[arg(long, conflicts_with = "mesh", env = "ZMESH_UNPREFIXED")]
    unprefixed: Option<String>,
    /// Seconds in-flight calls get to finish at shutdown.
    #[arg(long, default_value_t = 5.0, value_parser = crate::positive_seconds, env = "ZMESH_GRACE")]
    grace: f64,
    /// Bind an events publisher here (kv publishes its changes through it) and serve
    /// _zmesh.snapshot for it.
    #[arg(long, value_name = "ENDPOINT", env = "ZMESH_EVENTS")]
    events: Option<Endpoint>,
    /// Keep the last event of every topic for snapshots (with --events).
    #[arg(long, requires = "events", env = "ZMESH_LAST_VALUE_CACHE")]
    last_value_cache: bool,
    /// Serve as a worker of a proxy device: connect to its backend instead of binding.
    #[arg(long, value_name = "BACKEND", conflicts_with_all = ["binds", "mesh"], env = "ZMESH_WORKER_OF")]
    worker_of: Option<Endpoint>,
    /// Join this mesh: announce the node (by beacons with --beacon-port, and gossip with
    /// --seed) so mesh clients find it by service name.
    #[arg(long, value_name = "NAME", env = "ZMESH_MESH")]
    mesh: Option<String>,
    /// Announce this endpoint to the mesh instead of the bound ones (repeatable): needed
    /// when binding 0.0.0.0, which reaches no one; an unspecified address is refused.
    #[arg(
        long,
        value_name = "ENDPOINT",
        requires = "mesh",
        env = "ZMESH_ADVERTISE",
        value_delimiter = ','
    )]
    advertise: Vec<Endpoint>,
    /// UDP port of the mesh's beacons (every member on one network uses the same one).
    #[arg(long, requires = "mesh", env = "ZMESH_BEACON_PORT")]
    beacon_port: Option<u16>,
    /// Broadcast address beacons go to: 127.255.255.255 reaches this host only; a subnet's
    /// broadcast address reaches a LAN.
    #[arg(
        long,
        requires = "beacon_port",
        default_value = "127.255.255.255",
        env = "ZMESH_BEACON_TARGET"
    )]
    beacon_target: IpAddr,
    /// Seconds between beacons.
    #[arg(long, requires = "beacon_port", default_value_t = 1.0, value_parser = crate::positive_seconds, env = "ZMESH_BEACON_INTERVAL")]
    beacon_interval: f64,
    /// Another member's endpoint to gossip with (repeatable).
    #[arg(
        long = "seed",
        value_name = "ENDPOINT",
        requires = "mesh",
        env = "ZMESH_SEED",
        value_delimiter = ','
    )]
    seeds: Vec<Endpoint>,
    /// Also gossip with the members this DNS name's SRV records list (e.g. a Kubernetes
    /// headless Service's `_zmesh._tcp.NAME.NAMESPACE.svc.cluster.local`), resolved again
    /// every --dns-refresh seconds.
    #[arg(
        long,
        value_name = "NAME",
        requires = "mesh",
        conflicts_with = "dns_host",
        env = "ZMESH_DNS_SRV"
    )]
    dns_srv: Option<String>,
    /// Or: gossip with every A/AAAA address of HOST at PORT (`HOST:PORT`).
    #[arg(long, value_name = "HOST:PORT", requires = "mesh", value_parser = parse_host_port, env = "ZMESH_DNS_HOST")]
    dns_host: Option<(String, u16)>,
    /// Seconds between DNS lookups.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = crate::positive_seconds, env = "ZMESH_DNS_REFRESH")]
    dns_refresh: f64,
    /// The DNS server to ask (`IP:PORT`) instead of the system's (resolv.conf).
    #[arg(long, value_name = "IP:PORT", env = "ZMESH_DNS_SERVER")]
    dns_server: Option<std::net::SocketAddr>,
    /// Serve the node's figures for Prometheus at http://ADDR/metrics, with /healthz
    /// (the process is up) and /readyz (the node serves); port 0 picks one, printed on a
    /// `metrics http://ADDR` line.
    #[arg(long, value_name = "ADDR", env = "ZMESH_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) otlp: crate::otlp::OtlpArgs,
    /// With the `jobs` service: the directory its store lives in (created if missing).
    #[arg(long = "data", value_name = "DIR", env = "ZMESH_DATA")]
    jobs_data: Option<std::path::PathBuf>,
    /// With the `jobs` service: where its jobs are run, a node's or a proxy's endpoint
    /// (this node's own endpoint is fine when it serves the methods too; with --worker-of,
    /// the device's frontend). With --mesh it may be left out: jobs then run on the
    /// members serving their method, found by service name.
    #[arg(long, value_name = "ENDPOINT", env = "ZMESH_JOBS_WORKERS")]
    jobs_workers: Option<Endpoint>,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    limits: NodeLimits,
    #[command(flatten)]
    key: crate::mesh_key::ServeKeyArgs,
    /// Read defaults for these flags from a TOML file: each key a long flag
    /// (`heartbeat = 2.5`, `bind = ["tcp://127.0.0.1:4242"]`). A flag on the command line
    /// beats its ZMESH_ variable, which beats the file.
    #[arg(long, value_name = "FILE", env = "ZMESH_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Services to host.
    #[arg(required = true, value_parser = SERVICES)]
    services: Vec<String>,
}

/// A job queue's settings, the same for `zmesh serve jobs` and `zmesh proxy --jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueueArgs {
    /// With a job queue: `fsync` (power-loss durable, the default) or `os` (survives
    /// kill -9, not power loss); every acknowledgement states it.
    #[arg(long, value_name = "LEVEL", default_value = "fsync", value_parser = ["fsync", "os"], env = "ZMESH_JOBS_DURABILITY")]
    jobs_durability: String,
    /// With a job queue: the writer's opt-in low-latency mode, in microseconds (at most
    /// 1000): after each write it polls for the next for this long before sleeping, which
    /// cuts a lone submitter's latency and burns up to that much CPU per write.
    #[arg(long, value_name = "MICROSECONDS", value_parser = clap::value_parser!(u64).range(0..=1000), env = "ZMESH_JOBS_WRITER_SPIN_US")]
    jobs_writer_spin_us: Option<u64>,
}

impl QueueArgs {
    /// A queue stored in `dir` running its jobs through `workers`, publishing its state
    /// changes through `publisher` when there is one.
    pub(crate) fn extension<C>(
        &self,
        dir: std::path::PathBuf,
        workers: C,
        publisher: Option<&Publisher>,
    ) -> zmesh_jobs::JobsExtension<C> {
        let mut config = zmesh_jobs::JobsConfig::default();
        if self.jobs_durability == "os" {
            config.durability = zmesh_jobs::Level::Os;
        }
        config.writer_spin = self
            .jobs_writer_spin_us
            .map(std::time::Duration::from_micros);
        let mut extension = zmesh_jobs::JobsExtension::new(dir, config, workers);
        if let Some(publisher) = publisher {
            extension = extension.publisher(publisher.clone());
        }
        extension
    }
}

/// A client of `endpoint` that seals with `key` when there is one (a queue's workers, the
/// device a queue dispatches through).
pub(crate) fn workers_client(
    endpoint: &str,
    key: Option<MeshKey>,
    metrics: &zmesh_core::metrics::ClientMetrics,
) -> zmesh_core::Client {
    let mut config = zmesh_core::ClientConfig::default().metrics(metrics.clone());
    if let Some(key) = key {
        config = config.mesh_key(key);
    }
    zmesh_core::Client::with_config(endpoint, config)
}

/// The node's limits (see docs/CONFIGURATION.md); an unset one keeps its default.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeLimits {
    /// Heartbeat period in seconds, toward callers and on open calls [default: 5].
    #[arg(long, value_name = "SECS", value_parser = crate::positive_seconds, env = "ZMESH_HEARTBEAT")]
    heartbeat: Option<f64>,
    /// Largest message accepted, in bytes; a larger request gets ERR [default: 16777216].
    #[arg(long, value_name = "BYTES", env = "ZMESH_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Calls the node runs at once before it answers ERR Overloaded [default: 10000].
    #[arg(long, value_name = "N", env = "ZMESH_MAX_CONCURRENT_CALLS")]
    max_concurrent_calls: Option<usize>,
    /// Calls one connection may have running at once [default: 1000].
    #[arg(long, value_name = "N", env = "ZMESH_MAX_CALLS_PER_PEER")]
    max_calls_per_peer: Option<usize>,
    /// Request bytes one connection may have running at once [default: 67108864].
    #[arg(long, value_name = "BYTES", env = "ZMESH_MAX_BYTES_PER_PEER")]
    max_bytes_per_peer: Option<usize>,
    /// The low-latency mode: after each message, poll the sockets for up to MICROS
    /// microseconds before sleeping (at most 1000; keeps a CPU busy that long after every
    /// message) [default: off].
    #[arg(long, value_name = "MICROS", env = "ZMESH_SPIN")]
    spin: Option<u64>,
}

impl NodeLimits {
    /// The node configuration these limits give; the node checks it at start.
    fn config(&self) -> NodeConfig {
        let mut config = NodeConfig::default();
        if let Some(period) = self.heartbeat {
            config = config.heartbeat(Duration::from_secs_f64(period));
        }
        if let Some(bytes) = self.max_message_size {
            config = config.max_message_size(bytes);
        }
        if let Some(n) = self.max_concurrent_calls {
            config = config.max_concurrent_calls(n);
        }
        if let Some(n) = self.max_calls_per_peer {
            config = config.max_calls_per_peer(n);
        }
        if let Some(bytes) = self.max_bytes_per_peer {
            config = config.max_bytes_per_peer(bytes);
        }
        if let Some(micros) = self.spin {
            config = config.spin(Duration::from_micros(micros));
        }
        config
    }
}

/// A node `serve` runs, of whichever kind.
enum Running {
    Plain(Node),
    Mesh(MeshNode),
}

/// Starts the node, prints its endpoints (see the help text), serves until `signal`
/// completes, then shuts down gracefully.
pub(crate) async fn run(args: ServeArgs, signal: impl Future<Output = ()>) -> Result<(), CliError> {
    let grace = Duration::from_secs_f64(args.grace);
    let key = args.key.load()?;
    if let Some(key) = &key {
        eprintln!(
            "zmesh: mesh key id {:08x} ({})",
            key.key_id(),
            if key.encrypts() {
                "encrypted"
            } else {
                "authenticated"
            }
        );
    }
    let publisher = match &args.events {
        Some(endpoint) => Some(
            with_key(
                Publisher::builder()
                    .bind(endpoint)
                    .last_value_cache(args.last_value_cache),
                key.clone(),
                zmesh_core::PublisherBuilder::mesh_key,
            )
            .start()
            .await
            .map_err(|e| CliError::Other(format!("cannot start the events publisher: {e}")))?,
        ),
        None => None,
    };
    // The queue's store, and where its jobs run: an endpoint, or (in a mesh, without
    // --jobs-workers) the members serving each job's method.
    // What the node's own clients (a queue's dispatch) record, for --metrics.
    let client_metrics = zmesh_core::metrics::ClientMetrics::new();
    let jobs = if args.services.iter().any(|s| s == "jobs") {
        let Some(dir) = args.jobs_data.clone() else {
            return Err(CliError::Usage(
                "the jobs service needs --data DIR (its store) and --jobs-workers ENDPOINT \
                 (where its jobs run; optional with --mesh)"
                    .into(),
            ));
        };
        if args.jobs_workers.is_none() && args.mesh.is_none() {
            return Err(CliError::Usage(
                "the jobs service needs --jobs-workers ENDPOINT (where its jobs run: a node, \
                 a proxy's frontend; optional with --mesh, which finds them by service name)"
                    .into(),
            ));
        }
        let workers = args
            .jobs_workers
            .as_ref()
            .map(|endpoint| workers_client(&endpoint.to_string(), key.clone(), &client_metrics));
        Some((dir, workers))
    } else {
        None
    };
    let services = args
        .services
        .iter()
        .filter(|name| *name != "jobs")
        .map(|name| reference_service(name, publisher.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let listing = args.services.join(", ");
    if args.mesh.is_some() && key.is_none() {
        // Open by design without a key, and easy to miss: say so where the operator looks.
        eprintln!(
            "zmesh: warning: --mesh without a mesh key: discovery is unauthenticated (anyone on \
             the network can announce peers and receive calls); give --mesh-key-file or \
             ZMESH_MESH_KEY to seal beacons and gossip"
        );
    }
    if args.mesh.is_some() {
        check_advertised(&args.binds, &args.advertise)?;
    }
    let running = if let Some(mesh) = args.mesh {
        let mut builder = MeshNode::builder(mesh.clone()).node_config(args.limits.config());
        for endpoint in args.advertise {
            builder = builder.advertise(endpoint.to_string());
        }
        if let Some(name) = args.name {
            builder = builder.name(name);
        }
        for bind in args.binds {
            builder = builder.bind(bind);
        }
        for service in services {
            builder = builder.service(service);
        }
        if let Some(publisher) = publisher.clone() {
            builder = builder.publisher(publisher);
        }
        match jobs {
            Some((dir, Some(workers))) => {
                builder = builder.extension(args.queue.extension(dir, workers, publisher.as_ref()));
            }
            Some((dir, None)) => {
                let (queue, publisher) = (args.queue, publisher.clone());
                let metrics = client_metrics.clone();
                builder = builder.extension_with(move |discovery| {
                    // The mesh client seals with the mesh key discovery holds, if any.
                    let config = MeshClientConfig::default().metrics(metrics);
                    let members = MeshClient::new(discovery.clone(), config);
                    queue
                        .extension(dir, members, publisher.as_ref())
                        .worker_name("mesh")
                });
            }
            None => {}
        }
        if let Some(port) = args.beacon_port {
            builder = builder.beacon(
                BeaconConfig::new(port)
                    .targets([args.beacon_target])
                    .interval(Duration::from_secs_f64(args.beacon_interval)),
            );
        }
        for seed in args.seeds {
            builder = builder.seed(seed);
        }
        let dns = match (args.dns_srv, args.dns_host) {
            (Some(name), _) => Some(DnsSeeds::srv(name)),
            (None, Some((host, port))) => Some(DnsSeeds::host(host, port)),
            (None, None) => None,
        };
        if let Some(mut dns) = dns {
            dns = dns.refresh(Duration::from_secs_f64(args.dns_refresh));
            if let Some(server) = args.dns_server {
                dns = dns.nameserver(server);
            }
            builder = builder.dns(dns);
        }
        let node = with_key(builder, key, zmesh_core::mesh::MeshBuilder::mesh_key)
            .start()
            .await
            .map_err(|e| CliError::Other(format!("cannot start the node: {e}")))?;
        outln!("serving {listing} on {}", node.node().endpoints().join(" "));
        Running::Mesh(node)
    } else {
        let mut builder = Node::builder().config(args.limits.config());
        let keyed_binds = args.binds.len();
        let has_plain = !args.plain_binds.is_empty();
        match &args.worker_of {
            Some(backend) => builder = builder.worker_of(backend),
            None => {
                for bind in args.binds {
                    builder = builder.bind(bind);
                }
                for bind in args.plain_binds {
                    builder = builder.bind_plain(bind);
                }
            }
        }
        if let Some(name) = args.name {
            builder = builder.name(name);
        }
        for service in services {
            builder = builder.service(service);
        }
        if let Some(service) = args.unprefixed {
            builder = builder.export_unprefixed(service);
        }
        if let Some((dir, Some(workers))) = jobs {
            builder = builder.extension(args.queue.extension(dir, workers, publisher.as_ref()));
        }
        if let Some(publisher) = publisher.clone() {
            builder = builder.publisher(publisher);
        }
        let node = with_key(builder, key, zmesh_core::NodeBuilder::mesh_key)
            .start()
            .await
            .map_err(|e| CliError::Other(format!("cannot start the node: {e}")))?;
        match &args.worker_of {
            Some(backend) => outln!("serving {listing} as a worker of {backend}"),
            None => {
                // The node lists the --bind endpoints first, then the --plain-bind ones.
                let (keyed, plain) = node
                    .endpoints()
                    .split_at(keyed_binds.min(node.endpoints().len()));
                outln!("serving {listing} on {}", keyed.join(" "));
                if has_plain {
                    outln!("plain {}", plain.join(" "));
                }
            }
        }
        Running::Plain(node)
    };
    if let Some(publisher) = &publisher {
        outln!("events {}", publisher.endpoints().join(" "));
    }
    if let Running::Mesh(node) = &running {
        outln!("mesh {} peer {}", node.discovery().mesh(), node.record().id);
    }
    let exporter = match args.metrics {
        Some(addr) => {
            // A mesh member's discovery figures (peers, gossip, DNS) beside its node's.
            let (node, mesh) = match &running {
                Running::Plain(node) => (node.metrics(), None),
                Running::Mesh(node) => (node.node().metrics(), Some(node.discovery().metrics())),
            };
            let clients = client_metrics.clone();
            let render = std::sync::Arc::new(move || {
                let mut collectors = node.collectors();
                if let Some(mesh) = &mesh {
                    collectors.push(std::sync::Arc::new(mesh.clone()));
                }
                // The calls the node makes itself (a queue's jobs).
                collectors.push(std::sync::Arc::new(clients.clone()));
                zmesh_core::metrics::render_all(&collectors)
            });
            Some(crate::http::Exporter::start(addr, render).await?)
        }
        None => None,
    };
    signal.await;
    if let Some(exporter) = &exporter {
        exporter.not_ready();
    }
    let aborted = match running {
        Running::Plain(node) => node.shutdown(grace).await,
        Running::Mesh(node) => node.shutdown(grace).await,
    };
    drop(exporter);
    eprintln!("zmesh: stopped ({aborted} calls aborted at shutdown)");
    Ok(())
}

/// `HOST:PORT` of `--dns-host`.
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: the port must be 1-65535"))?;
    if host.is_empty() {
        return Err(format!("{text:?}: no host"));
    }
    Ok((host.to_owned(), port))
}

/// What a mesh member announces must reach it: an unspecified address (`0.0.0.0`, `[::]`,
/// `*`) reaches no one, so `--advertise` may not be one, and binding one needs `--advertise`.
/// Checked here so the operator gets a usage error naming the flag; the node refuses such a
/// record too.
fn check_advertised(binds: &[Endpoint], advertise: &[Endpoint]) -> Result<(), CliError> {
    if let Some(bad) = advertise.iter().find(|e| e.is_unspecified()) {
        return Err(CliError::Usage(format!(
            "--advertise {bad}: an unspecified address reaches no one; advertise one that \
             others can connect to"
        )));
    }
    if let Some(bound) = binds.iter().find(|e| e.is_unspecified())
        && advertise.is_empty()
    {
        return Err(CliError::Usage(format!(
            "--bind {bound} with --mesh: the node would announce an address that reaches \
             no one; add --advertise with the address others connect to (for example \
             tcp://10.0.0.7:{})",
            bound.port().unwrap_or(4242)
        )));
    }
    Ok(())
}

/// `builder` with `key` set through `set` when there is one.
fn with_key<B>(builder: B, key: Option<MeshKey>, set: fn(B, MeshKey) -> B) -> B {
    match key {
        Some(key) => set(builder, key),
        None => builder,
    }
}

/// A reference service by name; `publisher` carries the events of those that publish.
pub(crate) fn reference_service(
    name: &str,
    publisher: Option<Publisher>,
) -> Result<Service, CliError> {
    match name {
        // The pure methods are safe to run twice, so mesh clients may fail them over and
        // a device may re-run them on another worker.
        "echo" => {
            let mut echo = zmesh_echo::service();
            echo.mark_idempotent(["echo", "upper", "size", "sleep"])
                .map_err(|e| CliError::Other(e.to_string()))?;
            Ok(echo)
        }
        "kv" => Ok(zmesh_kv::service(zmesh_kv::KvConfig::default(), publisher)),
        other => Err(CliError::Other(format!("unknown service {other:?}"))),
    }
}
