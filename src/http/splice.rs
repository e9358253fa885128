//! Linux: a request body bound for its spill file moves from the socket to the file with
//! splice(2) through a pipe, so its bytes never pass through user memory. Reading them
//! into a buffer and writing them out again cost as much as the kernel's own receive
//! work (half the reactor's CPU on a 1 MiB upload).
//!
//! Each thread that receives bodies keeps one pipe. Splicing is given up for the
//! thread, and the ordinary read-and-write path used instead, when the pipe cannot be
//! made or the file's filesystem does not take splices; bytes already in the pipe then
//! still reach the file.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

struct Pipe {
    /// The read end as a File, so the fallback in pipe_to_file reads it with std's Read.
    read: File,
    write: OwnedFd,
    /// Bytes the pipe holds at most: what one splice from the socket may move.
    cap: usize,
}

enum State {
    Untried,
    Ready(Pipe),
    Off,
}

thread_local! {
    static PIPE: RefCell<State> = const { RefCell::new(State::Untried) };
}

/// A non-blocking pipe of about `size` bytes (the default 64 KiB if the system allows
/// no more).
fn new_pipe(size: usize) -> io::Result<Pipe> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (read, write) = unsafe { (File::from(OwnedFd::from_raw_fd(fds[0])), OwnedFd::from_raw_fd(fds[1])) };
    let want = size.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: fcntl on an open descriptor; a refusal (over fs.pipe-max-size) is harmless.
    let mut cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    if cap <= 0 {
        // SAFETY: as above.
        cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
    }
    if cap <= 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pipe { read, write, cap: cap as usize })
}

fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets make
    // the kernel use (and advance) the file position, as write(2) would.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves up to `want` bytes from `sock` to the end of `file`, until the socket has no
/// more for now. Ok(Some(0)) is the end of the stream; Ok(None): splicing is off on this
/// thread, nothing was read, use the ordinary path. `scratch` carries what is left in
/// the pipe if the file stops taking splices.
pub fn sock_to_file(
    sock: &socket2::Socket,
    file: &mut File,
    want: usize,
    scratch: &mut [u8],
) -> io::Result<Option<usize>> {
    PIPE.with(|cell| {
        let mut state = cell.borrow_mut();
        if matches!(*state, State::Untried) {
            *state = new_pipe(scratch.len()).map_or(State::Off, State::Ready);
        }
        let State::Ready(pipe) = &*state else { return Ok(None) };
        let mut total = 0;
        while total < want {
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
            let n =
                match splice(sock.as_raw_fd(), pipe.write.as_raw_fd(), (want - total).min(pipe.cap), flags) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && total == 0 => {
                        *state = State::Off;
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
            match pipe_to_file(pipe, file, n, scratch) {
                Ok(true) => total += n,
                Ok(false) => {
                    *state = State::Off;
                    return Ok(Some(total + n));
                }
                Err(e) => {
                    // What is left in the pipe went nowhere: a new pipe starts empty.
                    *state = State::Untried;
                    return Err(e);
                }
            }
        }
        Ok(Some(total))
    })
}

/// Moves the `n` bytes the pipe holds to the file. Ok(false): the file's filesystem
/// does not take splices, and they went through `scratch` instead.
fn pipe_to_file(pipe: &Pipe, file: &mut File, n: usize, scratch: &mut [u8]) -> io::Result<bool> {
    let mut left = n;
    while left > 0 {
        match splice(pipe.read.as_raw_fd(), file.as_raw_fd(), left, libc::SPLICE_F_MOVE) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => left -= m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                while left > 0 {
                    let take = left.min(scratch.len());
                    (&pipe.read).read_exact(&mut scratch[..take])?;
                    file.write_all(&scratch[..take])?;
                    left -= take;
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::tests::socket_pair;
    use std::io::{Read, Seek, SeekFrom};

    /// Splices until `want` bytes are in the file (waiting for the sender between calls);
    /// returns the file's contents.
    fn splice_all(sock: &socket2::Socket, want: usize) -> Vec<u8> {
        let mut file = tempfile::tempfile().unwrap();
        let mut scratch = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < want {
            match sock_to_file(sock, &mut file, want - got, &mut scratch) {
                Ok(Some(0)) => panic!("end of stream after {got} bytes"),
                Ok(Some(n)) => got += n,
                Ok(None) => panic!("splicing is off on a Linux socket and ordinary file"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut back = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn body_reaches_the_file_and_nothing_past_it_is_taken() {
        let (server, mut client) = socket_pair();
        let body: Vec<u8> = (0..3_000_017u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let sent = body.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(77_777) {
                client.write_all(piece).unwrap();
            }
            client.write_all(b"NEXT").unwrap();
            client
        });
        assert!(splice_all(&server, body.len()) == body);
        let _client = writer.join().unwrap();
        // What follows the body stays in the socket for the next head.
        let mut rest = [0u8; 8];
        let mut n = 0;
        while n < 4 {
            match (&server).read(&mut rest[n..]) {
                Ok(m) => n += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(&rest[..n], b"NEXT");
    }

    #[test]
    fn nothing_to_read_and_end_of_stream() {
        let (server, client) = socket_pair();
        let mut file = tempfile::tempfile().unwrap();
        let mut scratch = vec![0u8; 4096];
        let err = sock_to_file(&server, &mut file, 1000, &mut scratch).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut eof = None;
        for _ in 0..1000 {
            match sock_to_file(&server, &mut file, 1000, &mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => {
                    eof = Some(other.unwrap());
                    break;
                }
            }
        }
        assert_eq!(eof, Some(Some(0)));
        assert_eq!(file.metadata().unwrap().len(), 0);
    }
}
