//! The loop each pool thread runs: wait for a request without the GIL, then build the
//! environ, call the application, send what it returns, and always close its iterable.
//!
//! A fault in the Rust code serving one request (a panic) is caught here: the request's
//! connection is closed and logged, and the thread goes on with the next request.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::connection::phase::{Event, Phase};
use crate::connection::{Conn, Request};
use crate::http::request::{percent_decode, split_target};
use crate::http::response::{error_response, RequestSide};
use crate::http::HttpError;
use crate::logging;
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

pub fn run(py: Python<'_>, ctx: &WorkerCtx) {
    let shared = &ctx.shared;
    loop {
        // Under load the next request is usually queued already: take it while still
        // holding the GIL, instead of handing the GIL to another pool thread only to
        // wait for it again. The GIL is released only to wait.
        let task = match shared.tasks_rx.try_recv() {
            Ok(task) => Ok(task),
            Err(_) => {
                let _ = logging::deliver(py);
                shared.idle_workers.fetch_add(1, Ordering::Relaxed);
                let task = py.allow_threads(|| shared.tasks_rx.recv());
                shared.idle_workers.fetch_sub(1, Ordering::Relaxed);
                task
            }
        };
        let Ok(Some(task)) = task else { break };
        let conn = task.conn;
        let mut next = take(shared, &conn, task.req);
        while let Some(req) = next.take() {
            let close = match catch_unwind(AssertUnwindSafe(|| serve(py, ctx, &conn, req))) {
                Ok(close) => close,
                Err(_) => {
                    log::error!(target: "rswaitress",
                        "internal error while serving a request from {}; its connection was closed", conn.remote_addr);
                    let mut st = conn.st.lock();
                    shared.close(&conn, &mut st);
                    true
                }
            };
            next = finish(shared, &conn, close);
        }
        if logging::pending() {
            let _ = logging::deliver(py);
        }
    }
}

/// Takes a queued request for this thread, unless its connection was closed meanwhile
/// (a timeout, a stop, a client that left).
fn take(shared: &Shared, conn: &Conn, req: Request) -> Option<Request> {
    let mut st = conn.st.lock();
    if st.phase != Phase::Queued {
        return None;
    }
    shared.apply(conn, &mut st, Event::Taken);
    Some(req)
}

/// Hands the connection back after a response: returns the next pipelined request if
/// one is complete (served by this thread at once), or leaves it to the reactor.
fn finish(shared: &Shared, conn: &Conn, close: bool) -> Option<Request> {
    let mut st = conn.st.lock();
    let ready = shared.apply(conn, &mut st, Event::ResponseDone { close })?;
    shared.apply(conn, &mut st, Event::Taken);
    Some(ready)
}

/// Serves one request; returns whether the connection must close afterwards.
fn serve(py: Python<'_>, ctx: &WorkerCtx, conn: &Arc<Conn>, req: Request) -> bool {
    let Request { head, body, .. } = req;
    let side = RequestSide {
        version: head.version,
        keep_alive: head.keep_alive,
        asked_keep_alive: head.asked_keep_alive,
    };
    let resp = Response::new(ctx.shared.clone(), conn.clone(), side, head.is_head());
    let sr = match Bound::new(py, StartResponse::new(resp)) {
        Ok(sr) => sr,
        Err(e) => {
            e.print(py);
            return true;
        }
    };
    let outcome = environ::build(py, &ctx.consts, conn, &head, body)
        .and_then(|env| ctx.app.bind(py).call1((env, &sr)))
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
    if let Err(err) = outcome {
        resp.abandon();
        let path = logged_path(&head.uri);
        if err.is_instance_of::<ClientDisconnected>(py) || resp.disconnected {
            let _ = ctx
                .logger
                .bind(py)
                .call_method1(intern!(py, "info"), (format!("Client disconnected while serving {path}"),));
            return true;
        }
        log_exception(py, &ctx.logger, &format!("Exception while serving {path}"), &err);
        if resp.wrote_header() {
            return true;
        }
        let body = if ctx.shared.cfg.expose_tracebacks {
            format_traceback(py, &err)
        } else {
            "The server encountered an unexpected internal server error".to_string()
        };
        let page = error_response(&HttpError::new(500, body), side.version, &ctx.shared.cfg.ident);
        let mut st = conn.st.lock();
        if st.phase == Phase::Serving {
            // What the socket does not take now is flushed by the reactor once finish()
            // hands the connection back.
            if let Err(e) = st.send(&[&page]) {
                ctx.shared.log_socket_error("sending an error response", &e);
                ctx.shared.close(conn, &mut st);
            }
        }
        return true;
    }
    if let (Some(cl), false) = (resp.content_length, resp.is_head) {
        let has_body = resp.framing.is_some_and(|f| f.has_body && !f.chunked);
        if has_body && resp.bytes_written != cl {
            log::warn!(target: "rswaitress",
                "application returned too few bytes ({}) for specified Content-Length ({}) via app_iter",
                resp.bytes_written, cl);
            return true;
        }
    }
    resp.close
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
