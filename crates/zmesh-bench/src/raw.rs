//! The raw `zeromq` baseline every bench compares zmesh with: a ROUTER that answers each
//! message with a function of it (the echo sends it back unchanged), with no envelope,
//! serialization or dispatch. One implementation, so every ratio has the same denominator.

use std::future::Future;

use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqError, ZmqMessage};

/// Binds a ROUTER on `bind` and returns its endpoint and the loop that sends every message
/// back unchanged (`[identity, ..frames]`). The loop ends when a receive or send fails.
pub async fn echo(bind: &str) -> Result<(String, impl Future<Output = ()>), ZmqError> {
    router(bind, "raw echo", Some).await
}

/// Binds a ROUTER on `bind` and returns its endpoint and the loop that sends
/// `answer(message)` back for every message (nothing when it is `None`, reported on stderr
/// under `name`). The loop ends when a receive fails; a failed send is reported and skipped.
pub async fn router(
    bind: &str,
    name: &'static str,
    answer: fn(ZmqMessage) -> Option<ZmqMessage>,
) -> Result<(String, impl Future<Output = ()>), ZmqError> {
    let mut router = RouterSocket::new();
    let endpoint = router.bind(bind).await?.to_string();
    let serve = async move {
        loop {
            let message = match router.recv().await {
                Ok(message) => message,
                Err(e) => {
                    eprintln!("{name}: recv failed, stopping: {e}");
                    break;
                }
            };
            let Some(reply) = answer(message) else {
                eprintln!("{name}: request dropped (no answer)");
                continue;
            };
            if let Err(e) = router.send(reply).await {
                eprintln!("{name}: reply not sent: {e}");
            }
        }
    };
    Ok((endpoint, serve))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use zeromq::DealerSocket;

    use super::*;

    #[tokio::test]
    async fn the_echo_sends_each_message_back_unchanged() {
        let (endpoint, serve) = echo("tcp://127.0.0.1:0").await.expect("binds");
        let server = tokio::spawn(serve);
        let mut dealer = DealerSocket::new();
        let limit = Duration::from_secs(10);
        tokio::time::timeout(limit, dealer.connect(&endpoint))
            .await
            .expect("connects in time")
            .expect("connects");
        let mut message = ZmqMessage::from(Bytes::new());
        message.push_back(Bytes::from_static(b"payload"));
        tokio::time::timeout(limit, dealer.send(message.clone()))
            .await
            .expect("sends in time")
            .expect("sends");
        let back = tokio::time::timeout(limit, dealer.recv())
            .await
            .expect("answers in time")
            .expect("receives");
        assert_eq!(back.into_vec(), message.into_vec());
        server.abort();
    }
}
