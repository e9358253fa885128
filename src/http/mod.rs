//! HTTP/1.x on the wire: request heads, request bodies, response framing.
//!
//! Nothing in here knows about sockets or Python; each part is a small state machine or a
//! pure function with its own unit tests.

pub mod body;
#[cfg(any(test, feature = "fuzzing"))]
pub mod harness;
pub mod inbuf;
#[cfg(test)]
mod proptests;
pub mod request;
pub mod response;
#[cfg(target_os = "linux")]
mod splice;

use std::fmt;

pub use inbuf::InBuf;

/// An error answered to the client with a status and a short explanation, after which the
/// connection is closed. The reason phrases and the shape of the body follow Waitress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub code: u16,
    pub detail: String,
}

impl HttpError {
    pub fn new(code: u16, detail: impl Into<String>) -> Self {
        HttpError { code, detail: detail.into() }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }
    pub fn reason(&self) -> &'static str {
        reason_phrase(self.code)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason(), self.detail)
    }
}

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The two protocol versions spoken. Anything else is refused while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// RFC 9110 token characters (field names, methods, chunk extension names).
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
        b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}
