//! tarpc: an `Echo` service over tarpc's serde transport on TCP (length-delimited frames,
//! **bincode** serialization, `TCP_NODELAY` on both ends, as the latency comparison needs).

use futures::StreamExt;
use tarpc::client;
use tarpc::context;
use tarpc::serde_transport::Transport;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::net::{TcpListener, TcpStream};

use zmesh_bench::Figures;

use crate::measure;
use crate::{Error, Plan};

/// The echo service, as tarpc defines one.
#[tarpc::service]
pub(crate) trait Echo {
    /// Returns the payload unchanged.
    async fn echo(payload: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, payload: Vec<u8>) -> Vec<u8> {
        payload
    }
}

/// One bincode transport over a TCP connection, frames length-delimited.
fn transport<Item, SinkItem>(
    stream: TcpStream,
) -> Transport<TcpStream, Item, SinkItem, Bincode<Item, SinkItem>>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    tarpc::serde_transport::new(
        Framed::new(stream, LengthDelimitedCodec::new()),
        Bincode::default(),
    )
}

/// Binds a free loopback port; returns its address and the accept loop, which serves each
/// connection's requests concurrently (each on its own task, as tarpc's examples do).
pub(crate) async fn serve() -> Result<(String, impl Future<Output = ()>), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Server(format!("tarpc listener: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("tarpc listener: {e}")))?;
    let accept = async move {
        while let Ok((stream, _)) = listener.accept().await {
            if stream.set_nodelay(true).is_err() {
                continue;
            }
            let channel = BaseChannel::with_defaults(transport(stream));
            tokio::spawn(
                channel
                    .execute(EchoServer.serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    }),
            );
        }
    };
    Ok((address.to_string(), accept))
}

/// Sequential and pipelined passes through one client (one connection).
pub(crate) async fn measure(address: &str, plan: &Plan) -> Result<(Figures, Figures), Error> {
    let stream = measure::within("connecting to tarpc", TcpStream::connect(address))
        .await?
        .map_err(|e| Error::Call(format!("tarpc connect: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::Call(format!("tarpc nodelay: {e}")))?;
    let client = EchoClient::new(client::Config::default(), transport(stream)).spawn();
    let payload = vec![0x5a; plan.payload];
    let call = || {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            let reply = client
                .echo(context::current(), payload)
                .await
                .map_err(|e| Error::Call(format!("tarpc: {e}")))?;
            std::hint::black_box(reply);
            Ok(())
        }
    };
    measure::passes(&call, plan).await
}
