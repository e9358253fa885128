//! Harnesses for the property tests and the fuzz targets: the connection's read loops,
//! driven by an input and the offsets it is cut at, and the invariants every accepted
//! request head keeps. Built for tests and with the `fuzzing` feature only.

use super::body::{BodyDecoder, Spool};
use super::request::{
    parse_content_length, take_head, BodyFraming, HeadRules, HeadScanner, RequestHead, TargetForm,
};
use super::{is_tchar, HttpError, InBuf, Version};

/// Cut points from a seed (a small xorshift): `count` offsets in `0..=len`, as read ends.
pub fn seeded_ends(len: usize, count: usize, mut seed: u32) -> Vec<usize> {
    seed |= 1;
    let cuts: Vec<usize> = (0..count)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize
        })
        .collect();
    read_ends(len, &cuts)
}

/// Turns cut points (any numbers) into sorted, distinct offsets inside `0..=len`, the last
/// one `len`: the ends of the successive reads.
pub fn read_ends(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| if len == 0 { 0 } else { c % (len + 1) }).collect();
    ends.push(len);
    ends.sort_unstable();
    ends.dedup();
    ends
}

/// What reading a head from `input` came to: the parsed head (or its error) with the
/// number of input bytes it took, leading blank lines included; `None` when the input
/// ended first.
pub type HeadOutcome = Option<Result<(usize, RequestHead), HttpError>>;

/// The rules the harnesses parse with: RFC 9112's, except that a missing Host is
/// accepted (so that random heads reach past it).
pub fn rules(max_header: usize) -> HeadRules {
    HeadRules { max_size: max_header, require_host: false }
}

/// Reads one head the way the connection does (through `take_head`), the bytes arriving
/// in reads that end at `ends`.
pub fn read_head(input: &[u8], ends: &[usize], max_header: usize) -> HeadOutcome {
    let mut scanner = HeadScanner::default();
    let mut inbuf = InBuf::new();
    let mut prev = 0;
    let rules = rules(max_header);
    for &end in ends {
        inbuf.extend(&input[prev..end]);
        prev = end;
        match take_head(&mut scanner, &mut inbuf, &rules) {
            Ok(Some(head)) => return Some(Ok((end - inbuf.len(), head))),
            Ok(None) => {}
            Err((e, _)) => return Some(Err(e)),
        }
    }
    None
}

/// A head's headers as owned pairs, for comparisons.
pub fn header_list(h: &RequestHead) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// The invariants of any head `parse_head` accepts.
pub fn check_accepted_head(h: &RequestHead) {
    assert!(!h.method.is_empty());
    assert!(h.method.bytes().all(|b| is_tchar(b) && !b.is_ascii_lowercase()), "{:?}", h.method);
    assert!(!h.uri.is_empty() && h.uri.iter().all(|&b| b > 0x20 && b < 0x7f), "{:?}", h.uri);
    match h.form {
        TargetForm::Origin => assert_eq!(h.uri[0], b'/'),
        TargetForm::Asterisk => assert!(h.uri == b"*" && h.method == "OPTIONS"),
        TargetForm::Authority => assert_eq!(h.method, "CONNECT"),
        TargetForm::Absolute => assert!(h.uri.windows(3).any(|w| w == b"://")),
    }
    if h.method == "CONNECT" {
        assert_eq!(h.form, TargetForm::Authority);
    }
    let hosts = h.headers().filter(|(k, _)| *k == b"HOST").count();
    assert!(hosts <= 1);
    if let Some(host) = h.header(b"HOST") {
        assert!(super::request::valid_host(host), "{host:?}");
    }
    for (k, v) in h.headers() {
        assert!(!k.is_empty());
        assert!(k.iter().all(|&b| is_tchar(b) && b != b'-' && !b.is_ascii_lowercase()), "{k:?}");
        assert!(v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)), "{v:?}");
        // (Each line's value is stripped, but a repeat with an empty value still adds
        // ", ", as Waitress's joining does: "close, " is a possible value.)
        assert_ne!(k, b"TRANSFER_ENCODING");
    }
    let cl = h.header(b"CONTENT_LENGTH");
    match h.framing {
        BodyFraming::Chunked => {
            assert_eq!(h.version, Version::Http11);
            assert!(cl.is_none(), "chunked framing with a Content-Length");
        }
        BodyFraming::Length(n) => assert_eq!(parse_content_length(cl.unwrap()).unwrap(), n),
        BodyFraming::None => assert!(cl.is_none()),
    }
    if h.version == Version::Http10 {
        assert!(!h.expect_continue);
    }
}

/// Outcome of decoding a body: the decoded bytes and the raw bytes consumed, `None` when
/// the input ended before the body did.
pub type BodyOutcome = Result<(Vec<u8>, Option<usize>), u16>;

/// Feeds `input` to `dec` in reads ending at `ends`, as the connection does (whatever a
/// read leaves unconsumed is offered again with the next one), checking the `feed`
/// contract on the way: never more consumed than offered, everything consumed unless the
/// body ended, and nothing consumed once it has.
pub fn feed_body(
    mut dec: BodyDecoder,
    input: &[u8],
    ends: &[usize],
    spool_limit: usize,
    max_body: u64,
) -> BodyOutcome {
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
            // Done is final: more bytes, or none, are left alone.
            for rest in [&input[pos..], &b""[..], &b"0\r\n\r\n"[..]] {
                let again = dec.feed(rest, &mut spool, max_body).map_err(|e| e.code)?;
                assert_eq!(again.consumed, 0);
                assert!(again.done);
            }
            break;
        }
        assert_eq!(p.consumed, offered, "stopped early without finishing");
    }
    let mut out = vec![0u8; spool.len() as usize];
    assert_eq!(spool.read_at(0, &mut out).unwrap(), out.len());
    Ok((out, done_at))
}
