//! NATS request-reply through a `nats-server` (Debian's; `tools/peer-compare/nats.sh start`
//! runs one on loopback), with `async-nats` on both ends: the brokered anchor. Every call is
//! two hops (client -> server -> responder and back), where zmesh's is one; the responder
//! is a child process like every other system's server.

use bytes::Bytes;
use futures::StreamExt;

use zmesh_bench::Figures;

use crate::measure;
use crate::{Error, Plan};

/// The subject the responder answers on.
const SUBJECT: &str = "zmesh-peer-compare.echo";

/// Connects to the server at `url`, or says why not (the run then skips NATS).
pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, Error> {
    measure::within("connecting to nats-server", async_nats::connect(url))
        .await?
        .map_err(|e| Error::Server(format!("nats-server at {url}: {e}")))
}

/// The responder: subscribes to [`SUBJECT`] and answers every request with its payload.
/// Returns its "address" (the server's URL) once the subscription is registered with the
/// server, and the answering loop.
pub(crate) async fn serve(url: &str) -> Result<(String, impl Future<Output = ()>), Error> {
    let client = connect(url).await?;
    let mut requests = client
        .subscribe(SUBJECT)
        .await
        .map_err(|e| Error::Server(format!("nats subscribe: {e}")))?;
    // PING/PONG: the server has the subscription before the parent starts calling.
    measure::within("flushing the subscription", client.flush())
        .await?
        .map_err(|e| Error::Server(format!("nats flush: {e}")))?;
    let answer = async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply
                && let Err(e) = client.publish(reply, request.payload).await
            {
                eprintln!("nats responder: reply not sent: {e}");
            }
        }
    };
    Ok((url.to_owned(), answer))
}

/// Sequential and pipelined passes through one connection (async-nats multiplexes
/// concurrent requests over it).
pub(crate) async fn measure(url: &str, plan: &Plan) -> Result<(Figures, Figures), Error> {
    let client = connect(url).await?;
    let payload = Bytes::from(vec![0x5a; plan.payload]);
    let call = || {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            let reply = client
                .request(SUBJECT, payload)
                .await
                .map_err(|e| Error::Call(format!("nats request: {e}")))?;
            std::hint::black_box(reply);
            Ok(())
        }
    };
    measure::passes(&call, plan).await
}
