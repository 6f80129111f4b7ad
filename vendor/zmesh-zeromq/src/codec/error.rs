use thiserror::Error;

/// Represents an error when encoding/decoding raw byte buffers and frames
#[non_exhaustive]
#[derive(Error, Debug)]
pub enum CodecError {
    #[error("{0}")]
    Command(&'static str),
    #[error("{0}")]
    Greeting(&'static str),
    #[error("{0}")]
    Mechanism(&'static str),
    #[error("{0}")]
    Decode(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(&'static str),
    /// zmesh patch: a frame header announced more than `SocketOptions::max_message_size`
    /// (the message so far plus this frame); the connection is closed.
    #[error("message of at least {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The message's size with the announced frame (payloads plus frame overhead).
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// zmesh patch: a message had more frames than `SocketOptions::max_frames`; the
    /// connection is closed.
    #[error("message has more than {limit} frames")]
    TooManyFrames {
        /// The limit.
        limit: usize,
    },
}

pub(crate) type CodecResult<T> = Result<T, CodecError>;
