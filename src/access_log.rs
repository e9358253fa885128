//! The access log: one line per request, formatted in Rust with Gunicorn's atoms, handed
//! to Python's logging (logger `rswaitress.access`, INFO) in batches.
//!
//! The format is Gunicorn's: `%(name)s` atoms, `%%` for a percent sign. Atoms:
//! h remote address, l `-`, u user name (HTTP Basic), t time `[10/Oct/2000:13:55:36 -0700]`,
//! r request line, m method, U path, q query string, H protocol, s status, B body bytes
//! sent, b the same or `-` for none, f referer, a user agent, T / M / D request time in
//! seconds / milliseconds / microseconds, L request time in decimal seconds, p process id,
//! `{Header}i` a request header, `{Header}o` a response header, `{VAR}e` an environ value.
//! Unknown atoms give `-`, as in Gunicorn.
//!
//! What comes from the client (the request line, headers, the user name) is escaped:
//! `"` and `\` get a backslash, and bytes outside printable ASCII become `\xHH`, so that a
//! line is always one line and cannot fake another field.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;

/// Gunicorn's default access log format.
pub const DEFAULT_FORMAT: &str = "%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\"";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    RemoteAddr,
    Dash,
    User,
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    BytesSent,
    BytesSentClf,
    Referer,
    UserAgent,
    Seconds,
    Millis,
    Micros,
    DecimalSeconds,
    Pid,
    /// `{name}i`, as the CGI name the parser stores (upper case, `-` as `_`).
    RequestHeader(Vec<u8>),
    /// `{name}o`, compared without regard to case.
    ResponseHeader(String),
    /// `{name}e`.
    Environ(String),
    /// Anything else: `-`.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Atom(Atom),
}

/// A parsed access log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    parts: Vec<Part>,
    environ: Vec<String>,
    uses_time: bool,
}

/// Everything a line can show about one request.
pub struct Entry<'a> {
    pub remote_addr: &'a str,
    pub method: &'a str,
    pub uri: &'a [u8],
    /// PATH_INFO as the environ has it (percent-decoded).
    pub path_info: &'a [u8],
    pub protocol: &'a str,
    pub request_headers: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>,
    pub response_headers: &'a [(String, String)],
    pub status: u16,
    /// Body bytes put on the connection (None: no response was sent).
    pub body_sent: Option<u64>,
    pub duration: Duration,
    /// `[%d/%b/%Y:%H:%M:%S %z]`
    pub time: &'a str,
    /// Values of the `{var}e` atoms, in the order `Format::environ_names` gives.
    pub environ: &'a [Option<String>],
}

impl Format {
    /// Parses a format; an error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                literal.push('%');
                rest = after;
                continue;
            }
            let Some(inner) = rest.strip_prefix('(') else {
                return Err(format!(
                    "a % must start an atom like %(h)s or be doubled (%%), at: {:?}",
                    &text[text.len() - rest.len() - 1..]
                ));
            };
            let Some(close) = inner.find(")s") else {
                return Err(format!(
                    "unterminated atom (expected \")s\") in {:?}",
                    &text[text.len() - rest.len() - 1..]
                ));
            };
            let name = &inner[..close];
            rest = &inner[close + 2..];
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Atom(atom(name)));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let environ = parts
            .iter()
            .filter_map(|p| match p {
                Part::Atom(Atom::Environ(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let uses_time = parts.iter().any(|p| matches!(p, Part::Atom(Atom::Time)));
        Ok(Format { parts, environ, uses_time })
    }

    /// The environ keys the format shows (`{var}e`), in order: the worker looks them up.
    pub fn environ_names(&self) -> &[String] {
        &self.environ
    }

    /// Whether the format shows the time (the caller then provides it).
    pub fn uses_time(&self) -> bool {
        self.uses_time
    }

    pub fn render(&self, e: &Entry<'_>) -> String {
        let mut out = String::with_capacity(160);
        let mut environ = e.environ.iter();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Atom(a) => render_atom(&mut out, a, e, &mut environ),
            }
        }
        out
    }
}

fn atom(name: &str) -> Atom {
    if let Some(inner) = name.strip_prefix('{') {
        if let Some(header) = inner.strip_suffix("}i") {
            let cgi = header.bytes().map(|b| if b == b'-' { b'_' } else { b.to_ascii_uppercase() }).collect();
            return Atom::RequestHeader(cgi);
        }
        if let Some(header) = inner.strip_suffix("}o") {
            return Atom::ResponseHeader(header.to_string());
        }
        if let Some(var) = inner.strip_suffix("}e") {
            return Atom::Environ(var.to_string());
        }
        return Atom::Unknown;
    }
    match name {
        "h" => Atom::RemoteAddr,
        "l" => Atom::Dash,
        "u" => Atom::User,
        "t" => Atom::Time,
        "r" => Atom::RequestLine,
        "m" => Atom::Method,
        "U" => Atom::Path,
        "q" => Atom::Query,
        "H" => Atom::Protocol,
        "s" => Atom::Status,
        "B" => Atom::BytesSent,
        "b" => Atom::BytesSentClf,
        "f" => Atom::Referer,
        "a" => Atom::UserAgent,
        "T" => Atom::Seconds,
        "M" => Atom::Millis,
        "D" => Atom::Micros,
        "L" => Atom::DecimalSeconds,
        "p" => Atom::Pid,
        _ => Atom::Unknown,
    }
}

/// Appends client-supplied bytes, escaped (see the module docs).
fn push_escaped(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

fn push_or_dash(out: &mut String, value: Option<&[u8]>) {
    match value {
        Some(v) if !v.is_empty() => push_escaped(out, v),
        _ => out.push('-'),
    }
}

/// The user name of an `Authorization: Basic` header.
pub fn basic_user(authorization: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = split_once(authorization, b' ')?;
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = rest.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect::<Vec<u8>>();
    let decoded = base64::engine::general_purpose::STANDARD.decode(token).ok()?;
    let user = match decoded.iter().position(|&b| b == b':') {
        Some(colon) => decoded[..colon].to_vec(),
        None => decoded,
    };
    Some(user)
}

fn split_once(v: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = v.iter().position(|&b| b == sep)?;
    Some((&v[..at], &v[at + 1..]))
}

fn render_atom<'a>(
    out: &mut String,
    atom: &Atom,
    e: &Entry<'_>,
    environ: &mut impl Iterator<Item = &'a Option<String>>,
) {
    let target = crate::http::request::split_target(e.uri);
    match atom {
        Atom::RemoteAddr => out.push_str(e.remote_addr),
        Atom::Dash | Atom::Unknown => out.push('-'),
        Atom::User => {
            let user = (e.request_headers)(b"AUTHORIZATION").and_then(|v| basic_user(&v));
            push_or_dash(out, user.as_deref());
        }
        Atom::Time => out.push_str(e.time),
        Atom::RequestLine => {
            push_escaped(out, e.method.as_bytes());
            out.push(' ');
            push_escaped(out, e.uri);
            out.push(' ');
            out.push_str(e.protocol);
        }
        Atom::Method => push_escaped(out, e.method.as_bytes()),
        Atom::Path => push_escaped(out, e.path_info),
        Atom::Query => push_escaped(out, target.query),
        Atom::Protocol => out.push_str(e.protocol),
        Atom::Status => {
            let _ = write!(out, "{}", e.status);
        }
        Atom::BytesSent => {
            let _ = write!(out, "{}", e.body_sent.unwrap_or(0));
        }
        Atom::BytesSentClf => match e.body_sent {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push('-'),
        },
        Atom::Referer => push_or_dash(out, (e.request_headers)(b"REFERER").as_deref()),
        Atom::UserAgent => push_or_dash(out, (e.request_headers)(b"USER_AGENT").as_deref()),
        Atom::Seconds => {
            let _ = write!(out, "{}", e.duration.as_secs());
        }
        Atom::Millis => {
            let _ = write!(out, "{}", e.duration.as_millis());
        }
        Atom::Micros => {
            let _ = write!(out, "{}", e.duration.as_micros());
        }
        Atom::DecimalSeconds => {
            // Whole microseconds, as D shows them (Gunicorn: "%d.%06d").
            let _ = write!(out, "{}.{:06}", e.duration.as_secs(), e.duration.subsec_micros());
        }
        Atom::Pid => {
            let _ = write!(out, "<{}>", std::process::id());
        }
        Atom::RequestHeader(cgi) => push_or_dash(out, (e.request_headers)(cgi).as_deref()),
        Atom::ResponseHeader(name) => {
            let v = e
                .response_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes());
            push_or_dash(out, v);
        }
        Atom::Environ(_) => match environ.next() {
            Some(Some(v)) if !v.is_empty() => push_escaped(out, v.as_bytes()),
            _ => out.push('-'),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_with<'a>(
        headers: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>,
        response: &'a [(String, String)],
        environ: &'a [Option<String>],
    ) -> Entry<'a> {
        Entry {
            remote_addr: "192.0.2.7",
            method: "GET",
            uri: b"/a/b?x=1&y=2",
            path_info: b"/a/b",
            protocol: "HTTP/1.1",
            request_headers: headers,
            response_headers: response,
            status: 200,
            body_sent: Some(1234),
            duration: Duration::from_micros(1_234_567),
            time: "[10/Oct/2000:13:55:36 -0700]",
            environ,
        }
    }

    fn headers(name: &[u8]) -> Option<Vec<u8>> {
        let v: &[u8] = match name {
            b"REFERER" => b"http://example.com/from",
            b"USER_AGENT" => b"curl/8 \"quoted\"",
            b"AUTHORIZATION" => b"Basic YWxpY2U6c2VjcmV0",
            b"X_REQUEST_ID" => b"abc-123",
            _ => return None,
        };
        Some(v.to_vec())
    }

    #[test]
    fn default_format_is_gunicorns() {
        let f = Format::parse(DEFAULT_FORMAT).unwrap();
        let response = vec![("Content-Type".to_string(), "text/plain".to_string())];
        let line = f.render(&entry_with(&headers, &response, &[]));
        assert_eq!(
            line,
            "192.0.2.7 - alice [10/Oct/2000:13:55:36 -0700] \"GET /a/b?x=1&y=2 HTTP/1.1\" 200 1234 \"http://example.com/from\" \"curl/8 \\\"quoted\\\"\""
        );
    }

    #[test]
    fn every_atom() {
        let f = Format::parse(
            "%(h)s|%(l)s|%(u)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(T)s|%(M)s|%(D)s|%(L)s|%({x-request-id}i)s|%({content-type}o)s|%({REMOTE_USER}e)s|%({missing}e)s|%(zz)s|%%",
        )
        .unwrap();
        assert_eq!(f.environ_names(), ["REMOTE_USER", "missing"]);
        let response = vec![("Content-Type".to_string(), "text/plain".to_string())];
        let environ = vec![Some("bob".to_string()), None];
        let line = f.render(&entry_with(&headers, &response, &environ));
        assert_eq!(line, "192.0.2.7|-|alice|GET|/a/b|x=1&y=2|HTTP/1.1|200|1234|1234|1|1234|1234567|1.234567|abc-123|text/plain|bob|-|-|%");
    }

    #[test]
    fn empty_bodies_and_missing_values() {
        let f = Format::parse("%(B)s %(b)s %(f)s %(u)s %({x}o)s").unwrap();
        let none = |_: &[u8]| None;
        let mut e = entry_with(&none, &[], &[]);
        // As in Gunicorn: b is "-" only when nothing was sent, "0" for an empty body.
        e.body_sent = Some(0);
        assert_eq!(f.render(&e), "0 0 - - -");
        e.body_sent = None;
        assert_eq!(f.render(&e), "0 - - - -");
    }

    #[test]
    fn client_bytes_are_escaped() {
        let f = Format::parse("%(r)s %({x}i)s").unwrap();
        let hostile = |n: &[u8]| if n == b"X" { Some(b"a\"b\\c\xff\x01".to_vec()) } else { None };
        let mut e = entry_with(&hostile, &[], &[]);
        e.uri = b"/\"x";
        assert_eq!(f.render(&e), "GET /\\\"x HTTP/1.1 a\\\"b\\\\c\\xff\\x01");
    }

    #[test]
    fn basic_users() {
        assert_eq!(basic_user(b"Basic YWxpY2U6c2VjcmV0").as_deref(), Some(&b"alice"[..]));
        assert_eq!(basic_user(b"basic  YWxpY2U=").as_deref(), Some(&b"alice"[..]));
        assert_eq!(basic_user(b"Bearer abc"), None);
        assert_eq!(basic_user(b"Basic !!!"), None);
        assert_eq!(basic_user(b"Basic"), None);
    }

    #[test]
    fn format_errors_say_where() {
        assert!(Format::parse("%(h)s %").unwrap_err().contains("doubled"));
        assert!(Format::parse("%(h").unwrap_err().contains("unterminated"));
        assert!(Format::parse("%d").is_err());
        assert_eq!(Format::parse("plain").unwrap().render(&entry_with(&headers, &[], &[])), "plain");
    }
}
