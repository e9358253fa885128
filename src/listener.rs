//! Listening sockets. They are created and bound by the Python side (so that `listen`,
//! `unix_socket_perms` and pre-bound `sockets` behave exactly as in Waitress, errors
//! included) and adopted here by descriptor; the Python socket objects stay their owners
//! and close them after the reactor has stopped.

use std::io;
use std::mem::ManuallyDrop;

use socket2::{SockAddr, Socket};

/// What the environ says about the socket a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub server_port: String,
    pub is_unix: bool,
}

pub struct Listener {
    sock: ManuallyDrop<Socket>,
    pub info: std::sync::Arc<ListenerInfo>,
}

impl Listener {
    /// Adopts a listening socket without taking ownership of the descriptor.
    ///
    /// # Safety
    /// `raw` must be an open listening socket that outlives this `Listener`.
    pub unsafe fn adopt(raw: i64, info: ListenerInfo) -> io::Result<Self> {
        #[cfg(unix)]
        let sock = {
            use std::os::fd::FromRawFd;
            Socket::from_raw_fd(raw as i32)
        };
        #[cfg(windows)]
        let sock = {
            use std::os::windows::io::FromRawSocket;
            Socket::from_raw_socket(raw as u64 as std::os::windows::io::RawSocket)
        };
        let sock = ManuallyDrop::new(sock);
        sock.set_nonblocking(true)?;
        Ok(Listener { sock, info: std::sync::Arc::new(info) })
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
