//! Runs `zmesh sub` (print a publisher's events as JSON lines) and `zmesh pub` (publish one
//! event, delivered to the subscribers present, not lost to ZeroMQ's slow-joiner problem).

use crate::output::outln;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value as Json, json};
use tokio::time::{Instant, timeout_at};
use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend, XPubSocket, ZmqMessage};
use zmesh_core::reserved;
use zmesh_core::{
    Delivery, Endpoint, Gap, GapReason, Received, Subscriber, SubscriberConfig, wire,
};

use crate::{CliError, json};

/// The options of `zmesh sub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each line on stdout is one JSON object:
  {\"kind\":\"event\",\"topic\":\"orders.created\",\"payload\":{...},\"publisher\":\"9f3c...\",\"seq\":7}
  {\"kind\":\"gap\",\"topic\":\"orders.created\",\"publisher\":\"9f3c...\",\"first\":8,\"last\":9,\"missing\":2,\"reason\":\"missed\"}
publisher and seq are null for events without them (stock zerorpc publishers, `zmesh pub`).
A gap reports events of a topic this subscriber did not receive; reason \"publisher_restarted\"
(with \"successor\", and \"last\" null) says the publisher was replaced. A summary goes to stderr
at exit.

Exit status: 0 when stopped (Ctrl-C, SIGTERM, --count reached, or --timeout without --count),
3 when the endpoint cannot be reached or --timeout passes before --count events arrived.

With a mesh key (--mesh-key-file, or ZMESH_MESH_KEY) only events sealed with it are printed;
the others are refused and counted in the summary (\"N refused by the mesh key\"). Without a
key, a keyed publisher's events cannot be read and count as undecodable. A key file that
cannot be read, or a key under 16 bytes, exits 2.")]
pub(crate) struct SubArgs {
    /// The publisher to connect to: a node's events endpoint (`Node::builder().events`), a
    /// bound Publisher, or a proxy's --events-out.
    endpoint: Endpoint,
    /// Receive topics starting with this prefix (default: every topic).
    #[arg(default_value = "")]
    prefix: String,
    /// Exit after this many events (gap reports do not count).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds; a failure (exit 3) when --count events have not arrived.
    #[arg(long, value_parser = crate::positive_seconds)]
    timeout: Option<f64>,
    // Longest wait for the first connection (when --timeout does not ask for less).
    #[command(flatten)]
    connect: crate::ConnectArgs,
    // With a key, events must be sealed with it (others are refused, counted in the summary).
    #[command(flatten)]
    key: crate::mesh_key::KeyArgs,
}

/// The options of `zmesh pub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
ENDPOINT is connected to, not bound: it is where publishers go in the common set-up, a proxy's
--events-in (an XSUB socket) that forwards to every subscriber of the proxy's --events-out:
  zmesh proxy --frontend tcp://127.0.0.1:4242 --backend tcp://127.0.0.1:4243 \\
              --events-in tcp://127.0.0.1:4244 --events-out tcp://127.0.0.1:4245 &
  zmesh sub tcp://127.0.0.1:4245 orders. &
  zmesh pub tcp://127.0.0.1:4244 orders.created '{\"id\": 1}'
With --bind, ENDPOINT is bound instead and subscribers connect to it; stdout then shows
`bound ENDPOINT` with the real port (port 0 picks a free one).

ZeroMQ drops what a publisher sends before a subscriber's subscription has reached it (the
slow-joiner problem). So `zmesh pub` waits until a subscription covering TOPIC has arrived (the
proxy passes its subscribers' subscriptions upstream), then sends the event once and exits 0:
every subscriber present then receives it. When none arrives within --timeout it sends
nothing and exits 3. (Limit: the proxy does not withdraw the subscriptions of subscribers that
disconnected, so after every subscriber of TOPIC has left, the event may go to nobody.)

The event carries no publisher id or sequence number: one event from a process that exits is
no sequence, and a fresh id per run would make subscribers behind the same proxy report a
publisher restart each time.

With a mesh key (--mesh-key-file, or ZMESH_MESH_KEY) the event is sealed with it, as a keyed
publisher's; keyed subscribers refuse unsealed events. A bad key exits 2.")]
pub(crate) struct PubArgs {
    /// Where to publish: a proxy's --events-in (connected to), or with --bind the endpoint to
    /// bind.
    endpoint: Endpoint,
    /// The topic, such as orders.created (subscribers filter on its prefix).
    topic: String,
    /// The payload: one JSON value, sent as msgpack.
    #[arg(value_parser = parse_json)]
    payload: Json,
    /// Bind ENDPOINT and wait for a subscriber to connect, instead of connecting to it.
    #[arg(long)]
    bind: bool,
    /// Longest wait, in seconds, for the connection and for a subscriber of TOPIC.
    #[arg(long, default_value_t = 10.0, value_parser = crate::positive_seconds)]
    timeout: f64,
    // Longest wait for the connection (when --timeout does not ask for less).
    #[command(flatten)]
    connect: crate::ConnectArgs,
    // With a key, the event is sealed with it, as a keyed publisher's.
    #[command(flatten)]
    key: crate::mesh_key::KeyArgs,
}

fn parse_json(text: &str) -> Result<Json, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// `zmesh sub`: prints every delivery until `signal`, `--count` events or `--timeout`.
pub(crate) async fn sub(args: SubArgs, signal: impl Future<Output = ()>) -> Result<(), CliError> {
    let started = Instant::now();
    let deadline = args.timeout.map(|s| started + Duration::from_secs_f64(s));
    let connect = args.timeout.map_or(args.connect.timeout(), |s| {
        Duration::from_secs_f64(s).min(args.connect.timeout())
    });
    let mut config = SubscriberConfig::default().connect_timeout(connect);
    if let Some(key) = args.key.load()? {
        config = config.mesh_key(key);
    }
    let mut subscriber = Subscriber::builder()
        .connect(&args.endpoint)
        .subscribe(&args.prefix)
        .config(config)
        .start::<rmpv::Value>()
        .await
        .map_err(|e| CliError::Other(format!("cannot subscribe: {e}")))?;
    eprintln!(
        "zmesh: subscribed to {:?} at {}",
        args.prefix, args.endpoint
    );
    let mut events = 0u64;
    let done = async {
        while args.count.is_none_or(|n| events < n) {
            let Some(delivery) = subscriber.next().await else {
                break;
            };
            if matches!(delivery, Delivery::Event(_)) {
                events += 1;
            }
            outln!("{}", delivery_json(&delivery));
        }
        Ok::<(), crate::output::OutputError>(())
    };
    let timed_out = tokio::select! {
        written = done => {
            written?;
            false
        }
        () = signal => false,
        () = sleep_until(deadline) => true,
    };
    let stats = subscriber.stats();
    eprintln!(
        "zmesh: {events} events, {} gap reports ({} events missed), {} undecodable, {} refused by the mesh key, {} replays refused",
        stats.gaps, stats.lost, stats.undecodable, stats.unauthenticated, stats.replay_rejected
    );
    match args.count {
        Some(n) if timed_out && events < n => Err(CliError::Other(format!(
            "timed out: {events} of {n} events within {:.1} s",
            started.elapsed().as_secs_f64()
        ))),
        _ => Ok(()),
    }
}

/// Completes at `deadline`, or never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One line of `zmesh sub` output.
fn delivery_json(delivery: &Delivery<rmpv::Value>) -> Json {
    match delivery {
        Delivery::Event(event) => event_json(event),
        Delivery::Gap(gap) => gap_json(gap),
    }
}

fn event_json(event: &Received<rmpv::Value>) -> Json {
    json!({
        "kind": "event",
        "topic": event.topic,
        "payload": json::to_json(&event.payload),
        "publisher": event.publisher.as_deref(),
        "seq": event.seq,
    })
}

fn gap_json(gap: &Gap) -> Json {
    let mut line = json!({
        "kind": "gap",
        "topic": gap.topic,
        "publisher": &*gap.publisher,
        "first": gap.first,
        "last": gap.last,
        "missing": gap.missing(),
    });
    let reason = match &gap.reason {
        GapReason::Missed => json!("missed"),
        GapReason::PublisherRestarted { successor } => {
            line["successor"] = json!(&**successor);
            json!("publisher_restarted")
        }
        // GapReason is non-exhaustive: a future reason still prints, by its debug name.
        other => json!(format!("{other:?}")),
    };
    line["reason"] = reason;
    line
}

/// How long the peer must stay silent before `zmesh pub` closes (longer than a delayed ACK,
/// so a segment Nagle held back has gone out too).
const QUIET_BEFORE_CLOSE: Duration = Duration::from_millis(50);
/// Upper bound on that wait, whatever the peer keeps sending.
const MAX_DRAIN: Duration = Duration::from_secs(1);

/// Reads whatever the peer still sends (subscriptions in flight, such as a subscriber's
/// marker topic that follows its prefixes) until it has been quiet for
/// [`QUIET_BEFORE_CLOSE`]. Closing a TCP socket with unread data makes the kernel reset the
/// connection instead of closing it, and a reset discards what is still in the send buffer:
/// the one event `zmesh pub` exists to deliver. The likely cause of the one lost event CI
/// saw through the proxy under load (`events_pass_through_the_proxy_filtered_by_topic`;
/// not reproduced locally).
async fn drain_until_quiet(socket: &mut XPubSocket) {
    let stop = Instant::now() + MAX_DRAIN;
    loop {
        let until = (Instant::now() + QUIET_BEFORE_CLOSE).min(stop);
        match timeout_at(until, socket.recv()).await {
            Ok(Ok(_)) if Instant::now() < stop => {}
            _ => return,
        }
    }
}

/// `zmesh pub`: connects (or binds), waits for a subscription covering the topic, sends the
/// event once and closes.
pub(crate) async fn publish(args: PubArgs) -> Result<(), CliError> {
    if reserved::is_reserved_topic(&args.topic) {
        return Err(CliError::Other(format!(
            "topic {:?} is reserved (prefix {:?})",
            args.topic,
            reserved::TOPIC_PREFIX
        )));
    }
    let limit = Duration::from_secs_f64(args.timeout);
    let deadline = Instant::now() + limit;
    let key = args.key.load()?;
    let message = event_message(&args.topic, &json::from_json(&args.payload), key.as_ref())?;

    // XPUB rather than PUB: it hands us the subscriptions it receives, which is how we know
    // a subscriber is there before sending.
    let connect_limit = limit.min(args.connect.timeout());
    let mut options = SocketOptions::default();
    options.connect_timeout(connect_limit);
    let mut socket = XPubSocket::with_options(options);
    let mut endpoint = args.endpoint.to_string();
    if args.bind {
        let bound = socket
            .bind(&endpoint)
            .await
            .map_err(|e| CliError::Other(format!("cannot bind {endpoint}: {e}")))?;
        // The real port, for subscribers of a `tcp://…:0` publisher.
        endpoint = bound.to_string();
        outln!("bound {endpoint}");
    } else {
        // The crate retries a refused connection in silence: the same probe as a client's
        // says when nothing listens there.
        let connected = tokio::select! {
            connected = timeout_at(Instant::now() + connect_limit, socket.connect(&endpoint)) => connected,
            _ = zmesh_core::endpoint::refused(&args.endpoint) => {
                return Err(CliError::Other(format!(
                    "cannot connect to {endpoint}: {}",
                    zmesh_core::endpoint::REFUSED
                )));
            }
        };
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(CliError::Other(format!(
                    "cannot connect to {endpoint}: {e}"
                )));
            }
            Err(_) => {
                return Err(CliError::Other(format!(
                    "cannot connect to {endpoint} within {:.1} s",
                    connect_limit.as_secs_f64()
                )));
            }
        }
    }

    let topic = args.topic.as_bytes();
    let subscribed = timeout_at(deadline, async {
        loop {
            match socket.recv().await {
                // [0x01, prefix...] subscribes; the socket has recorded it by now.
                Ok(m) if m.len() == 1 && subscribes_to(m.get(0), topic) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match subscribed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(CliError::Other(format!(
                "connection to {endpoint} failed: {e}"
            )));
        }
        Err(_) => {
            return Err(CliError::Other(format!(
                "no subscriber of {:?} at {endpoint} within {:.1} s; nothing published",
                args.topic, args.timeout
            )));
        }
    }
    // The send completes once the frames are written to the connection.
    socket
        .send(message)
        .await
        .map_err(|e| CliError::Other(format!("cannot publish: {e}")))?;
    drain_until_quiet(&mut socket).await;
    let errors = socket.close().await;
    if !errors.is_empty() {
        tracing::debug!(?errors, "errors while closing the publisher socket");
    }
    eprintln!("zmesh: published {:?} to {endpoint}", args.topic);
    Ok(())
}

/// True for a subscribe message whose prefix covers `topic`.
fn subscribes_to(frame: Option<&Bytes>, topic: &[u8]) -> bool {
    frame.is_some_and(|f| f.first() == Some(&1) && topic.starts_with(&f[1..]))
}

/// The event as zmesh frames it on the wire: `[topic, zerorpc event]`, the event named after
/// the topic with args `[payload]` (docs/PROTOCOL.md), without publisher id or sequence;
/// the event frame sealed when there is a mesh key (the topic frame stays clear for filters).
fn event_message(
    topic: &str,
    payload: &rmpv::Value,
    key: Option<&zmesh_core::MeshKey>,
) -> Result<ZmqMessage, CliError> {
    let mut args = Vec::new();
    rmpv::encode::write_value(&mut args, &rmpv::Value::Array(vec![payload.clone()]))
        .map_err(|e| CliError::Other(format!("cannot encode the payload: {e}")))?;
    let mut event = wire::encode_event(&wire::Header::zmesh(None), topic, &args);
    if let Some(key) = key {
        // As a keyed Publisher seals it: the same code (MeshKey::seal_event).
        event = key.seal_event(&event);
    }
    let mut message = ZmqMessage::from(Bytes::copy_from_slice(topic.as_bytes()));
    message.push_back(event);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscribe_messages_with_a_covering_prefix_match() {
        let frame = |b: &[u8]| Bytes::copy_from_slice(b);
        assert!(subscribes_to(
            Some(&frame(b"\x01orders.")),
            b"orders.created"
        ));
        assert!(subscribes_to(Some(&frame(b"\x01")), b"anything"));
        assert!(!subscribes_to(
            Some(&frame(b"\x01stock.")),
            b"orders.created"
        ));
        assert!(!subscribes_to(
            Some(&frame(b"\x00orders.")),
            b"orders.created"
        ));
        assert!(!subscribes_to(Some(&frame(b"")), b"orders.created"));
        assert!(!subscribes_to(None, b"orders.created"));
    }

    #[test]
    fn the_event_is_two_frames_a_zmesh_subscriber_decodes() {
        let message =
            event_message("orders.created", &rmpv::Value::from(7u64), None).expect("encodes");
        let frames = message.into_vec();
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0][..], b"orders.created");
        let event = wire::decode_event(&frames[1]).expect("a zerorpc event");
        assert_eq!(event.name, "orders.created");
        assert!(event.header.is_zmesh());
        let args: Vec<u64> = rmp_serde::from_slice(&event.args).expect("args");
        assert_eq!(args, [7]);
    }
}
