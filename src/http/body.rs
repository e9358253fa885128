//! Request bodies: Content-Length and chunked decoding into a spool that lives in memory
//! up to `inbuf_overflow` bytes and in an anonymous temporary file beyond.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use parking_lot::Mutex;

use super::{is_tchar, HttpError};

/// Longest chunk-size line (size, extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Spill files kept for the next spilled bodies hold at most this much together,
const KEEP_BYTES: u64 = 64 << 20;
/// and none of them ever held more than this.
const KEEP_SIZE: u64 = 4 << 20;

/// Spill files whose body is done, kept to be written over. Creating an anonymous
/// temporary file, and freeing its pages when it is closed, cost more than the copy of
/// the body into it (an ext4 /tmp: a third of a 1 MiB upload's server CPU). A kept file
/// is written over from its start and read only up to the new body's length, so no
/// byte of an earlier body is ever read back. Files are kept by the process that made
/// them: a forked child drops what it inherited (the open file is shared with the
/// parent) and makes its own.
struct KeptFiles {
    pid: u32,
    /// Each file with the most it ever held.
    files: Vec<(File, u64)>,
    /// The sum of what they held.
    held: u64,
}

static KEPT: Mutex<KeptFiles> = Mutex::new(KeptFiles { pid: 0, files: Vec::new(), held: 0 });

/// A spill file positioned at its start, and the most it ever held.
fn spill_file() -> io::Result<(File, u64)> {
    let kept = {
        let mut k = KEPT.lock();
        let pid = std::process::id();
        if k.pid != pid {
            k.pid = pid;
            k.files.clear();
            k.held = 0;
        }
        let f = k.files.pop();
        if let Some((_, held)) = f {
            k.held -= held;
        }
        f
    };
    match kept {
        Some((mut f, held)) => {
            f.seek(SeekFrom::Start(0))?;
            Ok((f, held))
        }
        None => Ok((tempfile::tempfile()?, 0)),
    }
}

/// Keeps a spill file for reuse, or closes it.
fn keep_spill_file(f: File, held: u64) {
    if held > KEEP_SIZE {
        return;
    }
    let mut k = KEPT.lock();
    if k.pid == std::process::id() && k.held + held <= KEEP_BYTES {
        k.held += held;
        k.files.push((f, held));
    }
}

/// A whole request body, in memory or spilled to a temporary file.
#[derive(Debug)]
pub struct Spool {
    mem: Vec<u8>,
    /// The spill file, with the most it held before this body (it may be a kept one).
    file: Option<(File, u64)>,
    len: u64,
    limit: usize,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some((f, held)) = self.file.take() {
            keep_spill_file(f, held.max(self.len));
        }
    }
}

impl Spool {
    pub fn new(limit: usize) -> Self {
        Spool { mem: Vec::new(), file: None, len: 0, limit }
    }

    /// A spool for a body whose length is known: memory reserved once, or straight to
    /// a file when it will not fit under the limit anyway.
    pub fn for_length(limit: usize, len: u64) -> io::Result<Self> {
        if len > limit as u64 {
            return Ok(Spool { mem: Vec::new(), file: Some(spill_file()?), len: 0, limit });
        }
        Ok(Spool { mem: Vec::with_capacity(len as usize), file: None, len: 0, limit })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_file(&self) -> bool {
        self.file.is_some()
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.file.is_none() && self.mem.len() + data.len() > self.limit {
            let (mut f, held) = spill_file()?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some((f, held));
        }
        match &mut self.file {
            Some((f, _)) => f.write_all(data)?,
            None => self.mem.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Receives up to `want` bytes of body from `sock` into the spool: straight into the
    /// reserved memory when it has room, on Linux straight into the spill file when there
    /// is one (splice.rs), else through `scratch`. Ok(0) is end of stream.
    pub fn recv_from(
        &mut self,
        sock: &socket2::Socket,
        want: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        if self.file.is_none() && self.mem.capacity() - self.mem.len() >= want {
            let spare = &mut self.mem.spare_capacity_mut()[..want];
            let n = sock.recv(spare)?;
            // SAFETY: recv initialised the first n bytes of the spare capacity.
            unsafe { self.mem.set_len(self.mem.len() + n) };
            self.len += n as u64;
            return Ok(n);
        }
        #[cfg(target_os = "linux")]
        if let Some((f, _)) = &mut self.file {
            if let Some(n) = super::splice::sock_to_file(sock, f, want, scratch)? {
                self.len += n as u64;
                return Ok(n);
            }
        }
        let want = want.min(scratch.len());
        let n = (&*sock).read(&mut scratch[..want])?;
        self.write(&scratch[..n])?;
        Ok(n)
    }

    /// The in-memory bytes (empty when the body went to a file).
    pub fn memory(&self) -> &[u8] {
        &self.mem
    }

    /// Reads up to `buf.len()` bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        match &mut self.file {
            None => {
                let start = offset as usize;
                buf[..want].copy_from_slice(&self.mem[start..start + want]);
                Ok(want)
            }
            Some((f, _)) => {
                let mut got = 0;
                while got < want {
                    let n = read_at(f, &mut buf[got..want], offset + got as u64)?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                Ok(got)
            }
        }
    }

    /// Fills `len` bytes at `dst` from the file-backed body at `offset` with pread(2),
    /// so the destination need not be initialised first (wsgi.input fills a new bytes
    /// object this way instead of zeroing it and then reading over the zeros). Ok(false)
    /// when the body is in memory or the file holds fewer bytes than asked.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes, and nothing may read them unless
    /// this returns Ok(true).
    #[cfg(unix)]
    pub unsafe fn fill_raw_at(&self, offset: u64, dst: *mut u8, len: usize) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let Some((f, _)) = &self.file else { return Ok(false) };
        if offset.saturating_add(len as u64) > self.len {
            return Ok(false);
        }
        let mut got = 0usize;
        while got < len {
            // SAFETY: dst + got .. dst + len lies inside the caller's writable region.
            let n = unsafe {
                libc::pread(
                    f.as_raw_fd(),
                    dst.add(got).cast(),
                    len - got,
                    (offset + got as u64) as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(false);
            }
            got += n as usize;
        }
        Ok(true)
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, offset)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, offset)
}

/// Decodes a body as its bytes arrive.
#[derive(Debug)]
pub enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(Chunked),
}

#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    /// The chunk-size line being collected (size and extensions), up to its CR.
    line: Vec<u8>,
    /// Trailer section bytes seen, for the size limit.
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    SizeLine,
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    TrailerLine,
    TrailerLf {
        blank: bool,
    },
    Done,
}

/// What one call to `feed` did.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    pub consumed: usize,
    pub done: bool,
}

impl BodyDecoder {
    pub fn length(n: u64) -> Self {
        BodyDecoder::Length { remaining: n }
    }

    /// The whole body has been decoded.
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(c) => c.state == ChunkState::Done,
        }
    }

    /// Counts `n` bytes of a Content-Length body that were stored by other means.
    pub fn advance(&mut self, n: u64) {
        if let BodyDecoder::Length { remaining } = self {
            *remaining = remaining.saturating_sub(n);
        }
    }

    /// Bytes still expected, when the framing says (Content-Length).
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length { remaining } => Some(*remaining),
            BodyDecoder::Chunked(_) => None,
        }
    }

    pub fn chunked() -> Self {
        BodyDecoder::Chunked(Chunked { state: ChunkState::SizeLine, line: Vec::new(), trailer_bytes: 0 })
    }

    /// Feeds raw bytes; decoded body bytes go to `out`. `max_body` bounds the decoded size
    /// (413 past it). Bytes after the end of the body are left unconsumed.
    pub fn feed(&mut self, data: &[u8], out: &mut Spool, max_body: u64) -> Result<Progress, HttpError> {
        match self {
            BodyDecoder::Length { remaining } => {
                let take = (*remaining).min(data.len() as u64) as usize;
                out.write(&data[..take]).map_err(io_error)?;
                *remaining -= take as u64;
                Ok(Progress { consumed: take, done: *remaining == 0 })
            }
            BodyDecoder::Chunked(c) => c.feed(data, out, max_body),
        }
    }
}

fn io_error(e: io::Error) -> HttpError {
    HttpError::new(500, format!("could not buffer the request body: {e}"))
}

fn bad(msg: &str) -> HttpError {
    HttpError::bad_request(msg.to_string())
}

impl Chunked {
    fn feed(&mut self, data: &[u8], out: &mut Spool, max_body: u64) -> Result<Progress, HttpError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::SizeLine => {
                    if b == b'\r' {
                        let size = parse_chunk_line(&self.line)?;
                        self.line.clear();
                        if out.len().saturating_add(size) > max_body {
                            return Err(HttpError::new(413, format!("exceeds max_body of {max_body}")));
                        }
                        self.state = ChunkState::SizeLf(size);
                    } else {
                        if self.line.len() >= MAX_CHUNK_LINE {
                            return Err(bad("Chunk size line too long"));
                        }
                        self.line.push(b);
                    }
                    i += 1;
                }
                ChunkState::SizeLf(size) => {
                    if b != b'\n' {
                        return Err(bad("Chunk size line not terminated by CRLF"));
                    }
                    self.state = if size == 0 { ChunkState::TrailerStart } else { ChunkState::Data(size) };
                    i += 1;
                }
                ChunkState::Data(left) => {
                    let take = left.min((data.len() - i) as u64) as usize;
                    out.write(&data[i..i + take]).map_err(io_error)?;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data(left) };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(bad("Chunk not properly terminated"));
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad("Chunk not properly terminated"));
                    }
                    self.state = ChunkState::SizeLine;
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    self.count_trailer()?;
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf { blank: true };
                    } else {
                        self.line.clear();
                        self.line.push(b);
                        self.state = ChunkState::TrailerLine;
                    }
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    self.count_trailer()?;
                    if b == b'\r' {
                        check_trailer_line(&self.line)?;
                        self.state = ChunkState::TrailerLf { blank: false };
                    } else if b == b'\n' {
                        return Err(bad("Bare LF in trailer"));
                    } else {
                        self.line.push(b);
                    }
                    i += 1;
                }
                ChunkState::TrailerLf { blank } => {
                    if b != b'\n' {
                        return Err(bad("Bare CR in trailer"));
                    }
                    i += 1;
                    if blank {
                        self.state = ChunkState::Done;
                        return Ok(Progress { consumed: i, done: true });
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::Done => return Ok(Progress { consumed: i, done: true }),
            }
        }
        Ok(Progress { consumed: i, done: self.state == ChunkState::Done })
    }

    fn count_trailer(&mut self) -> Result<(), HttpError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(HttpError::new(431, "trailer section too large"));
        }
        Ok(())
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits only (no sign, prefix or spaces), then zero or
/// more `;name[=value]` extensions whose names are tokens and values tokens or quoted
/// strings, with optional whitespace around `;` and `=` (RFC 9112 7.1.1's BWS).
/// Extensions are checked and then ignored.
fn parse_chunk_line(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("Invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let v = (b as char).to_digit(16).unwrap() as u64;
        size =
            size.checked_mul(16).and_then(|s| s.checked_add(v)).ok_or_else(|| bad("Chunk size too large"))?;
    }
    let rest = &line[digits..];
    if !rest.is_empty() && !matches!(rest[0], b';' | b' ' | b'\t') {
        return Err(bad("Invalid chunk size"));
    }
    check_extensions(rest)?;
    Ok(size)
}

fn skip_bws(ext: &[u8]) -> &[u8] {
    let n = ext.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &ext[n..]
}

/// `*( BWS ";" BWS name [ BWS "=" BWS value ] )`: whitespace is allowed only where it
/// separates those parts, not at the end of the line.
fn check_extensions(mut ext: &[u8]) -> Result<(), HttpError> {
    let invalid = || bad("Invalid chunk extension");
    while !ext.is_empty() {
        ext = skip_bws(ext);
        if ext.first() != Some(&b';') {
            return Err(invalid());
        }
        ext = skip_bws(&ext[1..]);
        let name = ext.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 {
            return Err(invalid());
        }
        ext = &ext[name..];
        let after_bws = skip_bws(ext);
        if after_bws.first() == Some(&b'=') {
            ext = skip_bws(&after_bws[1..]);
            if ext.first() == Some(&b'"') {
                let mut i = 1;
                loop {
                    match ext.get(i) {
                        None => return Err(invalid()),
                        Some(b'"') => break,
                        Some(b'\\') => match ext.get(i + 1) {
                            Some(&c) if c == b'\t' || (0x20..=0x7e).contains(&c) || c >= 0x80 => i += 2,
                            _ => return Err(invalid()),
                        },
                        Some(&c)
                            if c == b'\t'
                                || c == b' '
                                || c == 0x21
                                || (0x23..=0x5b).contains(&c)
                                || (0x5d..=0x7e).contains(&c)
                                || c >= 0x80 =>
                        {
                            i += 1
                        }
                        Some(_) => return Err(invalid()),
                    }
                }
                ext = &ext[i + 1..];
            } else {
                let val = ext.iter().take_while(|&&b| is_tchar(b)).count();
                if val == 0 {
                    return Err(invalid());
                }
                ext = &ext[val..];
            }
        }
    }
    Ok(())
}

fn check_trailer_line(line: &[u8]) -> Result<(), HttpError> {
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    if name == 0 || line.get(name) != Some(&b':') {
        return Err(bad("Invalid trailer field"));
    }
    if line[name + 1..].iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad("Invalid trailer field"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = BodyDecoder::chunked();
        let mut s = Spool::new(1 << 20);
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let p = d.feed(&input[pos..end], &mut s, u64::MAX)?;
            pos += p.consumed;
            if p.done {
                let mut out = vec![0; s.len() as usize];
                s.read_at(0, &mut out).unwrap();
                return Ok((out, pos));
            }
            if p.consumed < end - (pos - p.consumed) {
                panic!("decoder stopped early without finishing");
            }
        }
        Err(HttpError::bad_request("incomplete"))
    }

    #[test]
    fn chunked_any_split() {
        let input = b"5\r\nhello\r\n6;a=b;c=\"d\\\"e\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (body, used) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(&input[used..], b"NEXT");
        }
    }

    #[test]
    fn chunk_extensions_with_whitespace() {
        for good in [
            &b"5 ;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5; a\r\nhello\r\n0\r\n\r\n",
            b"5\t;\ta = b\r\nhello\r\n0\r\n\r\n",
            b"5;a= \"q\" ; b\r\nhello\r\n0 ; z\r\n\r\n",
        ] {
            let (body, _) =
                decode_all(good, 1).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(good)));
            assert_eq!(body, b"hello");
        }
        for bad in [&b"5;a \r\nhello\r\n0\r\n\r\n"[..], b"5 \r\n", b"5 ; \r\n", b"5;a=\r\n", b"5;a b\r\n"] {
            assert!(decode_all(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunked_rejects() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nX: a\nb\r\n\r\n",
        ] {
            assert!(decode_all(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(decode_all(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunked_body_limit() {
        let mut d = BodyDecoder::chunked();
        let mut s = Spool::new(10);
        let e = d.feed(b"10\r\n", &mut s, 15).unwrap_err();
        assert_eq!(e.code, 413);
    }

    #[test]
    fn length_decoder_stops_at_end() {
        let mut d = BodyDecoder::length(3);
        let mut s = Spool::new(10);
        let p = d.feed(b"abcdef", &mut s, 100).unwrap();
        assert_eq!(p, Progress { consumed: 3, done: true });
        assert_eq!(s.memory(), b"abc");
    }

    #[test]
    fn spilled_bodies_written_over_read_back_as_themselves() {
        for (i, size) in [300_000usize, 70_000, 5, 129_000, 64].into_iter().enumerate() {
            let body = vec![b'a' + i as u8; size];
            let mut s = Spool::for_length(4, size as u64).unwrap();
            let mut c = Spool::new(4);
            for part in body.chunks(7_000) {
                s.write(part).unwrap();
                c.write(part).unwrap();
            }
            for s in [&mut s, &mut c] {
                assert!(s.is_file());
                let mut out = vec![0u8; size + 10];
                assert_eq!(s.read_at(0, &mut out).unwrap(), size);
                assert_eq!(&out[..size], &body[..]);
                assert_eq!(s.read_at(size as u64, &mut out).unwrap(), 0);
            }
        }
    }

    #[test]
    fn spool_spills_to_file() {
        let mut s = Spool::new(4);
        s.write(b"abc").unwrap();
        assert!(!s.is_file());
        s.write(b"defg").unwrap();
        assert!(s.is_file());
        let mut buf = [0u8; 5];
        assert_eq!(s.read_at(2, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"cdefg");
        assert_eq!(s.read_at(7, &mut buf).unwrap(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn spill_file_fills_uninitialised_memory() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = Spool::new(1024);
        s.write(&body).unwrap();
        assert!(s.is_file());
        let mut out: Vec<u8> = Vec::with_capacity(body.len());
        // SAFETY: the capacity covers every write; the length is set only after a fill
        // that reports every byte written.
        unsafe {
            assert!(s.fill_raw_at(1000, out.as_mut_ptr(), body.len() - 1000).unwrap());
            out.set_len(body.len() - 1000);
        }
        assert_eq!(out, &body[1000..]);
        // Past the end, or a body held in memory: nothing is claimed filled.
        let mut spare = [0u8; 8];
        assert!(!unsafe { s.fill_raw_at(body.len() as u64 - 4, spare.as_mut_ptr(), 8) }.unwrap());
        let mut m = Spool::new(1024);
        m.write(b"in memory").unwrap();
        assert!(!unsafe { m.fill_raw_at(0, spare.as_mut_ptr(), 2) }.unwrap());
    }
}
