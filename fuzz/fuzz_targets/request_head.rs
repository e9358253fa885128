//! Request heads: arbitrary bytes, read in arbitrary pieces through `HeadScanner::scan`
//! (as `connection.rs` reads them) and then `parse_head`.
//!
//! Input layout: 4 control bytes, then the bytes the client sends.
//!   ctrl[0] & 7   number of extra read boundaries (0..=7)
//!   ctrl[1..4]    seed of the boundaries' positions
//!   ctrl[0] >> 3  max_request_header_size: 0 → 8192, else 8 * that (8..=248)
//!
//! Asserts: no panic; an error is one of 400/413/431/501/505; an accepted head has a method
//! of upper-case tchars, header values without CR, LF, NUL or other controls, never both
//! Content-Length and chunked framing, and framing that agrees with the raw header lines;
//! reading in pieces accepts exactly what one read accepts, with the same result.
#![no_main]

use _core::http::harness::{check_accepted_head, header_list, read_head, rules, seeded_ends, HeadOutcome};
use _core::http::request::{leading_blank_lines, parse_head, BodyFraming, RequestHead};
use _core::http::{is_tchar, Version};
use libfuzzer_sys::fuzz_target;

/// Header names as they appear on the raw lines of an accepted head, lower-cased.
fn raw_names(head: &[u8]) -> Vec<Vec<u8>> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| line.iter().position(|&b| b == b':').map(|c| line[..c].to_ascii_lowercase()))
        .collect()
}

fn check_accepted(raw: &[u8], h: &RequestHead) {
    check_accepted_head(h);
    let names = raw_names(raw);
    let raw_cl = names.iter().any(|n| n == b"content-length");
    let raw_te = names.iter().any(|n| n == b"transfer-encoding");
    assert!(!(raw_cl && raw_te), "accepted both Content-Length and Transfer-Encoding");
    match h.framing {
        BodyFraming::Chunked => assert!(raw_te),
        BodyFraming::Length(_) => assert!(raw_cl && !raw_te),
        BodyFraming::None => assert!(!raw_cl && !raw_te),
    }
    assert!(h.version == Version::Http11 || h.framing != BodyFraming::Chunked);
}

fn check(input: &[u8], outcome: &HeadOutcome) {
    match outcome {
        Some(Ok((used, h))) => {
            assert!(*used <= input.len());
            let start = leading_blank_lines(input);
            check_accepted(&input[start..*used], h);
        }
        Some(Err(e)) => assert!([400, 413, 431, 501, 505].contains(&e.code), "{e}"),
        None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctrl, input) = data.split_at(4);
    let max_header = match ctrl[0] >> 3 {
        0 => 8192,
        m => 8 * m as usize,
    };
    let seed = u32::from_le_bytes([ctrl[1], ctrl[2], ctrl[3], 0x5a]);
    let ends = seeded_ends(input.len(), (ctrl[0] & 7) as usize, seed);

    // parse_head alone, on any bytes.
    match parse_head(input, &rules(max_header)) {
        Ok(h) => {
            // parse_head on its own is lenient about bare LF (the scanner refuses it before
            // parse_head is ever called), so only the parsed-value invariants apply.
            assert!(h.method.bytes().all(|b| is_tchar(b) && !b.is_ascii_lowercase()));
            for (_, v) in h.headers() {
                assert!(v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
            }
            assert!(!(h.framing == BodyFraming::Chunked && h.header(b"CONTENT_LENGTH").is_some()));
        }
        Err(e) => assert!([400, 413, 431, 501, 505].contains(&e.code), "{e}"),
    }

    let whole = read_head(input, &[input.len()], max_header);
    let split = read_head(input, &ends, max_header);
    check(input, &whole);
    check(input, &split);
    match (&whole, &split) {
        (Some(Ok((a, ha))), Some(Ok((b, hb)))) => {
            assert_eq!(a, b);
            assert_eq!((&ha.method, &ha.uri, ha.version, header_list(ha), ha.framing),
                       (&hb.method, &hb.uri, hb.version, header_list(hb), hb.framing));
            assert_eq!((ha.keep_alive, ha.asked_keep_alive, ha.expect_continue),
                       (hb.keep_alive, hb.asked_keep_alive, hb.expect_continue));
        }
        // An error's status may differ: a head over the limit may be noticed before a bad
        // byte in it arrives.
        (Some(Err(_)), Some(Err(_))) | (None, None) => {}
        (a, b) => panic!("one read gave {a:?}, reads ending at {ends:?} gave {b:?}"),
    }
});
