//! The PEP 3333 environ, filled as Waitress fills it. Keys are interned once; values the
//! same for every request are built once per server.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{ffi, intern};

use crate::connection::Conn;
use crate::http::body::Spool;
use crate::http::request::RequestHead;
use crate::http::request::{percent_decode, split_target};
use crate::wsgi::input::InputStream;

/// `waitress.client_disconnected` / `rswaitress.client_disconnected`: tells a long-running
/// application whether its client has gone. As in Waitress, the end of the client's input
/// counts only with channel_request_lookahead > 0 (a client may half-close and still wait
/// for its answer); a closed connection (a failed write, a timeout) always does.
#[pyclass(module = "rswaitress._core", name = "ClientDisconnectedCheck", frozen)]
pub struct DisconnectCheck {
    conn: std::sync::Arc<Conn>,
    input_end_counts: bool,
}

#[pymethods]
impl DisconnectCheck {
    fn __call__(&self) -> bool {
        let st = self.conn.st.lock();
        st.is_closed() || (self.input_end_counts && st.peer_closed)
    }
}

/// Values shared by every environ of one server.
pub struct EnvConsts {
    pub wsgi_version: PyObject,
    pub ident: PyObject,
    pub server_name: PyObject,
    pub url_scheme: PyObject,
    pub script_name: PyObject,
    pub url_prefix: Vec<u8>,
    pub file_wrapper: PyObject,
    pub sys: PyObject,
    pub drop_proxy_headers: bool,
    /// `wsgi.multiprocess`.
    pub multiprocess: bool,
    /// client_disconnected reports the end of the client's input (lookahead is on).
    pub detect_disconnect: bool,
    /// Every key the server sets, in order, with the values that never change filled in:
    /// each environ starts as a copy of it, so it is allocated at its final size once and
    /// the fixed entries cost nothing per request.
    pub template: Py<PyDict>,
}

impl EnvConsts {
    /// Builds the template from the constant values (call once all fields are set).
    pub fn make_template(&mut self, py: Python<'_>) -> PyResult<()> {
        let t = PyDict::new(py);
        let none = py.None();
        for key in ["REMOTE_ADDR", "REMOTE_HOST", "REMOTE_PORT", "REQUEST_METHOD", "SERVER_PORT"] {
            t.set_item(key, &none)?;
        }
        t.set_item("SERVER_NAME", self.server_name.bind(py))?;
        t.set_item("SERVER_SOFTWARE", self.ident.bind(py))?;
        t.set_item("SERVER_PROTOCOL", &none)?;
        t.set_item("SCRIPT_NAME", self.script_name.bind(py))?;
        for key in ["PATH_INFO", "REQUEST_URI", "QUERY_STRING"] {
            t.set_item(key, &none)?;
        }
        t.set_item("wsgi.url_scheme", self.url_scheme.bind(py))?;
        t.set_item("wsgi.version", self.wsgi_version.bind(py))?;
        t.set_item("wsgi.errors", &none)?;
        t.set_item("wsgi.multithread", true)?;
        t.set_item("wsgi.multiprocess", self.multiprocess)?;
        t.set_item("wsgi.run_once", false)?;
        t.set_item("wsgi.file_wrapper", self.file_wrapper.bind(py))?;
        t.set_item("wsgi.input_terminated", true)?;
        for key in ["wsgi.input", "waitress.client_disconnected", "rswaitress.client_disconnected"] {
            t.set_item(key, &none)?;
        }
        self.template = t.unbind();
        Ok(())
    }
}

/// Headers only a trusted proxy may set (CGI names).
const PROXY_HEADERS: [&[u8]; 6] = [
    b"X_FORWARDED_FOR",
    b"X_FORWARDED_HOST",
    b"X_FORWARDED_PROTO",
    b"X_FORWARDED_PORT",
    b"X_FORWARDED_BY",
    b"FORWARDED",
];

/// A Python str from latin-1 bytes (every byte is one code point, as PEP 3333 wants).
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if s.is_ascii() {
            return Ok(PyString::new(py, s));
        }
    }
    // SAFETY: the pointer and length describe a live slice; the call returns a new
    // reference or NULL with an exception set, which from_owned_ptr_or_err handles.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeLatin1(
            bytes.as_ptr() as *const std::os::raw::c_char,
            bytes.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.downcast_into_unchecked())
    }
}

/// PATH_INFO from the request target: percent-decoded, leading slashes collapsed to one,
/// and the url_prefix (SCRIPT_NAME) taken off.
pub fn path_info(uri: &[u8], url_prefix: &[u8]) -> Vec<u8> {
    let target = split_target(uri);
    let mut path = percent_decode(target.path);
    if path.starts_with(b"/") {
        let extra = path.iter().take_while(|&&b| b == b'/').count() - 1;
        if extra > 0 {
            path.drain(..extra);
        }
    }
    if !url_prefix.is_empty() {
        if path == url_prefix {
            path.clear();
        } else if path.starts_with(url_prefix) && path.get(url_prefix.len()) == Some(&b'/') {
            path.drain(..url_prefix.len());
        }
    }
    path
}

pub fn build<'py>(
    py: Python<'py>,
    consts: &EnvConsts,
    conn: &std::sync::Arc<Conn>,
    head: &RequestHead,
    body: Spool,
) -> PyResult<Bound<'py, PyDict>> {
    let env = consts.template.bind(py).copy()?;
    let target = split_target(&head.uri);
    let path = path_info(&head.uri, &consts.url_prefix);
    let remote_addr = PyString::new(py, &conn.remote_addr);

    env.set_item(intern!(py, "REMOTE_ADDR"), &remote_addr)?;
    env.set_item(intern!(py, "REMOTE_HOST"), &remote_addr)?;
    env.set_item(intern!(py, "REMOTE_PORT"), PyString::new(py, &conn.remote_port))?;
    env.set_item(intern!(py, "REQUEST_METHOD"), PyString::new(py, &head.method))?;
    env.set_item(intern!(py, "SERVER_PORT"), PyString::new(py, &conn.listener.server_port))?;
    env.set_item(
        intern!(py, "SERVER_PROTOCOL"),
        match head.version {
            crate::http::Version::Http10 => intern!(py, "HTTP/1.0"),
            crate::http::Version::Http11 => intern!(py, "HTTP/1.1"),
        },
    )?;
    env.set_item(intern!(py, "PATH_INFO"), latin1(py, &path)?)?;
    env.set_item(intern!(py, "REQUEST_URI"), latin1(py, &head.uri)?)?;
    env.set_item(intern!(py, "QUERY_STRING"), latin1(py, target.query)?)?;
    env.set_item(intern!(py, "wsgi.errors"), consts.sys.bind(py).getattr(intern!(py, "stderr"))?)?;
    if conn.listener.tls {
        env.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "https"))?;
        env.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
        let cert = conn.st.lock().client_cert.clone();
        if let Some(cert) = cert {
            env.set_item(intern!(py, "SSL_CLIENT_S_DN"), PyString::new(py, &cert.subject))?;
            env.set_item(intern!(py, "SSL_CLIENT_CERT"), PyString::new(py, &cert.pem))?;
        }
    }

    let mut key = Vec::with_capacity(64);
    for (name, value) in head.headers() {
        if consts.drop_proxy_headers && PROXY_HEADERS.contains(&name) {
            continue;
        }
        let pykey = match name {
            b"CONTENT_TYPE" => intern!(py, "CONTENT_TYPE").clone(),
            b"CONTENT_LENGTH" => intern!(py, "CONTENT_LENGTH").clone(),
            b"HOST" => intern!(py, "HTTP_HOST").clone(),
            b"USER_AGENT" => intern!(py, "HTTP_USER_AGENT").clone(),
            b"ACCEPT" => intern!(py, "HTTP_ACCEPT").clone(),
            b"ACCEPT_ENCODING" => intern!(py, "HTTP_ACCEPT_ENCODING").clone(),
            b"ACCEPT_LANGUAGE" => intern!(py, "HTTP_ACCEPT_LANGUAGE").clone(),
            b"CONNECTION" => intern!(py, "HTTP_CONNECTION").clone(),
            b"COOKIE" => intern!(py, "HTTP_COOKIE").clone(),
            _ => {
                key.clear();
                key.extend_from_slice(b"HTTP_");
                key.extend_from_slice(name);
                latin1(py, &key)?
            }
        };
        // No header can replace a key the server set: HTTP_ names never match one, and
        // each name occurs once (repeats were joined while parsing).
        env.set_item(pykey, latin1(py, value)?)?;
    }
    let chunked = head.framing == crate::http::request::BodyFraming::Chunked;
    if chunked {
        env.set_item(intern!(py, "CONTENT_LENGTH"), body.len().to_string())?;
    }
    env.set_item(intern!(py, "wsgi.input"), Bound::new(py, InputStream::new(body))?)?;
    let check =
        Bound::new(py, DisconnectCheck { conn: conn.clone(), input_end_counts: consts.detect_disconnect })?;
    env.set_item(intern!(py, "waitress.client_disconnected"), &check)?;
    env.set_item(intern!(py, "rswaitress.client_disconnected"), &check)?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::path_info;

    #[test]
    fn paths() {
        assert_eq!(path_info(b"/a%20b", b""), b"/a b");
        assert_eq!(path_info(b"///x//y", b""), b"/x//y");
        assert_eq!(path_info(b"/app", b"/app"), b"");
        assert_eq!(path_info(b"/app/x?q", b"/app"), b"/x");
        assert_eq!(path_info(b"/apple", b"/app"), b"/apple");
        assert_eq!(path_info(b"http://h/p", b""), b"/p");
    }
}
