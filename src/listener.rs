//! Listening sockets. They are created and bound by the Python side (so that `listen`,
//! `unix_socket_perms` and pre-bound `sockets` behave exactly as in Waitress, errors
//! included) and adopted here by descriptor: the core checks that each is a listening
//! stream socket and keeps its own duplicate, which it closes as soon as a stop begins
//! (so that new connections are refused at once), whatever Python does with its object.

use std::io;
use std::sync::Arc;

use socket2::{SockAddr, Socket, Type};

/// What the environ says about the socket a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub server_port: String,
    pub is_unix: bool,
    /// The metrics listener: its requests are answered by the reactor, never the pool.
    pub metrics: bool,
    /// Connections speak TLS (a TCP listener of a server with ssl_certfile).
    pub tls: bool,
}

pub struct Listener {
    sock: Socket,
    pub info: Arc<ListenerInfo>,
}

impl Listener {
    /// Duplicates the descriptor `raw` (a socket the caller keeps open for the duration
    /// of this call) after checking that it is a listening stream socket.
    pub fn adopt(raw: i64, info: ListenerInfo) -> io::Result<Self> {
        let sock = duplicate(raw)?;
        if sock.r#type()? != Type::STREAM {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a stream socket"));
        }
        if !is_listening(&sock)? {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket is not listening"));
        }
        sock.set_nonblocking(true)?;
        Ok(Listener { sock, info: Arc::new(info) })
    }

    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Accepts one connection, made non-blocking and (for TCP) with Nagle off, since
    /// responses are written whole.
    pub fn accept(&self) -> io::Result<(Socket, SockAddr)> {
        let (s, addr) = self.sock.accept()?;
        s.set_nonblocking(true)?;
        if !self.info.is_unix {
            let _ = s.set_tcp_nodelay(true);
        }
        Ok((s, addr))
    }
}

#[cfg(unix)]
pub fn duplicate(raw: i64) -> io::Result<Socket> {
    use std::os::fd::BorrowedFd;
    let fd = i32::try_from(raw)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid socket descriptor"))?;
    // SAFETY: the caller passes the descriptor of a socket object it keeps open while
    // this runs; it is only borrowed to make an owned duplicate (F_DUPFD_CLOEXEC).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(Socket::from(borrowed.try_clone_to_owned()?))
}

#[cfg(windows)]
pub fn duplicate(raw: i64) -> io::Result<Socket> {
    use std::os::windows::io::{BorrowedSocket, RawSocket};
    let handle = u64::try_from(raw)
        .ok()
        .filter(|h| *h != u64::MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid socket handle"))?;
    // SAFETY: the caller passes the handle of a socket object it keeps open while this
    // runs; it is only borrowed to make an owned duplicate (WSADuplicateSocket).
    let borrowed = unsafe { BorrowedSocket::borrow_raw(handle as RawSocket) };
    Ok(Socket::from(borrowed.try_clone_to_owned()?))
}

/// SO_ACCEPTCONN where the platform reports it; elsewhere accept() will say.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd", target_os = "fuchsia"))]
fn is_listening(sock: &Socket) -> io::Result<bool> {
    sock.is_listener()
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd", target_os = "fuchsia")))]
fn is_listening(_sock: &Socket) -> io::Result<bool> {
    Ok(true)
}

/// `REMOTE_ADDR` and `REMOTE_PORT` for a peer, as Waitress reports them (a Unix-socket
/// peer is `localhost` with port `None`).
pub fn peer_strings(addr: &SockAddr, is_unix: bool) -> (String, String) {
    if is_unix {
        return ("localhost".into(), "None".into());
    }
    match addr.as_socket() {
        Some(sa) => (sa.ip().to_string(), sa.port().to_string()),
        None => ("localhost".into(), "None".into()),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn info() -> ListenerInfo {
        ListenerInfo { server_port: "0".into(), is_unix: false, metrics: false, tls: false }
    }

    #[test]
    fn adopts_a_listening_socket_as_a_duplicate() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let adopted = Listener::adopt(l.as_raw_fd() as i64, info()).unwrap();
        assert_ne!(adopted.socket().as_raw_fd(), l.as_raw_fd());
        // The original can be closed: the duplicate still accepts.
        drop(l);
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let mut accepted = None;
        for _ in 0..1000 {
            match adopted.accept() {
                Ok(a) => {
                    accepted = Some(a);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(accepted.is_some());
    }

    #[test]
    fn refuses_what_is_not_a_listening_stream_socket() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(Listener::adopt(udp.as_raw_fd() as i64, info()).is_err());
        let unbound = Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(Listener::adopt(unbound.as_raw_fd() as i64, info()).is_err());
        let file = tempfile::tempfile().unwrap();
        assert!(Listener::adopt(file.as_raw_fd() as i64, info()).is_err());
        assert!(Listener::adopt(-1, info()).is_err());
        assert!(Listener::adopt(1 << 40, info()).is_err());
    }
}
