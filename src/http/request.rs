//! Request heads: finding where a head ends, parsing it with httparse, and the checks
//! httparse leaves to the server (RFC 9112 framing, target and Host rules, Waitress's
//! header conventions).
//!
//! Every step is linear in the size of the head: the end is scanned once however the
//! bytes arrive, header lines are collected into one arena, and repeated names are found
//! through a keyed hash once a head has more than a few distinct names, so that a head
//! of tens of thousands of short lines costs what its bytes cost.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::mem::MaybeUninit;

use super::{is_tchar, HttpError, Version};

/// Header lines parsed into a stack array; a head with more is parsed into one sized
/// from its line count (kept by the thread), so the only limit is max_request_header_size
/// (as in Waitress).
const STACK_HEADERS: usize = 64;

/// Distinct header names looked up by a linear scan; past this, through a hash map.
const LINEAR_NAMES: usize = 16;

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
            // Whole blocks with nothing to report are skipped in one branch-free pass;
            // a block that holds the end or a bad line end is walked byte by byte.
            if i >= 2 && i + SCAN_BLOCK < buf.len() && quiet_block(&buf[i - 2..=i + SCAN_BLOCK]) {
                i += SCAN_BLOCK;
                continue;
            }
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
                b'\r' if i + 1 < buf.len() && buf[i + 1] != b'\n' => {
                    return Err(HttpError::bad_request("Bare CR found in HTTP message"));
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

/// Bytes checked at once by `quiet_block`.
const SCAN_BLOCK: usize = 32;

/// Whether positions 2..2+SCAN_BLOCK of `w` (which holds two bytes before them and one
/// after) are free of what the scan stops at: every LF there follows a CR and every CR
/// before the last byte is followed by an LF, and no LF is two bytes after another LF
/// (the end of a head).
fn quiet_block(w: &[u8]) -> bool {
    debug_assert_eq!(w.len(), SCAN_BLOCK + 3);
    let mut flags = 0u8;
    for p in 2..SCAN_BLOCK + 2 {
        let lf = (w[p] == b'\n') as u8;
        let cr_before = (w[p - 1] == b'\r') as u8;
        let lf_two_before = (w[p - 2] == b'\n') as u8;
        flags |= (lf ^ cr_before) | (lf & lf_two_before);
    }
    // The pair (last position, byte after it): a CR there must be followed by an LF.
    let last_cr = (w[SCAN_BLOCK + 1] == b'\r') as u8;
    let next_lf = (w[SCAN_BLOCK + 2] == b'\n') as u8;
    flags |= last_cr & !next_lf & 1;
    flags == 0
}

fn too_large(max: usize) -> HttpError {
    HttpError::new(431, format!("exceeds max_header of {max}"))
}

/// What a head must satisfy beyond the syntax.
#[derive(Debug, Clone, Copy)]
pub struct HeadRules {
    pub max_size: usize,
    /// RFC 9112 3.2: an HTTP/1.1 request without Host is refused (400). Off only through
    /// the `allow_missing_host` adjustment, for clients written against Waitress's leniency.
    pub require_host: bool,
}

impl HeadRules {
    pub const fn new(max_size: usize) -> Self {
        HeadRules { max_size, require_host: true }
    }
}

/// Takes one request head off the front of `input`, as bytes arrive: blank lines before
/// a request are dropped, the head is scanned from where the last call stopped, and a
/// complete head is parsed and consumed. `Ok(None)`: more bytes needed. An error comes
/// with the HTTP version its answer should use.
pub fn take_head(
    scanner: &mut HeadScanner,
    input: &mut super::InBuf,
    rules: &HeadRules,
) -> Result<Option<RequestHead>, (HttpError, Version)> {
    if scanner.is_fresh() {
        let skip = leading_blank_lines(input.data());
        input.consume(skip);
    }
    if input.is_empty() {
        return Ok(None);
    }
    let end = match scanner.scan(input.data(), rules.max_size) {
        Ok(Scan::Complete(end)) => end,
        Ok(Scan::Partial) => return Ok(None),
        Err(e) => return Err((e, Version::Http10)),
    };
    let raw = &input.data()[..end];
    let head = parse_head(raw, rules).map_err(|e| (e, claimed_version(raw)))?;
    input.consume(end);
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

/// The four forms of a request target (RFC 9112 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `scheme://authority/path?query`
    Absolute,
    /// `host:port`, CONNECT only
    Authority,
    /// `*`, OPTIONS only
    Asterisk,
}

/// A range of a head's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: Span,
    value: Span,
}

/// A parsed and validated request head. Header names are kept in the CGI form Waitress
/// uses (upper case, `-` turned into `_`), values as the raw bytes with surrounding
/// whitespace stripped; repeated headers are joined with ", " in the place of the first.
/// Names and values live in one arena: a head is two allocations, however many lines.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub uri: Vec<u8>,
    pub version: Version,
    pub form: TargetForm,
    arena: Vec<u8>,
    fields: Vec<Field>,
    pub framing: BodyFraming,
    /// The client asked to keep the connection open (HTTP/1.1 default, 1.0 keep-alive).
    pub keep_alive: bool,
    /// The client sent `Connection: keep-alive` (relevant to HTTP/1.0 responses).
    pub asked_keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    fn bytes(&self, s: Span) -> &[u8] {
        &self.arena[s.start as usize..s.end as usize]
    }

    /// The headers in order of first appearance: (CGI name, value).
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|f| (self.bytes(f.name), self.bytes(f.value)))
    }

    pub fn header(&self, cgi_name: &[u8]) -> Option<&[u8]> {
        self.headers().find(|(k, _)| *k == cgi_name).map(|(_, v)| v)
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses one complete head (`buf` ends with CRLF CRLF).
pub fn parse_head(buf: &[u8], rules: &HeadRules) -> Result<RequestHead, HttpError> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut req = httparse::Request::new(&mut stack);
    let parsed = req.parse(buf);
    if !matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
        return finish_parse(buf, req, parsed, rules);
    }
    // Every header line ends with a line feed: that many slots are enough. They are
    // kept by the thread for the next such head: fresh memory of this size costs a page
    // fault per 128 slots, more than httparse's own work on the lines.
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    MANY_SLOTS.with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.capacity() < lines {
            *kept = Vec::with_capacity(lines);
        }
        let slots = &mut kept.spare_capacity_mut()[..lines];
        // SAFETY: only the lifetime of the slots' type changes. They are uninitialised to
        // the compiler and to httparse, which writes each slot it returns before anyone
        // reads it; what it returns is read only by finish_parse, within this borrow, and
        // the head built from it owns copies of its bytes.
        let len = slots.len();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] =
            unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast(), len) };
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(buf, slots);
        let head = finish_parse(buf, req, parsed, rules);
        if kept.capacity() > KEEP_SLOTS {
            *kept = Vec::new();
        }
        head
    })
}

/// Slots kept per thread at most (2 MiB): a head of the default maximum size
/// (262,144 bytes) has fewer lines than this.
const KEEP_SLOTS: usize = 1 << 16;

thread_local! {
    /// Header slots for heads of more than STACK_HEADERS lines, kept between heads: the
    /// spare capacity of an always empty vector.
    static MANY_SLOTS: RefCell<Vec<httparse::Header<'static>>> = const { RefCell::new(Vec::new()) };
}

/// Checks what httparse made of a head, then validates and collects it.
fn finish_parse(
    buf: &[u8],
    req: httparse::Request<'_, '_>,
    parsed: httparse::Result<usize>,
    rules: &HeadRules,
) -> Result<RequestHead, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(_)) => build(req, rules),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(HttpError::bad_request("HTTP message header invalid"))
        }
        Err(httparse::Error::Version) => Err(version_error(buf)),
        Err(httparse::Error::Token) if start_line_has_non_ascii(buf) => Err(non_ascii_target()),
        Err(e) => Err(HttpError::bad_request(describe(e))),
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

fn non_ascii_target() -> HttpError {
    HttpError::bad_request("Request target contains non-ASCII bytes")
}

/// httparse refuses a target that is not UTF-8 as a bad token; a start line with any
/// byte past ASCII gets the clearer message.
fn start_line_has_non_ascii(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len());
    !buf[..line_end].is_ascii()
}

/// A case-insensitive view of a raw header name, for the hash index of repeated names
/// (two names give the same CGI name exactly when they are equal ignoring ASCII case,
/// since names with `_` are dropped).
#[derive(Clone, Copy)]
struct NoCase<'a>(&'a [u8]);

impl PartialEq for NoCase<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}
impl Eq for NoCase<'_> {}
impl Hash for NoCase<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Lower-cased a block at a time: one write per block, not per byte (and no
        // length prefix: the name is the whole key, so prefixes cannot collide).
        let mut block = [0u8; 32];
        for part in self.0.chunks(block.len()) {
            for (dst, &b) in block.iter_mut().zip(part) {
                *dst = b.to_ascii_lowercase();
            }
            state.write(&block[..part.len()]);
        }
    }
}

/// The group of a header line that is dropped.
const NONE: u32 = u32::MAX;

/// A distinct header name: as first sent, its line count and the length of its values.
struct Group<'b> {
    name: &'b [u8],
    lines: u32,
    value_len: usize,
}

/// Collects header lines into distinct names in order of first appearance, in time
/// linear in the number of lines: a scan while there are few names, then a map keyed
/// with a per-process random key (so that crafted names cannot make it quadratic).
struct Groups<'b> {
    groups: Vec<Group<'b>>,
    index: Option<HashMap<NoCase<'b>, u32>>,
    /// Header lines in the head, to size the index once.
    lines: usize,
    /// Lookups and inserts made, for the linearity test.
    #[cfg(test)]
    probes: usize,
}

impl<'b> Groups<'b> {
    fn new(lines: usize) -> Self {
        Groups {
            groups: Vec::new(),
            index: None,
            lines,
            #[cfg(test)]
            probes: 0,
        }
    }

    /// Adds a line of `value_len` bytes under `name`; returns its group.
    fn add(&mut self, name: &'b [u8], value_len: usize) -> u32 {
        let g = match &mut self.index {
            Some(index) => {
                #[cfg(test)]
                {
                    self.probes += 1;
                }
                let next = self.groups.len() as u32;
                let g = *index.entry(NoCase(name)).or_insert(next);
                if g == next {
                    self.groups.push(Group { name, lines: 0, value_len: 0 });
                }
                g
            }
            None => {
                #[cfg(test)]
                {
                    self.probes += self.groups.len();
                }
                match self.groups.iter().position(|g| g.name.eq_ignore_ascii_case(name)) {
                    Some(g) => g as u32,
                    None => {
                        self.groups.push(Group { name, lines: 0, value_len: 0 });
                        if self.groups.len() > LINEAR_NAMES {
                            let hasher = std::collections::hash_map::RandomState::new();
                            let mut index = HashMap::with_capacity_and_hasher(self.lines, hasher);
                            for (i, group) in self.groups.iter().enumerate() {
                                index.insert(NoCase(group.name), i as u32);
                            }
                            self.index = Some(index);
                        }
                        self.groups.len() as u32 - 1
                    }
                }
            }
        };
        let group = &mut self.groups[g as usize];
        group.lines += 1;
        group.value_len += value_len;
        g
    }
}

/// The header names the server itself reads, with their places in `Specials`.
const SPECIAL_NAMES: [&[u8]; 4] = [b"connection", b"expect", b"transfer-encoding", b"content-length"];

/// The groups of the names the server reads, found while the lines are collected.
#[derive(Default)]
struct Specials([Option<u32>; 4]);

impl Specials {
    fn note(&mut self, name: &[u8], group: u32) {
        if !matches!(name.len(), 6 | 10 | 14 | 17) {
            return;
        }
        if let Some(i) = SPECIAL_NAMES.iter().position(|s| s.eq_ignore_ascii_case(name)) {
            self.0[i].get_or_insert(group);
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Probes made by the last head built on this thread (see the linearity test).
    static LAST_PROBES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn build(req: httparse::Request<'_, '_>, rules: &HeadRules) -> Result<RequestHead, HttpError> {
    let method = req.method.unwrap_or_default();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(HttpError::bad_request(format!("Malformed HTTP method \"{method}\"")));
    }
    let target = req.path.unwrap_or_default().as_bytes();
    if !target.is_ascii() {
        return Err(non_ascii_target());
    }
    let form = target_form(method, target)?;
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };

    let mut groups = Groups::new(req.headers.len());
    let mut specials = Specials::default();
    // The group of each header line, or NONE for a dropped one.
    let mut line_groups: Vec<u32> = Vec::with_capacity(req.headers.len());
    let mut hosts = 0usize;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        // httparse has refused control characters (DEL included) in values already.
        let value = trim_ows(h.value);
        // A name with an underscore would collide with the dash form once both become
        // CGI names (X_Forwarded vs X-Forwarded); such headers are dropped, as Waitress does.
        if name.contains(&b'_') {
            line_groups.push(NONE);
            continue;
        }
        if name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Err(HttpError::bad_request("Host header is repeated"));
            }
            if !valid_host(value) {
                return Err(HttpError::bad_request("Host header is invalid"));
            }
        }
        let group = groups.add(name, value.len());
        specials.note(name, group);
        line_groups.push(group);
    }
    #[cfg(test)]
    LAST_PROBES.with(|p| p.set(groups.probes));
    if hosts == 0 && version == Version::Http11 && rules.require_host {
        return Err(HttpError::bad_request("Host header is missing"));
    }

    // Lay the fields out in the arena: each name, then its values joined, in the order
    // names first appeared. Each group's values go into a slot sized from their lengths,
    // filled as the lines are visited once in order.
    let arena_len: usize =
        groups.groups.iter().map(|g| g.name.len() + g.value_len + 2 * (g.lines as usize - 1)).sum();
    if arena_len > u32::MAX as usize {
        return Err(HttpError::new(431, "request head too large"));
    }
    let mut arena = vec![0u8; arena_len];
    let mut fields: Vec<Field> = Vec::with_capacity(groups.groups.len());
    // Per group: where its next value goes, and how many of its lines are still to come.
    let mut fill: Vec<(u32, u32)> = Vec::with_capacity(groups.groups.len());
    let mut pos = 0usize;
    for g in &groups.groups {
        for (dst, &b) in arena[pos..pos + g.name.len()].iter_mut().zip(g.name.iter()) {
            *dst = if b == b'-' { b'_' } else { b.to_ascii_uppercase() };
        }
        let name = Span { start: pos as u32, end: (pos + g.name.len()) as u32 };
        pos += g.name.len();
        let end = pos + g.value_len + 2 * (g.lines as usize - 1);
        fields.push(Field { name, value: Span { start: pos as u32, end: end as u32 } });
        fill.push((pos as u32, g.lines));
        pos = end;
    }
    for (h, &group) in req.headers.iter().zip(&line_groups) {
        if group == NONE {
            continue;
        }
        let value = trim_ows(h.value);
        let (at, left) = &mut fill[group as usize];
        let start = *at as usize;
        arena[start..start + value.len()].copy_from_slice(value);
        let mut next = start + value.len();
        *left -= 1;
        if *left > 0 {
            arena[next..next + 2].copy_from_slice(b", ");
            next += 2;
        }
        *at = next as u32;
    }

    let value_of = |i: usize, arena: &[u8], fields: &[Field]| {
        specials.0[i].map(|g| {
            let f = fields[g as usize];
            arena[f.value.start as usize..f.value.end as usize].to_vec()
        })
    };
    let connection = value_of(0, &arena, &fields).unwrap_or_default();
    let expect = value_of(1, &arena, &fields);
    let te = value_of(2, &arena, &fields);
    let cl = value_of(3, &arena, &fields);
    let te_group = specials.0[2];

    let mut head = RequestHead {
        method: method.to_string(),
        uri: target.to_vec(),
        version,
        form,
        arena,
        fields,
        framing: BodyFraming::None,
        keep_alive: false,
        asked_keep_alive: false,
        expect_continue: false,
    };
    let asked_close = has_token(&connection, b"close");
    head.asked_keep_alive = has_token(&connection, b"keep-alive");
    head.keep_alive = match version {
        Version::Http10 => head.asked_keep_alive && !asked_close,
        Version::Http11 => !asked_close,
    };
    head.expect_continue =
        version == Version::Http11 && expect.is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));

    let framing = match (te.as_deref(), cl.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(HttpError::bad_request("Content-Length and Transfer-Encoding are mutually exclusive"))
        }
        (Some(_), None) if version == Version::Http10 => {
            return Err(HttpError::bad_request("Transfer-Encoding is not allowed in HTTP/1.0"))
        }
        (Some(te), None) => transfer_coding(te)?,
        (None, Some(cl)) => BodyFraming::Length(parse_content_length(cl)?),
        (None, None) => BodyFraming::None,
    };
    head.framing = framing;
    // The body is handed to the application de-chunked, so the header no longer applies.
    if let Some(g) = te_group {
        head.fields.remove(g as usize);
    }
    Ok(head)
}

/// Which form a request target has, and whether the method allows it: `*` only with
/// OPTIONS, an authority only with CONNECT (and CONNECT only with one), an origin-form
/// target starting with `/`, an absolute-form one with a scheme and `://`.
fn target_form(method: &str, target: &[u8]) -> Result<TargetForm, HttpError> {
    let bad = || HttpError::bad_request("Request target is invalid");
    if method == "CONNECT" {
        return if valid_authority(target) { Ok(TargetForm::Authority) } else { Err(bad()) };
    }
    if target.first() == Some(&b'/') {
        return Ok(TargetForm::Origin);
    }
    if target == b"*" {
        return if method == "OPTIONS" {
            Ok(TargetForm::Asterisk)
        } else {
            Err(HttpError::bad_request("Request target * is only allowed with OPTIONS"))
        };
    }
    if let Some(sep) = find_sub(target, b"://") {
        let scheme = &target[..sep];
        if !scheme.is_empty()
            && scheme[0].is_ascii_alphabetic()
            && scheme.iter().all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Ok(TargetForm::Absolute);
        }
    }
    if valid_authority(target) {
        return Err(HttpError::bad_request("Request target in authority form is only allowed with CONNECT"));
    }
    Err(bad())
}

/// `host:port` with a non-empty host and port (the CONNECT target).
fn valid_authority(target: &[u8]) -> bool {
    match split_host_port(target) {
        Some((host, Some(port))) => !host.is_empty() && !port.is_empty(),
        _ => false,
    }
}

/// RFC 3986 `unreserved / sub-delims` (plus `%`, checked as pct-encoded by the caller).
fn is_reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// Splits `host[:port]`; `None` when the host part is malformed. A bracketed IP literal
/// may hold colons.
fn split_host_port(v: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (host, rest) = if v.first() == Some(&b'[') {
        let close = v.iter().position(|&b| b == b']')?;
        let inner = &v[1..close];
        let ok = !inner.is_empty()
            && inner.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.' || is_reg_name_char(b));
        if !ok {
            return None;
        }
        (&v[..=close], &v[close + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(c) => (&v[..c], &v[c..]),
            None => (v, &b""[..]),
        }
    };
    let port = match rest {
        [] => None,
        [b':', port @ ..] => {
            if !port.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(port)
        }
        _ => return None,
    };
    if host.first() != Some(&b'[') {
        let mut i = 0;
        while i < host.len() {
            match host[i] {
                b'%' => {
                    let ok = host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                    if !ok {
                        return None;
                    }
                    i += 3;
                }
                b if is_reg_name_char(b) => i += 1,
                _ => return None,
            }
        }
    }
    Some((host, port))
}

/// A Host value: empty (a target without authority) or `uri-host [":" port]`.
pub fn valid_host(v: &[u8]) -> bool {
    v.is_empty() || split_host_port(v).is_some()
}

fn version_error(buf: &[u8]) -> HttpError {
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len());
    let line = &buf[..line_end];
    // 505 only for a well-formed start line (three parts, single spaces) naming a
    // version this server does not speak; anything else is a malformed line.
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let v = if parts.len() == 3 && parts.iter().all(|p| !p.is_empty()) { parts[2] } else { b"" };
    if v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
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
    let mut count = 0usize;
    for c in te.split(|&b| b == b',').map(trim_ows).filter(|c| !c.is_empty()) {
        if !c.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::bad_request("Transfer-Encoding is invalid"));
        }
        if !c.eq_ignore_ascii_case(b"chunked") {
            return Err(HttpError::new(501, "Transfer-Encoding requested is not supported."));
        }
        count += 1;
    }
    match count {
        0 => Err(HttpError::bad_request("Transfer-Encoding is empty")),
        1 => Ok(BodyFraming::Chunked),
        _ => Err(HttpError::bad_request("chunked is applied more than once")),
    }
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

    const RULES: HeadRules = HeadRules::new(1 << 20);

    fn head(s: &str) -> Result<RequestHead, HttpError> {
        parse_head(s.as_bytes(), &RULES)
    }

    fn lenient(s: &str) -> Result<RequestHead, HttpError> {
        parse_head(s.as_bytes(), &HeadRules { require_host: false, ..RULES })
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
        assert_eq!(h.form, TargetForm::Origin);
        assert_eq!(h.header(b"X_A"), Some(&b"1, 2"[..]));
        assert_eq!(h.header(b"HOST"), Some(&b"example"[..]));
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::None);
        let names: Vec<&[u8]> = h.headers().map(|(k, _)| k).collect();
        assert_eq!(names, [&b"HOST"[..], b"X_A"]);
    }

    #[test]
    fn repeats_join_in_place_of_the_first() {
        let h = head("GET / HTTP/1.1\r\nA: 1\r\nHost: h\r\nB:\r\na: 2\r\nb: x\r\nA:  3 \r\n\r\n").unwrap();
        let all: Vec<(&[u8], &[u8])> = h.headers().collect();
        assert_eq!(all, [(&b"A"[..], &b"1, 2, 3"[..]), (b"HOST", b"h"), (b"B", b", x")]);
    }

    /// Heads of more lines than the stack array, one after another on one thread (their
    /// header slots are kept between heads): each is read as itself, whether the next is
    /// shorter, longer or refused.
    #[test]
    fn heads_of_many_lines_one_after_another() {
        let many = |n: usize, name: &str, value: &str| {
            let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
            for i in 0..n {
                s.push_str(&format!("{name}{}: {value}{i}\r\n", i % 3));
            }
            s + "\r\n"
        };
        for (n, name, value) in [(5000, "x", "a"), (300, "y", "bb"), (9000, "z", "c"), (70, "x", "d")] {
            let h = head(&many(n, name, value)).unwrap();
            let all: Vec<(Vec<u8>, Vec<u8>)> = h.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            assert_eq!(all.len(), 4);
            assert_eq!(all[0], (b"HOST".to_vec(), b"h".to_vec()));
            for (g, (k, v)) in all[1..].iter().enumerate() {
                assert_eq!(k, format!("{}{g}", name.to_uppercase()).as_bytes());
                let want: Vec<String> = (g..n).step_by(3).map(|i| format!("{value}{i}")).collect();
                assert_eq!(v, want.join(", ").as_bytes());
            }
            let bad = many(n, name, value).replacen(&format!("{name}1: "), &format!("{name} 1: "), 1);
            assert!(head(&bad).is_err());
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, Close\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn underscore_headers_are_dropped() {
        let h = head("GET / HTTP/1.1\r\nHost: h\r\nX_Auth: evil\r\nX-Auth: good\r\n\r\n").unwrap();
        assert_eq!(h.header(b"X_AUTH"), Some(&b"good"[..]));
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            head("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n").unwrap().framing,
            BodyFraming::Length(12)
        );
        for bad in ["+12", "-1", "1 2", "0x10", "", "12, 12", "99999999999999999999999"] {
            let r = head(&format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {bad}\r\n\r\n"));
            assert_eq!(r.unwrap_err().code, 400, "{bad:?}");
        }
        let dup = head("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(dup.unwrap_err().code, 400);
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = |v: &str| head(&format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {v}\r\n\r\n"));
        let h = te("chunked").unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.header(b"TRANSFER_ENCODING").is_none());
        assert_eq!(te("gzip, chunked").unwrap_err().code, 501);
        assert_eq!(te("chunked, identity").unwrap_err().code, 501);
        assert_eq!(te("chunked, chunked").unwrap_err().code, 400);
        assert_eq!(te("\"chunked\"").unwrap_err().code, 400);
        assert_eq!(
            head("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err().code, 400);
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
    fn host_rules() {
        let e = head("GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!((e.code, e.detail.as_str()), (400, "Host header is missing"));
        assert!(lenient("GET / HTTP/1.1\r\n\r\n").is_ok());
        assert!(head("GET / HTTP/1.0\r\n\r\n").is_ok(), "HTTP/1.0 needs no Host");
        let e = head("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n").unwrap_err();
        assert_eq!((e.code, e.detail.as_str()), (400, "Host header is repeated"));
        let e = lenient("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err();
        assert_eq!(e.code, 400, "two Host lines are refused in any version");
        for good in [
            "",
            "example.com",
            "example.com:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "xn--bcher-kva.example",
            "a_b.example",
            "%41b",
            "h:",
        ] {
            assert!(head(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n")).is_ok(), "{good:?}");
        }
        for bad in [
            "a b", "a/b", "a@b", "a:b", "a:80:81", "[::1", "[]", "::1", "a%4", "a%zz", "[::1]x", "a\"b",
            "a?b", "a#b",
        ] {
            let e = head(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")).unwrap_err();
            assert_eq!((e.code, e.detail.as_str()), (400, "Host header is invalid"), "{bad:?}");
        }
    }

    #[test]
    fn target_forms() {
        let h = |s: &str| lenient(s).map(|h| h.form).map_err(|e| e.code);
        assert_eq!(h("GET /x HTTP/1.1\r\n\r\n"), Ok(TargetForm::Origin));
        assert_eq!(h("GET http://h/x HTTP/1.1\r\n\r\n"), Ok(TargetForm::Absolute));
        assert_eq!(h("OPTIONS * HTTP/1.1\r\n\r\n"), Ok(TargetForm::Asterisk));
        assert_eq!(h("GET * HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(h("CONNECT example.com:443 HTTP/1.1\r\n\r\n"), Ok(TargetForm::Authority));
        assert_eq!(h("CONNECT /x HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(h("CONNECT example.com HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(h("GET example.com:443 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(h("GET x HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(h("GET ?q HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(h("GET 1http://h/ HTTP/1.1\r\n\r\n"), Err(400));
    }

    #[test]
    fn non_ascii_targets_are_refused() {
        for raw in
            [&b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"[..], b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n"]
        {
            let e = parse_head(raw, &RULES).unwrap_err();
            assert_eq!((e.code, e.detail.as_str()), (400, "Request target contains non-ASCII bytes"));
        }
        assert!(head("GET /%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n").is_ok());
    }

    #[test]
    fn expect_continue_only_in_11() {
        assert!(head("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n").unwrap().expect_continue);
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().expect_continue);
    }

    /// A head of many short lines is linear: the name lookups grow with the line count,
    /// not with its square (a scan over every earlier name would make 65,000 lines cost
    /// about two billion probes; the bound below allows a small constant per line).
    #[test]
    fn many_header_lines_are_linear() {
        for (distinct, lines) in [(true, 60_000usize), (false, 60_000), (true, 15_000), (false, 4)] {
            let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
            for i in 0..lines {
                if distinct {
                    raw.extend_from_slice(format!("a{i:x}:b\r\n").as_bytes());
                } else {
                    raw.extend_from_slice(b"a:b\r\n");
                }
            }
            raw.extend_from_slice(b"\r\n");
            let h = parse_head(&raw, &HeadRules::new(1 << 22)).unwrap();
            let probes = LAST_PROBES.with(|p| p.get());
            assert!(probes <= (lines + 1) * (LINEAR_NAMES + 1), "{lines} lines: {probes} probes");
            if distinct {
                assert_eq!(h.headers().len(), lines + 1);
            } else {
                let joined = h.header(b"A").unwrap();
                assert_eq!(joined.len(), lines * 3 - 2);
            }
        }
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
