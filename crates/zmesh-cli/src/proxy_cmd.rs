//! Runs `zmesh proxy`: the proxy device of `zmesh-device` until Ctrl-C or SIGTERM, printing
//! its resolved endpoints on stdout so a parent process can use port 0. With `--jobs DIR`
//! it also holds a job queue for its workers: an in-process node, a worker of the device's
//! own backend, serves the `jobs` service (so the device routes `jobs.*` to it like any
//! service) and dispatches its jobs through the device's frontend, to the other workers.

use crate::output::outln;
use std::sync::Arc;
use std::time::Duration;

use zmesh_core::metrics::Collector;
use zmesh_core::{Endpoint, Node};
use zmesh_device::{Device, DeviceConfig};

use crate::CliError;

/// How long the queue's in-process node may take to join the device (it joins at once).
const QUEUE_JOIN: Duration = Duration::from_secs(10);
/// How long the queue's node lets its calls (`jobs.result` waits, submissions) finish at
/// shutdown.
const QUEUE_GRACE: Duration = Duration::from_secs(2);

/// The options of `zmesh proxy`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
At start the proxy prints one line per bound socket, `ROLE ENDPOINT`, in this order:
  frontend tcp://127.0.0.1:4242
  backend tcp://127.0.0.1:4243
  events-in tcp://127.0.0.1:4244     (with --events-in/--events-out)
  events-out tcp://127.0.0.1:4245
  jobs DIR                           (with --jobs)
Port 0 picks a free port; the lines show the real one.

With --jobs DIR the proxy holds a durable job queue stored in DIR: `zmesh jobs submit
FRONTEND METHOD ARGS...` stores a job, which runs on the workers serving METHOD
(docs/JOBS.md). A job whose method no worker serves yet is retried with backoff.")]
pub(crate) struct ProxyArgs {
    /// Endpoint clients call (zmesh and stock zerorpc clients), e.g. tcp://127.0.0.1:4242.
    #[arg(long, env = "ZMESH_FRONTEND")]
    frontend: Endpoint,
    /// Endpoint worker nodes connect to (`zmesh serve --worker-of`, NodeBuilder::worker_of).
    #[arg(long, env = "ZMESH_BACKEND")]
    backend: Endpoint,
    /// Event forwarder: endpoint publishers connect to (XSUB), e.g. `zmesh pub`.
    #[arg(long, requires = "events_out", env = "ZMESH_EVENTS_IN")]
    events_in: Option<Endpoint>,
    /// Event forwarder: endpoint subscribers connect to (XPUB), e.g. `zmesh sub`.
    #[arg(long, requires = "events_in", env = "ZMESH_EVENTS_OUT")]
    events_out: Option<Endpoint>,
    /// The device's name, answered by _zerorpc_name and _zerorpc_ping.
    #[arg(long, env = "ZMESH_NAME")]
    name: Option<String>,
    /// Heartbeat period toward clients, in seconds [default: 5].
    #[arg(long, value_name = "SECS", value_parser = crate::positive_seconds, env = "ZMESH_HEARTBEAT")]
    heartbeat: Option<f64>,
    /// Largest message accepted from a client or worker, in bytes [default: 16777216].
    #[arg(long, value_name = "BYTES", env = "ZMESH_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Calls queued per service before callers get ERR Overloaded [default: 1000].
    #[arg(long, value_name = "N", env = "ZMESH_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Bytes of requests the device holds at once (queued or running) before callers get
    /// ERR Overloaded [default: 268435456, 256 MiB].
    #[arg(long, value_name = "BYTES", env = "ZMESH_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Most calls the device sends one worker at once, whatever it announces [default: 1024].
    #[arg(long, value_name = "N", env = "ZMESH_MAX_WORKER_CAPACITY")]
    max_worker_capacity: Option<u32>,
    /// Workers must seal with the key in FILE (on the backend only; clients keep the mesh
    /// key options below, or call unkeyed without one). Without this or a mesh key, any
    /// process that can reach the backend is trusted as a worker.
    #[arg(long, value_name = "FILE", env = "ZMESH_BACKEND_KEY_FILE")]
    backend_key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    key: crate::mesh_key::KeyArgs,
    /// Read defaults for these flags from a TOML file: each key a long flag
    /// (`frontend = "tcp://127.0.0.1:4242"`, `max-queue = 500`). A flag on the command line
    /// beats its ZMESH_ variable, which beats the file.
    #[arg(long, value_name = "FILE", env = "ZMESH_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Serve the device's figures for Prometheus at http://ADDR/metrics, with /healthz and
    /// /readyz; port 0 picks one, printed on a `metrics http://ADDR` line after the others.
    #[arg(long, value_name = "ADDR", env = "ZMESH_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    /// Hold a durable job queue for the device's workers, stored in DIR (created if
    /// missing): `jobs.*` is answered at the frontend and the jobs run on the workers.
    #[arg(long = "jobs", value_name = "DIR", env = "ZMESH_JOBS")]
    jobs: Option<std::path::PathBuf>,
    #[command(flatten)]
    queue: crate::serve_cmd::QueueArgs,
    #[command(flatten)]
    pub(crate) otlp: crate::otlp::OtlpArgs,
}

/// Starts the device, prints one `ROLE ENDPOINT` line per bound socket (`frontend`,
/// `backend`, then `events-in` and `events-out` when forwarding), and serves until `signal`
/// completes; then closes every socket before returning.
pub(crate) async fn run(
    options: ProxyArgs,
    signal: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let mut config = DeviceConfig::default();
    if let Some(period) = options.heartbeat {
        config = config.heartbeat(Duration::from_secs_f64(period));
    }
    if let Some(bytes) = options.max_message_size {
        config = config.max_message_size(bytes);
    }
    if let Some(n) = options.max_queue {
        config = config.max_queue(n);
    }
    if let Some(n) = options.max_request_bytes {
        config = config.max_request_bytes(n);
    }
    if let Some(n) = options.max_worker_capacity {
        config = config.max_worker_capacity(n);
    }
    // A keyed device opens requests (it routes by method) and worker control messages;
    // clients and workers must hold the same key. Its event forwarder passes sealed events
    // through unopened.
    let key = options.key.load()?;
    let backend_key = options
        .backend_key_file
        .as_deref()
        .map(|path| crate::mesh_key::read_key_file(path)?.mesh_key())
        .transpose()?;
    let mut builder = Device::builder()
        .frontend(options.frontend)
        .backend(options.backend)
        .config(config);
    if let Some(name) = options.name {
        builder = builder.name(name);
    }
    // The queue's node is a worker like any other: it seals with the backend's key (the
    // backend key, or else the mesh key); its client of the frontend with the mesh key.
    let queue_keys = (backend_key.clone().or_else(|| key.clone()), key.clone());
    if let Some(key) = key {
        builder = builder.mesh_key(key);
    }
    if let Some(key) = backend_key {
        builder = builder.backend_key(key);
    }
    if let (Some(events_in), Some(events_out)) = (options.events_in, options.events_out) {
        builder = builder.events(events_in, events_out);
    }
    let device = builder
        .start()
        .await
        .map_err(|e| CliError::Other(format!("cannot start the proxy: {e}")))?;
    if !device.backend_keyed() {
        eprintln!(
            "zmesh: warning: the backend {} has no key: any process that can connect to it is \
             trusted as a worker (it is sent calls and its answers reach clients); pass \
             --backend-key-file or a mesh key",
            device.backend()
        );
    }
    // What the queue's dispatch records, for --metrics.
    let client_metrics = zmesh_core::metrics::ClientMetrics::new();
    let queue = match options.jobs {
        Some(dir) => {
            let (worker_key, client_key) = queue_keys;
            let frontend =
                crate::serve_cmd::workers_client(device.frontend(), client_key, &client_metrics);
            let extension = options
                .queue
                .extension(dir.clone(), frontend, None)
                .worker_name("device");
            let mut builder = Node::builder()
                .name("jobs")
                .worker_of(device.backend())
                .extension(extension);
            if let Some(key) = worker_key {
                builder = builder.mesh_key(key);
            }
            let node = builder
                .start()
                .await
                .map_err(|e| CliError::Other(format!("cannot start the job queue: {e}")))?;
            // Announced once the device routes `jobs.*`: a `zmesh jobs submit` right after
            // the announcement must find the queue.
            device
                .wait_for_workers(zmesh_jobs::SERVICE, 1, QUEUE_JOIN)
                .await
                .map_err(|e| CliError::Other(format!("the job queue did not join: {e}")))?;
            Some((node, dir))
        }
        None => None,
    };
    for line in endpoint_lines(&device) {
        // stdout is line-buffered: each line reaches a reading parent at once.
        outln!("{line}");
    }
    if let Some((_, dir)) = &queue {
        outln!("jobs {}", dir.display());
    }
    let exporter = match options.metrics {
        Some(addr) => {
            // The device's figures, then its queue's (not the queue node's own calls: the
            // device counts those per service).
            let mut collectors: Vec<Arc<dyn Collector>> = vec![Arc::new(device.metrics())];
            if let Some((node, _)) = &queue {
                collectors.extend(node.metrics().extensions().iter().cloned());
                collectors.push(Arc::new(client_metrics.clone()));
            }
            let render = Arc::new(move || zmesh_core::metrics::render_all(&collectors));
            Some(crate::http::Exporter::start(addr, render).await?)
        }
        None => None,
    };
    let signal = async {
        signal.await;
        if let Some(exporter) = &exporter {
            exporter.not_ready();
        }
        // The queue first, while the device still carries its running attempts' ends:
        // what is still running stays so in the store and runs again at the next start.
        if let Some((node, _)) = queue {
            node.shutdown(QUEUE_GRACE).await;
        }
    };
    device.run_until(signal).await;
    drop(exporter);
    eprintln!("zmesh: proxy stopped");
    Ok(())
}

/// The announcement: one `ROLE ENDPOINT` line per bound socket, frontend first (so a reader
/// that takes the last word of the first line gets the endpoint clients call).
fn endpoint_lines(device: &Device) -> Vec<String> {
    let mut lines = vec![
        format!("frontend {}", device.frontend()),
        format!("backend {}", device.backend()),
    ];
    if let Some((events_in, events_out)) = device.events() {
        lines.push(format!("events-in {events_in}"));
        lines.push(format!("events-out {events_out}"));
    }
    lines
}
