//! The baseline: a raw `zeromq` DEALER sending one frame to a ROUTER that echoes it back,
//! with no envelope, serialization or dispatch.

use crate::Error;

/// Binds the shared raw echo ROUTER ([`zmesh_bench::raw::echo`]) on a free loopback port;
/// returns its endpoint and the echo loop.
pub(crate) async fn serve() -> Result<(String, impl Future<Output = ()>), Error> {
    zmesh_bench::raw::echo("tcp://127.0.0.1:0")
        .await
        .map_err(|e| Error::Server(format!("raw ROUTER bind: {e}")))
}

/// The DEALER side of a raw echo row over either zeromq crate (`$zmq`: the fork,
/// `zeromq`, or upstream's, `zeromq_upstream`), so every row runs the same code: a
/// `measure` function doing the warm-up, then the sequential and the pipelined pass over
/// one connection, each request an empty delimiter frame and a body, as REQ sends.
/// `$body` makes the n-th request's body from the payload (the echo rows send the payload
/// itself; the `node` row a zerorpc request carrying it).
macro_rules! dealer_row {
    ($zmq:ident, $what:literal) => {
        $crate::raw::dealer_row!($zmq, $what, |payload: &bytes::Bytes, _n: u64| payload
            .clone());
    };
    ($zmq:ident, $what:literal, $body:expr) => {
        /// Sequential and pipelined passes over one DEALER connection.
        pub(crate) async fn measure(
            endpoint: &str,
            plan: &$crate::Plan,
        ) -> Result<(zmesh_bench::Figures, zmesh_bench::Figures), $crate::Error> {
            use $zmq::Socket;
            let mut dealer = $zmq::DealerSocket::new();
            $crate::measure::within(
                concat!("connecting the ", $what, " DEALER"),
                dealer.connect(endpoint),
            )
            .await?
            .map_err(io)?;
            let mut connection = Dealer {
                dealer,
                payload: bytes::Bytes::from(vec![0x5a; plan.payload]),
                sent: 0,
            };
            for _ in 0..plan.warmup {
                use zmesh_bench::InOrder;
                $crate::measure::within(concat!("a ", $what, " send"), connection.send()).await??;
                $crate::measure::within(concat!("a ", $what, " reply"), connection.receive())
                    .await??;
            }
            let sequential = $crate::measure::in_order(&mut connection, plan.sequential).await?;
            let pipelined = $crate::measure::in_order(&mut connection, plan.pipelined).await?;
            Ok((sequential, pipelined))
        }

        struct Dealer {
            dealer: $zmq::DealerSocket,
            payload: bytes::Bytes,
            sent: u64,
        }

        impl zmesh_bench::InOrder for Dealer {
            type Error = $crate::Error;

            async fn send(&mut self) -> Result<(), $crate::Error> {
                use $zmq::SocketSend;
                let mut message = $zmq::ZmqMessage::from(bytes::Bytes::new());
                self.sent += 1;
                let body: fn(&bytes::Bytes, u64) -> bytes::Bytes = $body;
                message.push_back(body(&self.payload, self.sent));
                self.dealer.send(message).await.map_err(io)
            }

            async fn receive(&mut self) -> Result<(), $crate::Error> {
                use $zmq::SocketRecv;
                let reply = self.dealer.recv().await.map_err(io)?;
                std::hint::black_box(reply);
                Ok(())
            }
        }

        fn io(e: $zmq::ZmqError) -> $crate::Error {
            $crate::Error::Call(format!(concat!($what, " DEALER: {}"), e))
        }
    };
}
pub(crate) use dealer_row;

dealer_row!(zeromq, "raw");
