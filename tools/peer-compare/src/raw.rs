//! The baseline: a raw `zeromq` DEALER sending one frame to a ROUTER that echoes it back,
//! with no envelope, serialization or dispatch.

use bytes::Bytes;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use zmesh_bench::{Figures, InOrder};

use crate::measure;
use crate::{Error, Plan};

/// Binds the shared raw echo ROUTER ([`zmesh_bench::raw::echo`]) on a free loopback port;
/// returns its endpoint and the echo loop.
pub(crate) async fn serve() -> Result<(String, impl Future<Output = ()>), Error> {
    zmesh_bench::raw::echo("tcp://127.0.0.1:0")
        .await
        .map_err(|e| Error::Server(format!("raw ROUTER bind: {e}")))
}

/// Sequential and pipelined passes over one DEALER connection.
pub(crate) async fn measure(endpoint: &str, plan: &Plan) -> Result<(Figures, Figures), Error> {
    let mut dealer = DealerSocket::new();
    measure::within("connecting the raw DEALER", dealer.connect(endpoint))
        .await?
        .map_err(|e| Error::Call(format!("raw DEALER connect: {e}")))?;
    let mut connection = Raw {
        dealer,
        payload: Bytes::from(vec![0x5a; plan.payload]),
    };
    for _ in 0..plan.warmup {
        measure::within("a raw send", connection.send()).await??;
        measure::within("a raw reply", connection.receive()).await??;
    }
    let sequential = measure::in_order(&mut connection, plan.sequential).await?;
    let pipelined = measure::in_order(&mut connection, plan.pipelined).await?;
    Ok((sequential, pipelined))
}

struct Raw {
    dealer: DealerSocket,
    payload: Bytes,
}

impl InOrder for Raw {
    type Error = Error;

    async fn send(&mut self) -> Result<(), Error> {
        // An empty delimiter frame, as REQ would send, then the payload.
        let mut message = ZmqMessage::from(Bytes::new());
        message.push_back(self.payload.clone());
        self.dealer.send(message).await.map_err(io)
    }

    async fn receive(&mut self) -> Result<(), Error> {
        let reply = self.dealer.recv().await.map_err(io)?;
        std::hint::black_box(reply);
        Ok(())
    }
}

fn io(e: zeromq::ZmqError) -> Error {
    Error::Call(format!("raw DEALER: {e}"))
}
