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

use _core::http::body::{BodyDecoder, Spool};
use libfuzzer_sys::fuzz_target;

type Outcome = Result<(Vec<u8>, Option<usize>), u16>;

fn feed(input: &[u8], ends: &[usize], spool_limit: usize, max_body: u64) -> Outcome {
    let mut dec = BodyDecoder::chunked();
    let mut spool = Spool::new(spool_limit);
    let mut pos = 0;
    let mut done_at = None;
    for &end in ends {
        let offered = end - pos;
        let p = dec.feed(&input[pos..end], &mut spool, max_body).map_err(|e| e.code)?;
        assert!(p.consumed <= offered, "consumed {} of {offered}", p.consumed);
        pos += p.consumed;
        if p.done {
            done_at = Some(pos);
            for rest in [&input[pos..], &b""[..], &b"0\r\n\r\n"[..]] {
                let again = dec.feed(rest, &mut spool, max_body).map_err(|e| e.code)?;
                assert_eq!((again.consumed, again.done), (0, true), "fed after done");
            }
            break;
        }
        assert_eq!(p.consumed, offered, "stopped early without finishing");
    }
    assert!(spool.len() <= max_body, "body of {} past max_body {max_body}", spool.len());
    let mut out = vec![0u8; spool.len() as usize];
    assert_eq!(spool.read_at(0, &mut out).unwrap(), out.len());
    Ok((out, done_at))
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
    let mut seed = u32::from_le_bytes([ctrl[2], ctrl[3], ctrl[0], 0xa5]) | 1;
    let mut ends: Vec<usize> = (0..ctrl[0] & 15)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize % (input.len() + 1)
        })
        .collect();
    ends.push(input.len());
    ends.sort_unstable();
    ends.dedup();

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
