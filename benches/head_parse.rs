//! Request-head parsing time for ordinary and worst-case heads within the default limit
//! (max_request_header_size = 262,144 bytes), as the reactor does it: scan for the end,
//! parse with httparse, validate, collect headers.
//!
//!     cargo bench --bench head_parse             # every case
//!     cargo bench --bench head_parse -- distinct # the cases whose name says so
//!
//! Prints the median of 31 timed passes per head (each pass parses the head in a loop
//! for at least 20 ms) and the cost per byte. Time is linear in the head's size: a head
//! of 38,000 distinct short names costs about what its bytes cost, not their square.

use std::time::{Duration, Instant};

use _core::http::request::{take_head, HeadRules, HeadScanner};
use _core::http::InBuf;

const LIMIT: usize = 262_144;

fn ordinary() -> Vec<u8> {
    b"GET /index.html?user=42&q=hello HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: session=0123456789abcdef; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\n\r\n".to_vec()
}

/// One request line, then as many lines as fit under the limit, from `line(i)`.
fn filled(line: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    let mut i = 0;
    loop {
        let l = line(i);
        if head.len() + l.len() + 2 >= LIMIT {
            break;
        }
        head.extend_from_slice(&l);
        i += 1;
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn parse_once(head: &[u8], rules: &HeadRules) -> usize {
    let mut input = InBuf::new();
    input.extend(head);
    let mut scanner = HeadScanner::default();
    let h = take_head(&mut scanner, &mut input, rules).expect("valid").expect("complete");
    let n = h.headers().len();
    n
}

fn median_ns(head: &[u8]) -> f64 {
    let rules = HeadRules::new(LIMIT);
    let mut samples = Vec::new();
    for _ in 0..31 {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(parse_once(std::hint::black_box(head), &rules));
            n += 1;
        }
        samples.push(t0.elapsed().as_nanos() as f64 / n as f64);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn main() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ordinary browser head (9 headers)", ordinary()),
        ("repeated name, a:b lines", filled(|_| b"a:b\r\n".to_vec())),
        ("distinct names, <hex>: lines", filled(|i| format!("{i:x}:\r\n").into_bytes())),
        ("distinct names, mixed case", filled(|i| format!("X-{i:X}-a: v\r\n").into_bytes())),
        ("few long lines (8 KiB values)", filled(|i| format!("h{i}: {}\r\n", "v".repeat(8190)).into_bytes())),
    ];
    // `cargo bench --bench head_parse -- WORD` runs the cases whose name contains WORD.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    println!("{:<36} {:>9} {:>8} {:>12} {:>9}", "head", "bytes", "lines", "median", "ns/byte");
    for (name, head) in &cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let ns = median_ns(head);
        let lines = head.iter().filter(|&&b| b == b'\n').count();
        let shown = if ns >= 1e6 { format!("{:.2} ms", ns / 1e6) } else { format!("{:.1} us", ns / 1e3) };
        println!("{name:<36} {:>9} {lines:>8} {shown:>12} {:>9.2}", head.len(), ns / head.len() as f64);
    }
}
