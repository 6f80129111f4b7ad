//! zmesh patch: the decoder's message size and frame count limits, fed bytes directly.

use super::*;
use crate::limits::FRAME_OVERHEAD;

/// A decoder past the greeting, with the given limits.
fn codec(max_message_size: usize, max_frames: usize) -> ZmqCodec {
    let mut options = SocketOptions::default();
    options.max_message_size(max_message_size);
    options.max_frames(max_frames);
    let mut codec = ZmqCodec::with_options(&options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    codec
}

fn long_header(more: bool, len: u64) -> Vec<u8> {
    let mut header = vec![0b0000_0010 | u8::from(more)];
    header.extend_from_slice(&len.to_be_bytes());
    header
}

fn message(decoded: Option<Message>) -> ZmqMessage {
    match decoded {
        Some(Message::Message(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn a_long_header_announcing_too_much_fails_before_any_body_byte() {
    let mut codec = codec(1024 * 1024, 16);
    // 2^40 announced, nothing of the body sent: the header alone fails, nothing reserved.
    let mut input = BytesMut::from(long_header(false, 1 << 40).as_slice());
    match codec.decode(&mut input) {
        Err(CodecError::MessageTooLarge { size, limit }) => {
            assert_eq!(size, (1 << 40) + FRAME_OVERHEAD as u64);
            assert_eq!(limit, 1024 * 1024);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(input.capacity() < 64 * 1024, "{}", input.capacity());
}

#[test]
fn u64_max_is_too_large_not_an_overflow() {
    let mut codec = codec(usize::MAX - 1, 16);
    let mut input = BytesMut::from(long_header(false, u64::MAX).as_slice());
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::MessageTooLarge { .. })
    ));
}

#[test]
fn the_limit_counts_every_frame_of_a_message_with_overhead() {
    let limit = 3 * FRAME_OVERHEAD + 100;
    // Two frames of 50 and one empty: 100 + 3 overheads, exactly the limit.
    let mut exact = codec(limit, 16);
    let mut input = BytesMut::new();
    input.extend_from_slice(&[1, 50]);
    input.extend_from_slice(&[b'a'; 50]);
    input.extend_from_slice(&[1, 50]);
    input.extend_from_slice(&[b'b'; 50]);
    input.extend_from_slice(&[0, 0]);
    let decoded = message(exact.decode(&mut input).expect("at the limit"));
    assert_eq!(decoded.len(), 3);

    // One byte more in the last frame: its header fails.
    let mut over = codec(limit, 16);
    let mut input = BytesMut::new();
    input.extend_from_slice(&[1, 50]);
    input.extend_from_slice(&[b'a'; 50]);
    input.extend_from_slice(&[1, 50]);
    input.extend_from_slice(&[b'b'; 50]);
    input.extend_from_slice(&[0, 1, b'c']);
    assert!(matches!(
        over.decode(&mut input),
        Err(CodecError::MessageTooLarge { size, limit: l }) if size == limit as u64 + 1 && l == limit
    ));
}

#[test]
fn the_size_starts_again_with_each_message() {
    let mut codec = codec(FRAME_OVERHEAD + 10, 16);
    for round in 0..100u8 {
        let mut input = BytesMut::from(&[0, 10][..]);
        input.extend_from_slice(&[round; 10]);
        let decoded = message(codec.decode(&mut input).expect("each message fits"));
        assert_eq!(decoded.get(0).map(|f| f[0]), Some(round));
    }
}

#[test]
fn one_frame_too_many_fails_at_its_header() {
    let mut codec = codec(1024 * 1024, 4);
    // Four empty frames with MORE: fine so far, nothing decoded yet.
    let mut input = BytesMut::from([1u8, 0].repeat(4).as_slice());
    assert!(codec.decode(&mut input).expect("four frames").is_none());
    // The fifth frame's header (2 bytes, empty) is one too many.
    input.extend_from_slice(&[1, 0]);
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::TooManyFrames { limit: 4 })
    ));
}

#[test]
fn exactly_max_frames_decode_and_the_count_starts_again() {
    let mut codec = codec(1024 * 1024, 4);
    for _ in 0..3 {
        let mut input = BytesMut::from([1u8, 0].repeat(3).as_slice());
        input.extend_from_slice(&[0, 0]);
        assert_eq!(
            message(codec.decode(&mut input).expect("4 frames")).len(),
            4
        );
    }
}

#[test]
fn a_flood_of_empty_more_frames_is_cut_at_the_frame_limit() {
    // The amplification attack: 2-byte empty frames with MORE, never ending. The decoder
    // fails after DEFAULT_MAX_FRAMES frames having buffered only their handles.
    let mut codec = ZmqCodec::new();
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from([1u8, 0].repeat(1_000_000).as_slice());
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::TooManyFrames { limit }) if limit == crate::limits::DEFAULT_MAX_FRAMES
    ));
    let buffered = codec.buffered_message.as_ref().map_or(0, ZmqMessage::len);
    assert_eq!(buffered, crate::limits::DEFAULT_MAX_FRAMES);
}

#[test]
fn a_command_frame_is_held_to_the_size_limit() {
    let mut codec = codec(1024, 16);
    // A long command frame (flags: command + long) announcing 1 MiB.
    let mut input = BytesMut::from(&[0b0000_0110][..]);
    input.extend_from_slice(&(1u64 << 20).to_be_bytes());
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::MessageTooLarge { .. })
    ));
}

#[test]
fn the_default_limits_are_finite() {
    let options = SocketOptions::default();
    assert_eq!(options.max_message_size, 64 * 1024 * 1024);
    assert_eq!(options.max_frames, 1024);
    assert_eq!(
        options.handshake_timeout,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(options.send_queue_bytes, 16 * 1024 * 1024);
}
