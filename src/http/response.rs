//! Response heads and framing. The choices (Content-Length or chunked, keep-alive or
//! close, header name casing and order, Server/Via/Date) are Waitress's, so that a
//! client sees the same bytes from either server.

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::SystemTime;

use super::{HttpError, Version};

/// Hop-by-hop headers an application may not set (PEP 3333).
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a response with this status carries a body (not 1xx, 204 or 304).
pub fn status_has_body(status: &str) -> bool {
    !(status.starts_with('1') || status.starts_with("204") || status.starts_with("304"))
}

/// How the body that follows a head is framed and what happens after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub chunked: bool,
    pub close: bool,
    pub content_length: Option<u64>,
    pub has_body: bool,
}

/// What the request said about the connection.
#[derive(Debug, Clone, Copy)]
pub struct RequestSide {
    pub version: Version,
    pub keep_alive: bool,
    pub asked_keep_alive: bool,
}

/// Writes `HTTP/1.x status`, the application's headers (names re-cased as
/// `Word-Word`, sorted by name, same-named ones kept in order) and the ones the server
/// adds, then the blank line.
pub fn build_head(
    out: &mut Vec<u8>,
    req: RequestSide,
    status: &str,
    app_headers: &[(String, String)],
    known_length: Option<u64>,
    ident: &str,
) -> Framing {
    let has_body = status_has_body(status);
    let mut headers: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(app_headers.len() + 4);
    let mut cl_header: Option<&str> = None;
    let mut has_date = false;
    let mut has_server = false;
    for (name, value) in app_headers {
        let name = recase(name);
        match &*name {
            "Content-Length" => {
                if !has_body {
                    continue;
                }
                cl_header = Some(value);
            }
            "Date" => has_date = true,
            "Server" => has_server = true,
            _ => {}
        }
        headers.push((name, value));
    }
    let content_length = known_length.filter(|_| has_body);
    // The length learnt from the body, when the application gave no header for it.
    let length_text = content_length.filter(|_| cl_header.is_none()).map(|n| n.to_string());
    if let Some(text) = &length_text {
        headers.push(("Content-Length".into(), text));
    }
    let has_length = cl_header.is_some() || length_text.is_some();

    let mut close = false;
    let mut chunked = false;
    let mut keep_alive_header = false;
    match req.version {
        Version::Http10 => {
            if req.asked_keep_alive && req.keep_alive && has_length {
                keep_alive_header = true;
            } else {
                close = true;
            }
        }
        Version::Http11 => {
            if !req.keep_alive {
                close = true;
            }
            if !has_length {
                if has_body {
                    chunked = true;
                }
                close = true;
            }
        }
    }
    if keep_alive_header {
        headers.push(("Connection".into(), "Keep-Alive"));
    }
    if chunked {
        headers.push(("Transfer-Encoding".into(), "chunked"));
    }
    if close {
        headers.push(("Connection".into(), "close"));
    }
    let via = if ident.is_empty() { "waitress" } else { ident };
    if has_server {
        headers.push(("Via".into(), via));
    } else if !ident.is_empty() {
        headers.push(("Server".into(), ident));
    }
    let date;
    if !has_date {
        date = http_date();
        headers.push(("Date".into(), &date));
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));

    out.extend_from_slice(req.version.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        push_latin1(out, value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Framing { chunked, close, content_length, has_body }
}

/// Appends a str that is known to hold only code points below 256 as latin-1 bytes.
fn push_latin1(out: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(s.chars().map(|c| c as u32 as u8));
    }
}

/// `content-TYPE` -> `Content-Type`, as Python's str.capitalize() on each dash-part.
/// A name already in that form (the usual case) is returned as it is, without copying.
fn recase(name: &str) -> Cow<'_, str> {
    let mut start = true;
    let already = name.chars().all(|c| {
        let same = if start { c.to_uppercase().eq([c]) } else { c.to_lowercase().eq([c]) };
        start = c == '-';
        same
    });
    if already {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut start = true;
    for c in name.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = c == '-';
    }
    Cow::Owned(out)
}

/// The current time as an IMF-fixdate, formatted at most once a second per thread.
pub fn http_date() -> String {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}

/// A complete error response (head and body) in Waitress's format; always closes.
pub fn error_response(err: &HttpError, version: Version, ident: &str) -> Vec<u8> {
    let tag = if ident.is_empty() { "server" } else { ident };
    let body = format!("{}\r\n\r\n{}\r\n\r\n(generated by {})", err.reason(), err.detail, tag);
    let status = format!("{} {}", err.code, err.reason());
    let headers = vec![("Content-Type".to_string(), "text/plain; charset=utf-8".to_string())];
    let req = RequestSide { version, keep_alive: false, asked_keep_alive: false };
    let mut out = Vec::with_capacity(256 + body.len());
    build_head(&mut out, req, &status, &headers, Some(body.len() as u64), ident);
    out.extend_from_slice(body.as_bytes());
    out
}

/// Frames one piece of a chunked body.
pub fn chunk_header(len: usize) -> Vec<u8> {
    format!("{len:X}\r\n").into_bytes()
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: RequestSide, status: &str, hs: &[(&str, &str)], len: Option<u64>) -> (String, Framing) {
        let hs: Vec<(String, String)> = hs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let mut out = Vec::new();
        let f = build_head(&mut out, req, status, &hs, len, "rswaitress");
        (String::from_utf8(out).unwrap(), f)
    }

    const V11: RequestSide =
        RequestSide { version: Version::Http11, keep_alive: true, asked_keep_alive: false };
    const V10: RequestSide =
        RequestSide { version: Version::Http10, keep_alive: false, asked_keep_alive: false };
    const V10KA: RequestSide =
        RequestSide { version: Version::Http10, keep_alive: true, asked_keep_alive: true };

    #[test]
    fn content_length_keeps_alive_in_11() {
        let (h, f) = head(V11, "200 OK", &[("content-type", "text/plain"), ("Content-Length", "5")], None);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(h.contains("\r\nContent-Type: text/plain\r\n"));
        assert!(h.contains("\r\nServer: rswaitress\r\n"));
        assert!(h.contains("\r\nDate: "));
        assert!(!h.contains("Connection"));
        assert!(h.ends_with("\r\n\r\n"));
        assert_eq!(f, Framing { chunked: false, close: false, content_length: None, has_body: true });
    }

    #[test]
    fn unknown_length_in_11_is_chunked_and_closes() {
        let (h, f) = head(V11, "200 OK", &[], None);
        assert!(h.contains("Transfer-Encoding: chunked\r\n"));
        assert!(h.contains("Connection: close\r\n"));
        assert!(f.chunked && f.close);
    }

    #[test]
    fn known_length_is_added() {
        let (h, f) = head(V11, "200 OK", &[], Some(13));
        assert!(h.contains("Content-Length: 13\r\n"));
        assert!(!f.close && !f.chunked);
    }

    #[test]
    fn http10_rules() {
        let (h, f) = head(V10, "200 OK", &[("Content-Length", "1")], None);
        assert!(h.starts_with("HTTP/1.0 200 OK"));
        assert!(h.contains("Connection: close") && f.close);
        let (h, f) = head(V10KA, "200 OK", &[("Content-Length", "1")], None);
        assert!(h.contains("Connection: Keep-Alive") && !f.close);
        let (_, f) = head(V10KA, "200 OK", &[], None);
        assert!(f.close && !f.chunked);
    }

    #[test]
    fn no_body_statuses() {
        let (h, f) = head(V11, "204 No Content", &[("Content-Length", "0")], None);
        assert!(!h.contains("Content-Length") && !h.contains("Transfer-Encoding"));
        assert!(!f.has_body && f.close);
        let (h, _) = head(V11, "304 Not Modified", &[], Some(10));
        assert!(!h.contains("Content-Length"));
    }

    #[test]
    fn server_header_from_app_becomes_via() {
        let (h, _) = head(V11, "200 OK", &[("server", "app/1"), ("Content-Length", "0")], None);
        assert!(h.contains("Server: app/1\r\n") && h.contains("Via: rswaitress\r\n"));
    }

    #[test]
    fn headers_sorted_stably() {
        let (h, _) = head(
            V11,
            "200 OK",
            &[("X-B", "1"), ("Set-Cookie", "a"), ("X-A", "2"), ("set-cookie", "b"), ("Content-Length", "0")],
            None,
        );
        let a = h.find("Set-Cookie: a").unwrap();
        let b = h.find("Set-Cookie: b").unwrap();
        let xa = h.find("X-A").unwrap();
        let xb = h.find("X-B").unwrap();
        assert!(a < b && b < xa && xa < xb);
    }

    #[test]
    fn recasing() {
        assert_eq!(recase("content-TYPE"), "Content-Type");
        assert_eq!(recase("WWW-Authenticate"), "Www-Authenticate");
        assert_eq!(recase("x"), "X");
        assert!(matches!(recase("Content-Type"), Cow::Borrowed(_)));
        assert!(matches!(recase("Www-Authenticate"), Cow::Borrowed(_)));
    }

    #[test]
    fn error_page() {
        let e = HttpError::new(431, "exceeds max_header of 10");
        let r = String::from_utf8(error_response(&e, Version::Http11, "rswaitress")).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("Request Header Fields Too Large\r\n\r\nexceeds max_header of 10\r\n\r\n(generated by rswaitress)"));
        let body_len = r.split("\r\n\r\n").skip(1).collect::<Vec<_>>().join("\r\n\r\n").len();
        assert!(r.contains(&format!("Content-Length: {body_len}\r\n")));
    }

    #[test]
    fn date_format() {
        let d = http_date();
        assert_eq!(d.len(), 29);
        assert!(d.ends_with(" GMT"));
    }
}
