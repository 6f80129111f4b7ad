//! tonic: a unary gRPC `Echo` method over HTTP/2 (h2c on loopback, `TCP_NODELAY`, tonic's
//! defaults otherwise).
//!
//! The message and the service glue are written by hand, as `tonic-build` would generate
//! them from `echo.proto` below, so the build needs no `protoc` and no build script:
//!
//! ```proto
//! syntax = "proto3";
//! package zmesh.bench;
//! message EchoMessage { bytes payload = 1; }
//! service Echo { rpc Echo(EchoMessage) returns (EchoMessage); }
//! ```

use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_prost::ProstCodec;

use zmesh_bench::Figures;

use crate::measure;
use crate::{Error, Plan};

/// The service's gRPC name.
const SERVICE: &str = "zmesh.bench.Echo";
/// The method's HTTP/2 path.
const ECHO_PATH: &str = "/zmesh.bench.Echo/Echo";

/// `message EchoMessage { bytes payload = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoMessage {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) payload: Bytes,
}

/// The server side of `service Echo`: routes the one method path, answers others
/// `UNIMPLEMENTED` (what generated servers do).
#[derive(Debug, Clone, Copy)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

/// The handler of `rpc Echo`.
struct EchoMethod;

impl UnaryService<EchoMessage> for EchoMethod {
    type Response = EchoMessage;
    type Future = BoxFuture<tonic::Response<EchoMessage>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<EchoMessage>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == ECHO_PATH {
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<EchoMessage, EchoMessage>::default());
                Ok(grpc.unary(EchoMethod, request).await)
            })
        } else {
            Box::pin(async move { Ok(tonic::Status::unimplemented("no such method").into_http()) })
        }
    }
}

/// Binds a free loopback port; returns its address and the server future.
pub(crate) async fn serve() -> Result<(String, impl Future<Output = ()>), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Server(format!("tonic listener: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("tonic listener: {e}")))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = async move {
        if let Err(e) = Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("tonic server stopped: {e}");
        }
    };
    Ok((address.to_string(), server))
}

/// Sequential and pipelined passes through one channel (one HTTP/2 connection; pipelined
/// calls are concurrent streams on it).
pub(crate) async fn measure(address: &str, plan: &Plan) -> Result<(Figures, Figures), Error> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Error::Call(format!("tonic endpoint: {e}")))?
        .tcp_nodelay(true);
    let channel = measure::within("connecting to tonic", endpoint.connect())
        .await?
        .map_err(|e| Error::Call(format!("tonic connect: {e}")))?;
    let grpc = tonic::client::Grpc::new(channel);
    let payload = Bytes::from(vec![0x5a; plan.payload]);
    let call = || {
        // A clone per call, as with a generated client: the channel multiplexes them.
        let mut grpc: tonic::client::Grpc<Channel> = grpc.clone();
        let message = EchoMessage {
            payload: payload.clone(),
        };
        async move {
            grpc.ready()
                .await
                .map_err(|e| Error::Call(format!("tonic channel: {e}")))?;
            let reply: tonic::Response<EchoMessage> = grpc
                .unary(
                    tonic::Request::new(message),
                    PathAndQuery::from_static(ECHO_PATH),
                    ProstCodec::<EchoMessage, EchoMessage>::default(),
                )
                .await
                .map_err(|e| Error::Call(format!("tonic: {e}")))?;
            std::hint::black_box(reply);
            Ok(())
        }
    };
    measure::passes(&call, plan).await
}
