//! Chunked request bodies: arbitrary bytes fed in arbitrary pieces to
//! `BodyDecoder::chunked()` with a small `max_body`.
//!
//! Input layout: 4 control bytes, then the raw body bytes.
//!   ctrl[0] & 15  number of extra read boundaries (0..=15)
//!   ctrl[0] >> 4  max_body: 15 → unlimited, else 16 * ctrl[1] >> (that) (small)
//!   ctrl[2..4]    seed of the boundaries' positions
//!
//! Asserts: no panic; errors are 400/413/431; a call never consumes more than it was
//! offered, consumes everything it was offered unless the body ended, and consumes nothing
//! once done; the result (decoded bytes and where the body ended, or the error status) is
//! the same for one read and for the pieces; the body is never longer than max_body.
#![no_main]

use _core::http::body::BodyDecoder;
use _core::http::harness::{feed_body, seeded_ends, BodyOutcome};
use libfuzzer_sys::fuzz_target;

fn feed(input: &[u8], ends: &[usize], spool_limit: usize, max_body: u64) -> BodyOutcome {
    let r = feed_body(BodyDecoder::chunked(), input, ends, spool_limit, max_body);
    if let Ok((body, _)) = &r {
        assert!(body.len() as u64 <= max_body, "body of {} past max_body {max_body}", body.len());
    }
    r
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctrl, input) = data.split_at(4);
    let max_body = match ctrl[0] >> 4 {
        15 => u64::MAX,
        s => (16 * ctrl[1] as u64) >> s,
    };
    let seed = u32::from_le_bytes([ctrl[2], ctrl[3], ctrl[0], 0xa5]);
    let ends = seeded_ends(input.len(), (ctrl[0] & 15) as usize, seed);

    let whole = feed(input, &[input.len()], 1 << 20, max_body);
    let split = feed(input, &ends, 64, max_body);
    if let Err(code) = whole {
        assert!([400, 413, 431].contains(&code), "status {code}");
    }
    if let Ok((_, Some(used))) = &whole {
        assert!(*used <= input.len());
    }
    assert_eq!(whole, split, "reads ending at {ends:?}");
});
