//! Request heads: finding where a head ends, parsing it with httparse, and the checks
//! httparse leaves to the server (RFC 9112 framing rules, Waitress's header conventions).

use super::{is_tchar, HttpError, Version};

/// Header lines parsed into a stack array; a head with more is parsed again into one
/// sized from its length, so the only limit is max_request_header_size (as in Waitress).
const STACK_HEADERS: usize = 64;

/// Where the scan for the end of a head stands; kept between reads so a head that arrives
/// a byte at a time is scanned once, not once per byte.
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    pos: usize,
}

#[derive(Debug)]
pub enum Scan {
    /// The head ends at this offset (just past the blank line).
    Complete(usize),
    /// More bytes are needed.
    Partial,
}

impl HeadScanner {
    /// Nothing of the current head has been scanned yet.
    pub fn is_fresh(&self) -> bool {
        self.pos == 0
    }

    /// Scans `buf` (which starts at the head, leading blank lines already skipped) for the
    /// CRLF CRLF that ends it. A line feed not preceded by a carriage return, or a carriage
    /// return followed by anything but a line feed, is refused at once: a lenient reading of
    /// line ends is what request smuggling feeds on.
    pub fn scan(&mut self, buf: &[u8], max_size: usize) -> Result<Scan, HttpError> {
        let mut i = self.pos;
        while i < buf.len() {
            match buf[i] {
                b'\n' => {
                    if i == 0 || buf[i - 1] != b'\r' {
                        return Err(HttpError::bad_request("Bare LF found in HTTP message"));
                    }
                    if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                        if i + 1 >= max_size {
                            return Err(too_large(max_size));
                        }
                        self.pos = 0;
                        return Ok(Scan::Complete(i + 1));
                    }
                }
                b'\r' => {
                    if i + 1 < buf.len() && buf[i + 1] != b'\n' {
                        return Err(HttpError::bad_request("Bare CR found in HTTP message"));
                    }
                }
                _ => {}
            }
            i += 1;
        }
        // Leave a trailing CR unexamined until the byte after it arrives.
        self.pos = if buf.last() == Some(&b'\r') { buf.len() - 1 } else { buf.len() };
        if buf.len() >= max_size {
            return Err(too_large(max_size));
        }
        Ok(Scan::Partial)
    }
}

fn too_large(max: usize) -> HttpError {
    HttpError::new(431, format!("exceeds max_header of {max}"))
}

/// Takes one request head off the front of `inbuf`, as bytes arrive: blank lines before
/// a request are dropped, the head is scanned from where the last call stopped, and a
/// complete head is parsed and removed from the buffer. `Ok(None)`: more bytes needed.
/// An error comes with the HTTP version its answer should use.
pub fn take_head(
    scanner: &mut HeadScanner,
    inbuf: &mut Vec<u8>,
    max_size: usize,
) -> Result<Option<RequestHead>, (HttpError, Version)> {
    if scanner.is_fresh() {
        let skip = leading_blank_lines(inbuf);
        if skip > 0 {
            inbuf.drain(..skip);
        }
    }
    if inbuf.is_empty() {
        return Ok(None);
    }
    let end = match scanner.scan(inbuf, max_size) {
        Ok(Scan::Complete(end)) => end,
        Ok(Scan::Partial) => return Ok(None),
        Err(e) => return Err((e, Version::Http10)),
    };
    let head = parse_head(&inbuf[..end]).map_err(|e| (e, claimed_version(&inbuf[..end])))?;
    inbuf.drain(..end);
    Ok(Some(head))
}

/// Number of leading CRLF pairs (or stray CRLFs between pipelined requests) to skip.
pub fn leading_blank_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    while i + 1 < buf.len() && buf[i] == b'\r' && buf[i + 1] == b'\n' {
        i += 2;
    }
    i
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed and validated request head. Header names are kept in the CGI form Waitress
/// uses (upper case, `-` turned into `_`), values as the raw bytes with surrounding
/// whitespace stripped; repeated headers are joined with ", ".
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub uri: Vec<u8>,
    pub version: Version,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub framing: BodyFraming,
    /// The client asked to keep the connection open (HTTP/1.1 default, 1.0 keep-alive).
    pub keep_alive: bool,
    /// The client sent `Connection: keep-alive` (relevant to HTTP/1.0 responses).
    pub asked_keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn header(&self, cgi_name: &[u8]) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == cgi_name).map(|(_, v)| v.as_slice())
    }
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses one complete head (`buf` ends with CRLF CRLF).
pub fn parse_head(buf: &[u8]) -> Result<RequestHead, HttpError> {
    let mut raw = [httparse::EMPTY_HEADER; STACK_HEADERS];
    match parse_into(buf, &mut raw) {
        Err(None) => {
            // Every header line takes at least three bytes ("a:" and its line end).
            let mut many = vec![httparse::EMPTY_HEADER; buf.len() / 3 + 1];
            parse_into(buf, &mut many).map_err(|e| {
                e.unwrap_or_else(|| HttpError::bad_request("HTTP message header invalid"))
            })
        }
        other => other.map_err(Option::unwrap),
    }
}

/// The version a refused head asked for, as far as its start line tells: error answers
/// use it, as Waitress does once it has read the start line.
pub fn claimed_version(buf: &[u8]) -> Version {
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len());
    if buf[..line_end].ends_with(b" HTTP/1.1") {
        Version::Http11
    } else {
        Version::Http10
    }
}

/// Parses with the given header array; `Err(None)` means the array was too small.
fn parse_into<'h, 'b>(buf: &'b [u8], raw: &'h mut [httparse::Header<'b>])
    -> Result<RequestHead, Option<HttpError>>
{
    let mut req = httparse::Request::new(raw);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Some(HttpError::bad_request("HTTP message header invalid")))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(None),
        Err(httparse::Error::Version) => return Err(Some(version_error(buf))),
        Err(e) => return Err(Some(HttpError::bad_request(describe(e)))),
    }
    build(req).map_err(Some)
}

fn build(req: httparse::Request<'_, '_>) -> Result<RequestHead, HttpError> {
    let method = req.method.unwrap_or_default();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(HttpError::bad_request(format!("Malformed HTTP method \"{method}\"")));
    }
    let uri = req.path.unwrap_or_default().as_bytes().to_vec();
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };

    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        if let Some(&b) = value.iter().find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::bad_request(format!(
                "Invalid character 0x{b:02x} in header \"{}\"",
                h.name
            )));
        }
        // A name with an underscore would collide with the dash form once both become
        // CGI names (X_Forwarded vs X-Forwarded); such headers are dropped, as Waitress does.
        if name.contains(&b'_') {
            continue;
        }
        let cgi: Vec<u8> =
            name.iter().map(|&b| if b == b'-' { b'_' } else { b.to_ascii_uppercase() }).collect();
        if let Some((_, existing)) = headers.iter_mut().find(|(k, _)| *k == cgi) {
            existing.extend_from_slice(b", ");
            existing.extend_from_slice(value);
        } else {
            headers.push((cgi, value.to_vec()));
        }
    }

    let find = |n: &[u8]| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_slice());
    let connection = find(b"CONNECTION").unwrap_or(b"");
    let asked_close = has_token(connection, b"close");
    let asked_keep_alive = has_token(connection, b"keep-alive");
    let keep_alive = match version {
        Version::Http10 => asked_keep_alive && !asked_close,
        Version::Http11 => !asked_close,
    };
    let expect_continue = version == Version::Http11
        && find(b"EXPECT").map_or(false, |v| v.eq_ignore_ascii_case(b"100-continue"));

    let te = find(b"TRANSFER_ENCODING");
    let cl = find(b"CONTENT_LENGTH");
    let framing = match (te, cl) {
        (Some(_), Some(_)) => {
            return Err(HttpError::bad_request(
                "Content-Length and Transfer-Encoding are mutually exclusive",
            ))
        }
        (Some(_), None) if version == Version::Http10 => {
            return Err(HttpError::bad_request("Transfer-Encoding is not allowed in HTTP/1.0"))
        }
        (Some(te), None) => transfer_coding(te)?,
        (None, Some(cl)) => BodyFraming::Length(parse_content_length(cl)?),
        (None, None) => BodyFraming::None,
    };
    // The body is handed to the application de-chunked, so the header no longer applies.
    headers.retain(|(k, _)| k != b"TRANSFER_ENCODING");

    Ok(RequestHead {
        method: method.to_string(),
        uri,
        version,
        headers,
        framing,
        keep_alive,
        asked_keep_alive,
        expect_continue,
    })
}

fn version_error(buf: &[u8]) -> HttpError {
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len());
    let line = &buf[..line_end];
    // 505 only for a well-formed start line (three parts, single spaces) naming a
    // version this server does not speak; anything else is a malformed line.
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let v = if parts.len() == 3 && parts.iter().all(|p| !p.is_empty()) { parts[2] } else { b"" };
    if v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.'
        && v[7].is_ascii_digit()
    {
        HttpError::new(505, format!("{} is not supported", String::from_utf8_lossy(v)))
    } else {
        HttpError::bad_request("Start line is invalid")
    }
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "Invalid header name",
        httparse::Error::HeaderValue => "Invalid header value",
        httparse::Error::NewLine => "Malformed line ending",
        httparse::Error::Status | httparse::Error::Token | httparse::Error::Version => {
            "Start line is invalid"
        }
        httparse::Error::TooManyHeaders => "Too many headers",
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Only `chunked`, once and last, is a transfer coding this server decodes: anything else
/// is 501 (as Waitress answers), and an empty or malformed list is 400.
fn transfer_coding(te: &[u8]) -> Result<BodyFraming, HttpError> {
    let codings: Vec<&[u8]> =
        te.split(|&b| b == b',').map(trim_ows).filter(|c| !c.is_empty()).collect();
    if codings.is_empty() {
        return Err(HttpError::bad_request("Transfer-Encoding is empty"));
    }
    for c in &codings {
        if !c.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::bad_request("Transfer-Encoding is invalid"));
        }
        if !c.eq_ignore_ascii_case(b"chunked") {
            return Err(HttpError::new(501, "Transfer-Encoding requested is not supported."));
        }
    }
    if codings.len() > 1 {
        return Err(HttpError::bad_request("chunked is applied more than once"));
    }
    Ok(BodyFraming::Chunked)
}

/// Content-Length is 1*DIGIT and nothing else: no sign, no spaces, no list (a repeated
/// header was joined with ", " and so fails here too).
pub fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::bad_request("Content-Length is invalid"));
    }
    let mut n: u64 = 0;
    for &b in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| HttpError::bad_request("Content-Length is invalid"))?;
    }
    Ok(n)
}

/// The parts of a request target that become SCRIPT_NAME/PATH_INFO and QUERY_STRING.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub path: &'a [u8],
    pub query: &'a [u8],
}

/// Splits a request target as Waitress does: an absolute-form target loses its scheme and
/// authority; the fragment is dropped; a target starting with `//` is all path.
pub fn split_target(uri: &[u8]) -> Target<'_> {
    let mut rest = uri;
    if let Some(hash) = rest.iter().position(|&b| b == b'#') {
        rest = &rest[..hash];
    }
    let (mut path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], &rest[q + 1..]),
        None => (rest, &b""[..]),
    };
    if !path.starts_with(b"/") {
        if let Some(sep) = find_sub(path, b"://") {
            let scheme = &path[..sep];
            if !scheme.is_empty()
                && scheme[0].is_ascii_alphabetic()
                && scheme.iter().all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            {
                let after = &path[sep + 3..];
                path = match after.iter().position(|&b| b == b'/') {
                    Some(slash) => &after[slash..],
                    None => b"",
                };
            }
        }
    }
    Target { path, query }
}

fn find_sub(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Percent-decodes a path. Invalid escapes are kept literally, as urllib does.
pub fn percent_decode(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<RequestHead, HttpError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn scanner_finds_end_across_reads() {
        let mut sc = HeadScanner::default();
        let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        for cut in 1..full.len() {
            let mut sc2 = HeadScanner::default();
            let r = sc2.scan(&full[..cut], 1000).unwrap();
            let done = matches!(r, Scan::Complete(_));
            if done {
                assert!(cut >= 27);
                continue;
            }
            match sc2.scan(full, 1000).unwrap() {
                Scan::Complete(n) => assert_eq!(n, 27),
                Scan::Partial => panic!("should complete"),
            }
        }
        assert!(matches!(sc.scan(full, 1000).unwrap(), Scan::Complete(27)));
    }

    #[test]
    fn scanner_rejects_bare_lf_and_cr() {
        let mut sc = HeadScanner::default();
        assert_eq!(sc.scan(b"GET / HTTP/1.1\nHost: x\r\n\r\n", 1000).unwrap_err().code, 400);
        let mut sc = HeadScanner::default();
        assert_eq!(sc.scan(b"GET / HTTP/1.1\rHost: x\r\n\r\n", 1000).unwrap_err().code, 400);
    }

    #[test]
    fn scanner_enforces_max_size() {
        let mut sc = HeadScanner::default();
        let e = sc.scan(&[b'a'; 100], 100).unwrap_err();
        assert_eq!(e.code, 431);
        let mut sc = HeadScanner::default();
        assert!(matches!(sc.scan(&[b'a'; 99], 100).unwrap(), Scan::Partial));
    }

    #[test]
    fn parses_basic_head() {
        let h = head("GET /a%20b?x=1 HTTP/1.1\r\nHost: example\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.uri, b"/a%20b?x=1");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.header(b"X_A"), Some(&b"1, 2"[..]));
        assert_eq!(h.header(b"HOST"), Some(&b"example"[..]));
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::None);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn underscore_headers_are_dropped() {
        let h = head("GET / HTTP/1.1\r\nX_Auth: evil\r\nX-Auth: good\r\n\r\n").unwrap();
        assert_eq!(h.header(b"X_AUTH"), Some(&b"good"[..]));
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap().framing,
                   BodyFraming::Length(12));
        for bad in ["+12", "-1", "1 2", "0x10", "", "12, 12", "99999999999999999999999"] {
            let r = head(&format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n"));
            assert_eq!(r.unwrap_err().code, 400, "{bad:?}");
        }
        let dup = head("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(dup.unwrap_err().code, 400);
    }

    #[test]
    fn transfer_encoding_rules() {
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.header(b"TRANSFER_ENCODING").is_none());
        assert_eq!(head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap_err().code, 501);
        assert_eq!(head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n")
            .unwrap_err().code, 501);
        assert_eq!(head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")
            .unwrap_err().code, 400);
        assert_eq!(head("POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n")
            .unwrap_err().code, 400);
        assert_eq!(head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
            .unwrap_err().code, 400);
        assert_eq!(head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap_err().code, 400);
    }

    #[test]
    fn start_line_rules() {
        assert_eq!(head("get / HTTP/1.1\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").unwrap_err().code, 505);
        assert_eq!(head("GET / HTTP/1.x\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(head("G@T / HTTP/1.1\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(head("GET / HTTP/1.1\r\nHost : x\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n").unwrap_err().code, 400);
    }

    #[test]
    fn expect_continue_only_in_11() {
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").unwrap().expect_continue);
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().expect_continue);
    }

    #[test]
    fn targets() {
        assert_eq!(split_target(b"/a/b?c=d#frag"), Target { path: b"/a/b", query: b"c=d" });
        assert_eq!(split_target(b"http://host:80/p?q"), Target { path: b"/p", query: b"q" });
        assert_eq!(split_target(b"http://host"), Target { path: b"", query: b"" });
        assert_eq!(split_target(b"//x/y?z"), Target { path: b"//x/y", query: b"z" });
        assert_eq!(split_target(b"*"), Target { path: b"*", query: b"" });
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"/a%20b%2Fc"), b"/a b/c");
        assert_eq!(percent_decode(b"/%zz%4"), b"/%zz%4");
        assert_eq!(percent_decode(b"/%E2%98%83"), vec![b'/', 0xE2, 0x98, 0x83]);
        assert_eq!(percent_decode(b"%41"), b"A");
    }
}
