//! A Userfault agent's parse of what the consumer sends it (the agent runs
//! in the producer's process; a hostile consumer chooses every byte). The
//! channel truncates a message to the agent's 16-byte buffer. Never panics;
//! only an 8-byte `'A'` message is an ACK (its sequence number at bytes
//! 4..8, as `encode_ack` writes it), only a 16-byte `'C'` message a CONFIG
//! (its interval clamped to 10 µs..=10 s); anything else is ignored.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use memfd_tripwire::__fuzz::{
    AGENT_REQUEST_BUF, AgentRequest, encode_ack, encode_config, parse_agent_request,
};

fuzz_target!(|data: &[u8]| {
    let msg = &data[..data.len().min(AGENT_REQUEST_BUF)];
    match parse_agent_request(msg) {
        Some(AgentRequest::Ack(seq)) => {
            assert_eq!(msg.len(), 8);
            assert_eq!(msg[0], b'A');
            assert_eq!(seq.to_le_bytes(), msg[4..8]);
            let again = encode_ack(seq);
            assert_eq!((again[0], &again[4..]), (msg[0], &msg[4..]));
            assert_eq!(parse_agent_request(&again), Some(AgentRequest::Ack(seq)));
        }
        Some(AgentRequest::Config(interval)) => {
            assert_eq!(msg.len(), 16);
            assert_eq!(msg[0], b'C');
            let ns = u64::from_le_bytes(msg[8..16].try_into().unwrap());
            let want =
                Duration::from_nanos(ns).clamp(Duration::from_micros(10), Duration::from_secs(10));
            assert_eq!(interval, want);
            assert_eq!(
                parse_agent_request(&encode_config(interval)),
                Some(AgentRequest::Config(interval))
            );
        }
        None => assert!(
            !matches!((msg.len(), msg.first()), (8, Some(b'A')) | (16, Some(b'C'))),
            "{msg:?} ignored"
        ),
    }
});
