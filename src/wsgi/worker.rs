//! The loop each pool thread runs: wait for a request without the GIL, then build the
//! environ, call the application, send what it returns, and always close its iterable.
//!
//! A fault in the Rust code serving one request (a panic) is caught here: the request's
//! connection is closed and logged, and the thread goes on with the next request.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::connection::phase::{Event, Phase};
use crate::connection::{Conn, Request};
use crate::http::request::{percent_decode, split_target};
use crate::http::response::{error_response, RequestSide};
use crate::http::HttpError;
use crate::logging;
use crate::metrics::CloseReason;
use crate::pool::{Slot, Take};
use crate::reactor::Shared;
use crate::wsgi::environ::{self, EnvConsts};
use crate::wsgi::file_wrapper::{inspect, FileWrapper, Wrapped};
use crate::wsgi::response::Response;
use crate::wsgi::start_response::{expect_bytes, settle, write_bytes, ClientDisconnected, StartResponse};

/// What a worker needs besides the task.
pub struct WorkerCtx {
    pub shared: Arc<Shared>,
    pub app: PyObject,
    pub consts: EnvConsts,
    pub logger: PyObject,
}

impl WorkerCtx {
    /// The context for a server's pool threads: the environ's constant parts built once.
    pub fn new(py: Python<'_>, shared: Arc<Shared>, app: PyObject) -> PyResult<Self> {
        let cfg = &shared.cfg;
        let ident: PyObject =
            if cfg.ident.is_empty() { py.None() } else { PyString::new(py, &cfg.ident).into_any().unbind() };
        let mut consts = EnvConsts {
            wsgi_version: PyTuple::new(py, [1, 0])?.into_any().unbind(),
            ident,
            server_name: PyString::new(py, &cfg.server_name).into_any().unbind(),
            url_scheme: PyString::new(py, &cfg.url_scheme).into_any().unbind(),
            script_name: PyString::new(py, &cfg.url_prefix).into_any().unbind(),
            url_prefix: cfg.url_prefix.chars().map(|c| c as u32 as u8).collect(),
            file_wrapper: py.get_type::<FileWrapper>().into_any().unbind(),
            sys: py.import("sys")?.into_any().unbind(),
            drop_proxy_headers: cfg.drop_proxy_headers,
            multiprocess: cfg.multiprocess,
            detect_disconnect: cfg.channel_request_lookahead > 0,
            template: PyDict::new(py).unbind(),
        };
        consts.make_template(py)?;
        let logger = py.import("logging")?.call_method1("getLogger", ("rswaitress",))?.unbind();
        Ok(WorkerCtx { shared, app, consts, logger })
    }
}

pub fn run(py: Python<'_>, ctx: &WorkerCtx) {
    let shared = &ctx.shared;
    let pool = &shared.pool;
    let slot = pool.register();
    loop {
        // Under load the next request is usually queued already: take it while still
        // holding the GIL. The GIL is released only to wait (see pool.rs for who wakes).
        let task = match pool.take(&slot) {
            Take::Task(task) => task,
            Take::Stop => break,
            Take::Empty => {
                let _ = logging::deliver(py);
                let metrics = shared.metrics.own();
                metrics.set_threads(pool.serving().saturating_sub(1) as u64, pool.idle() as u64 + 1);
                let found = pool.idle_wait(&slot, |wait| py.allow_threads(wait));
                metrics.set_threads(pool.serving() as u64, pool.idle() as u64);
                match found {
                    Take::Task(task) => task,
                    Take::Stop => break,
                    Take::Empty => continue,
                }
            }
        };
        let conn = task.conn;
        let mut next = take(shared, &conn, task.req);
        while let Some(req) = next.take() {
            let close = match catch_unwind(AssertUnwindSafe(|| serve(py, ctx, &conn, req))) {
                Ok(close) => close,
                Err(_) => {
                    log::error!(target: "rswaitress",
                        "internal error while serving a request from {}; its connection was closed", conn.remote_addr);
                    let mut st = conn.st.lock();
                    shared.close(&conn, &mut st, CloseReason::Other);
                    true
                }
            };
            pool.finished(&slot);
            next = finish(shared, &conn, close, &slot);
        }
        if logging::due() {
            let _ = logging::deliver(py);
        }
    }
    pool.unregister(&slot);
}

/// Takes a queued request for this thread, unless its connection was closed meanwhile
/// (a timeout, a stop, a client that left).
fn take(shared: &Shared, conn: &Conn, req: Request) -> Option<Request> {
    let mut st = conn.st.lock();
    if st.phase != Phase::Queued {
        // Never served: it leaves the requests in flight uncounted.
        shared.metrics.own().in_flight_add(-1);
        return None;
    }
    shared.apply(conn, &mut st, Event::Taken);
    Some(req)
}

/// Hands the connection back after a response: returns the next request on it if one
/// is complete (served by this thread at once), or leaves it to the reactor. A complete
/// next request goes to the back of the queue instead when requests of other connections
/// wait there (a client that sends its next request while its response is finishing
/// would otherwise keep the thread to itself), or when the thread is stepping back.
fn finish(shared: &Shared, conn: &Arc<Conn>, close: bool, slot: &Slot) -> Option<Request> {
    shared.count_request();
    let mut st = conn.st.lock();
    let ready = shared.apply(conn, &mut st, Event::ResponseDone { close })?;
    if shared.pool.requests_wait() || shared.pool.stepping_back(slot) {
        drop(st);
        shared.dispatch(conn.clone(), ready);
        return None;
    }
    shared.apply(conn, &mut st, Event::Taken);
    Some(ready)
}

/// Serves one request; returns whether the connection must close afterwards.
fn serve(py: Python<'_>, ctx: &WorkerCtx, conn: &Arc<Conn>, req: Request) -> bool {
    let taken_at = std::time::Instant::now();
    let Request { head, body, ready_at } = req;
    let side = RequestSide {
        version: head.version,
        keep_alive: head.keep_alive,
        asked_keep_alive: head.asked_keep_alive,
    };
    let mut resp = Response::new(ctx.shared.clone(), conn.clone(), side, head.is_head());
    resp.taken_at = Some(taken_at);
    let sr = match Bound::new(py, StartResponse::new(resp)) {
        Ok(sr) => sr,
        Err(e) => {
            e.print(py);
            return true;
        }
    };
    let access = ctx.shared.cfg.access_log.as_deref();
    let mut kept_environ: Option<Bound<'_, PyDict>> = None;
    let outcome = environ::build(py, &ctx.consts, conn, &head, body)
        .and_then(|env| {
            if access.is_some_and(|f| !f.environ_names().is_empty()) {
                kept_environ = Some(env.clone());
            }
            ctx.app.bind(py).call1((env, &sr))
        })
        .and_then(|iterable| {
            let sent = send_body(py, sr.get(), &iterable);
            let closed = close_iterable(py, &iterable);
            sent.and(closed)
        })
        .and_then(|_| {
            let mut resp = sr.get().lock(py);
            let flow = resp.finish();
            settle(py, &mut resp, flow)
        });

    let mut resp = sr.get().lock(py);
    // What the access log shows: the status sent and the body bytes put on the wire.
    let mut logged = (resp.status_code(), resp.wrote_header().then_some(resp.body_sent));
    let close = if let Err(err) = outcome {
        resp.abandon();
        logged.1 = resp.wrote_header().then_some(resp.body_sent);
        let path = logged_path(&head.uri);
        if err.is_instance_of::<ClientDisconnected>(py) || resp.disconnected {
            let _ = ctx
                .logger
                .bind(py)
                .call_method1(intern!(py, "info"), (format!("Client disconnected while serving {path}"),));
        } else {
            log_exception(py, &ctx.logger, &format!("Exception while serving {path}"), &err);
            if !resp.wrote_header() {
                let text = if ctx.shared.cfg.expose_tracebacks {
                    format_traceback(py, &err)
                } else {
                    "The server encountered an unexpected internal server error".to_string()
                };
                let page = error_response(&HttpError::new(500, text), side.version, &ctx.shared.cfg.ident);
                let body_len =
                    page.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |h| page.len() - h - 4);
                let mut st = conn.st.lock();
                if st.phase == Phase::Serving {
                    // What the socket does not take now is flushed by the reactor once
                    // finish() hands the connection back.
                    match st.send(&[&page]) {
                        Ok(_) => logged = (500, Some(body_len as u64)),
                        Err(e) => {
                            ctx.shared.log_socket_error("sending an error response", &e);
                            ctx.shared.close(conn, &mut st, CloseReason::Error);
                        }
                    }
                }
            }
        }
        true
    } else {
        let mut close = resp.close;
        if let (Some(cl), false) = (resp.content_length, resp.is_head) {
            let has_body = resp.framing.is_some_and(|f| f.has_body && !f.chunked);
            if has_body && resp.bytes_written != cl {
                log::warn!(target: "rswaitress",
                    "application returned too few bytes ({}) for specified Content-Length ({}) via app_iter",
                    resp.bytes_written, cl);
                close = true;
            }
        }
        close
    };
    let metrics = ctx.shared.metrics.own();
    metrics.observe_request(logged.0, ready_at.elapsed(), taken_at.saturating_duration_since(ready_at));
    metrics.in_flight_add(-1);
    if let Some(format) = access {
        let line =
            access_line(py, format, conn, &head, &resp.headers, logged, ready_at, kept_environ.as_ref());
        logging::access(py, line);
    }
    close
}

/// Formats the access log line of a request.
#[allow(clippy::too_many_arguments)]
fn access_line(
    py: Python<'_>,
    format: &crate::access_log::Format,
    conn: &Conn,
    head: &crate::http::request::RequestHead,
    response_headers: &[(String, String)],
    (status, body_sent): (u16, Option<u64>),
    ready_at: std::time::Instant,
    environ: Option<&Bound<'_, PyDict>>,
) -> String {
    let time = if format.uses_time() { clf_time(py) } else { String::new() };
    let values: Vec<Option<String>> =
        format.environ_names().iter().map(|name| environ.and_then(|env| environ_value(env, name))).collect();
    let request_headers = |cgi: &[u8]| head.header(cgi).map(<[u8]>::to_vec);
    let path_info = environ::path_info(&head.uri, &[]);
    let entry = crate::access_log::Entry {
        remote_addr: &conn.remote_addr,
        method: &head.method,
        uri: &head.uri,
        path_info: &path_info,
        protocol: head.version.as_str(),
        request_headers: &request_headers,
        response_headers,
        status,
        body_sent,
        duration: ready_at.elapsed(),
        time: &time,
        environ: &values,
    };
    format.render(&entry)
}

/// An environ value as text, looked up as Gunicorn does: by name, without regard to case.
fn environ_value(env: &Bound<'_, PyDict>, name: &str) -> Option<String> {
    let found = env.get_item(name).ok().flatten().or_else(|| {
        env.iter()
            .find(|(k, _)| k.extract::<String>().is_ok_and(|k| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v)
    })?;
    found.str().ok().map(|s| s.to_string())
}

/// The time in the Common Log Format, `[10/Oct/2000:13:55:36 -0700]`, in local time as
/// Python's time.strftime gives it; made at most once a second per thread.
fn clf_time(py: Python<'_>) -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let made = (|| -> PyResult<String> {
                let time = py.import(intern!(py, "time"))?;
                let local = time.call_method1(intern!(py, "localtime"), (secs,))?;
                time.call_method1(intern!(py, "strftime"), ("[%d/%b/%Y:%H:%M:%S %z]", local))?.extract()
            })();
            *c = (secs, made.unwrap_or_else(|_| "[-]".to_string()));
        }
        c.1.clone()
    })
}

/// The request path as Waitress logs it: percent-decoded, each byte one latin-1 character.
/// Built only when something is logged, off the normal request path.
fn logged_path(uri: &[u8]) -> String {
    percent_decode(split_target(uri).path).iter().map(|&b| b as char).collect()
}

/// `(type, value, traceback)` of an error, as `sys.exc_info()` gives it.
fn exc_info<'py>(py: Python<'py>, err: &PyErr) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
    let tb: PyObject = match err.traceback(py) {
        Some(tb) => tb.into_any().unbind(),
        None => py.None(),
    };
    pyo3::types::PyTuple::new(
        py,
        [err.get_type(py).into_any().unbind(), err.value(py).clone().into_any().unbind(), tb],
    )
}

/// Logs `msg` at ERROR with the error's traceback, as logger.exception() would.
fn log_exception(py: Python<'_>, logger: &PyObject, msg: &str, err: &PyErr) {
    let kwargs = pyo3::types::PyDict::new(py);
    let Ok(info) = exc_info(py, err) else { return };
    if kwargs.set_item(intern!(py, "exc_info"), info).is_ok() {
        let _ = logger.bind(py).call_method(intern!(py, "error"), (msg,), Some(&kwargs));
    }
}

fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let tb = py.import("traceback")?;
        let lines = tb.call_method1("format_exception", exc_info(py, err)?)?;
        let joined = pyo3::types::PyString::new(py, "").call_method1("join", (lines,))?;
        joined.extract()
    })();
    formatted.unwrap_or_else(|_| err.to_string())
}

/// Sends the application's body: a wrapped file as a file, a list item by item, any
/// other iterable as it yields.
fn send_body(py: Python<'_>, sr: &StartResponse, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(fw) = iterable.downcast::<FileWrapper>() {
        let started = sr.lock(py).status.is_some();
        if started {
            match inspect(py, fw.get()) {
                Wrapped::File(region) => {
                    let mut resp = sr.lock(py);
                    let resp = &mut *resp;
                    let flow = py.allow_threads(|| resp.send_file(region));
                    return settle(py, resp, flow);
                }
                Wrapped::Seekable { len } => return send_seekable(py, sr, fw.get(), len),
                Wrapped::Stream => {}
            }
        }
    }
    if let Ok(tuple) = iterable.downcast::<pyo3::types::PyTuple>() {
        let n = tuple.len();
        for (i, item) in tuple.iter().enumerate() {
            write_chunk(py, sr, &item, i == 0, n == 1)?;
        }
        return Ok(());
    }
    if let Ok(list) = iterable.downcast::<PyList>() {
        let n = list.len();
        for i in 0..n {
            let Ok(item) = list.get_item(i) else { break };
            write_chunk(py, sr, &item, i == 0, n == 1)?;
        }
        return Ok(());
    }
    let single = iterable.hasattr(intern!(py, "__len__"))? && iterable.len().ok() == Some(1);
    let mut first = true;
    for item in iterable.try_iter()? {
        let item = item?;
        write_chunk(py, sr, &item, first, single)?;
        first = false;
    }
    Ok(())
}

/// A seekable file-like without a descriptor: exactly its remaining bytes (or the
/// application's smaller Content-Length), read block by block.
fn send_seekable(py: Python<'_>, sr: &StartResponse, fw: &FileWrapper, len: u64) -> PyResult<()> {
    let mut left = sr.lock(py).set_file_length(len);
    let f = fw.filelike.bind(py);
    while left > 0 {
        let want = left.min(fw.block_size as u64);
        let block = f.call_method1(intern!(py, "read"), (want,))?;
        let mut resp = sr.lock(py);
        let data = expect_bytes(py, &mut resp, &block)?.as_bytes();
        if data.is_empty() {
            break;
        }
        let take = data.len().min(left as usize);
        left -= take as u64;
        write_bytes(py, &mut resp, &data[..take])?;
    }
    Ok(())
}

fn write_chunk(
    py: Python<'_>,
    sr: &StartResponse,
    item: &Bound<'_, PyAny>,
    first: bool,
    only: bool,
) -> PyResult<()> {
    let mut resp = sr.lock(py);
    let data = expect_bytes(py, &mut resp, item)?.as_bytes();
    if first && only && resp.content_length.is_none() && resp.status.is_some() && !resp.wrote_header() {
        resp.content_length = Some(data.len() as u64);
    }
    if data.is_empty() {
        return Ok(());
    }
    write_bytes(py, &mut resp, data)
}

fn close_iterable(py: Python<'_>, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    // Lists and tuples have no close(); asking costs an AttributeError per request.
    if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<pyo3::types::PyTuple>() {
        return Ok(());
    }
    if iterable.hasattr(intern!(py, "close"))? {
        iterable.call_method0(intern!(py, "close"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The worker loop with an embedded interpreter: an application defined in Python,
    //! a request read from a real socket, the answer read back from it.

    use super::*;
    use crate::config::Config;
    use crate::connection::Parsed;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Serves the requests in `raw` (sent at once, then the client's sending side shut)
    /// with the `app` defined by `code`, on this thread, as a pool thread would; returns
    /// what the client received and the module namespace (for the test to inspect).
    fn serve(code: &str, raw: &[u8]) -> (Vec<u8>, Py<PyDict>) {
        pyo3::prepare_freethreaded_python();
        let cfg = Config::default();
        let (server, mut client) = crate::connection::tests::socket_pair();
        client.write_all(raw).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let shared = Arc::new(Shared::new(cfg.clone(), Vec::new()).unwrap());
        let conn = crate::connection::tests::plain_conn(9, server, &cfg);
        let first = {
            let mut st = conn.st.lock();
            let mut scratch = vec![0u8; 65536];
            let mut parsed = None;
            for _ in 0..1000 {
                st.read_some(&mut scratch).unwrap();
                if let Parsed::Request(r) = st.parse(&cfg) {
                    parsed = Some(r);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            st.phase = Phase::Queued;
            parsed.expect("a complete request")
        };
        shared.dispatch(conn.clone(), first);
        shared.pool.stop(1);
        let ns = Python::with_gil(|py| {
            let ns = PyDict::new(py);
            let code = std::ffi::CString::new(code).unwrap();
            py.run(&code, Some(&ns), None).unwrap();
            let app = ns.get_item("app").unwrap().expect("the code defines app").unbind();
            let ctx = WorkerCtx::new(py, shared.clone(), app).unwrap();
            run(py, &ctx);
            ns.unbind()
        });
        {
            // The pool is done: what it leaves for the reactor is flushed here.
            let mut st = conn.st.lock();
            while !st.is_closed() && !st.out.is_empty() {
                st.flush().unwrap();
            }
            shared.close(&conn, &mut st, CloseReason::Client);
        }
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got);
        (got, ns)
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn pipelined_requests_are_served_by_the_same_pool_thread() {
        let code = r#"
import threading
threads = set()
def app(environ, start_response):
    threads.add(threading.get_ident())
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"#;
        let (got, ns) = serve(
            code,
            b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        let t = text(&got);
        assert!(t.find("\r\n\r\n/one").unwrap() < t.find("\r\n\r\n/two").unwrap(), "{t}");
        Python::with_gil(|py| {
            let threads = ns.bind(py).get_item("threads").unwrap().unwrap();
            assert_eq!(threads.len().unwrap(), 1);
        });
    }

    #[test]
    fn application_error_is_a_500_and_the_iterable_is_closed() {
        let code = r#"
closed = []
class Body:
    def __iter__(self):
        yield "not bytes"
    def close(self):
        closed.append(True)
def app(environ, start_response):
    if environ["PATH_INFO"] == "/early":
        raise ValueError("boom")
    start_response("200 OK", [])
    return Body()
"#;
        let (got, _) = serve(code, b"GET /early HTTP/1.1\r\nHost: h\r\n\r\n");
        let t = text(&got);
        assert!(t.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{t}");
        assert!(t.contains("Connection: close"), "{t}");
        let (got, ns) = serve(code, b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n");
        // The head went out before the TypeError; the connection then ends.
        assert!(text(&got).starts_with("HTTP/1.1 200 OK\r\n"));
        Python::with_gil(|py| {
            let closed = ns.bind(py).get_item("closed").unwrap().unwrap();
            assert_eq!(closed.len().unwrap(), 1);
        });
    }

    /// write() called from several application threads at once: every byte arrives,
    /// nothing panics, and a write after the response is complete is refused.
    #[test]
    fn concurrent_writes_and_late_writes() {
        let code = r#"
import threading
late = []
def app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    def writer():
        for _ in range(200):
            write(b"x" * 100)
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    late.append(write)
    return []
def call_late():
    try:
        late[0](b"too late")
    except RuntimeError as e:
        return str(e)
"#;
        let (got, ns) = serve(code, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let t = text(&got);
        let body_start = t.find("\r\n\r\n").unwrap() + 4;
        let mut body = Vec::new();
        let mut rest = &got[body_start..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 4 + size..];
        }
        assert_eq!(body.len(), 80_000);
        assert!(body.iter().all(|&b| b == b'x'));
        Python::with_gil(|py| {
            let f = ns.bind(py).get_item("call_late").unwrap().unwrap();
            let msg: String = f.call0().unwrap().extract().unwrap();
            assert!(msg.contains("already complete"), "{msg}");
        });
    }
}
