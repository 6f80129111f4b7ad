//! The TCP floor: a blocking `std::net` ping-pong of length-prefixed frames between two
//! processes (`TCP_NODELAY`, a thread blocked in `read` on each side, no runtime, no
//! polling). What any protocol over TCP on this machine cannot beat; every other row's p50
//! is also given as a ratio to it.
//!
//! The client side blocks the measuring runtime's thread in `read`/`write` on purpose (it
//! runs nothing else while it measures), so the harness's async timeouts cannot interrupt
//! a call: the socket's read and write timeouts ([`CALL_LIMIT`]) bound it instead.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use zmesh_bench::{Figures, InOrder};

use crate::measure::{self, CALL_LIMIT};
use crate::{Error, Plan};

/// Binds a free loopback port; returns its address and a thread serving each connection
/// (one thread per connection, echoing every frame back).
pub(crate) fn serve() -> Result<String, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Server(format!("tcp floor listener: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("tcp floor listener: {e}")))?
        .to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                // Ends when the client closes (or a read fails).
                let _ = echo(stream);
            });
        }
    });
    Ok(address)
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut frame = Vec::new();
    loop {
        let mut len = [0; 4];
        stream.read_exact(&mut len)?;
        frame.resize(u32::from_be_bytes(len) as usize, 0);
        stream.read_exact(&mut frame)?;
        stream.write_all(&len)?;
        stream.write_all(&frame)?;
    }
}

/// Sequential and pipelined passes over one connection.
pub(crate) async fn measure(address: &str, plan: &Plan) -> Result<(Figures, Figures), Error> {
    let stream = TcpStream::connect(address).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(CALL_LIMIT)).map_err(io)?;
    stream.set_write_timeout(Some(CALL_LIMIT)).map_err(io)?;
    let len = u32::try_from(plan.payload)
        .map_err(|_| Error::Call("tcp floor: payload over 4 GiB".to_owned()))?;
    let mut request = len.to_be_bytes().to_vec();
    request.extend(std::iter::repeat_n(0x5a, plan.payload));
    let mut connection = Floor {
        stream,
        reply: vec![0; request.len()],
        request,
    };
    for _ in 0..plan.warmup {
        connection.send().await?;
        connection.receive().await?;
    }
    let sequential = measure::in_order(&mut connection, plan.sequential).await?;
    let pipelined = measure::in_order(&mut connection, plan.pipelined).await?;
    Ok((sequential, pipelined))
}

struct Floor {
    stream: TcpStream,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl InOrder for Floor {
    type Error = Error;

    async fn send(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.request).map_err(io)
    }

    async fn receive(&mut self) -> Result<(), Error> {
        self.stream.read_exact(&mut self.reply).map_err(io)?;
        std::hint::black_box(&self.reply);
        Ok(())
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Call(format!("tcp floor: {e}"))
}
