//! The loop each pool thread runs: wait for a request without the GIL, then build the
//! environ, call the application, send what it returns, and always close its iterable.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::connection::{Conn, Request};
use crate::http::response::{error_response, RequestSide};
use crate::http::request::{percent_decode, split_target};
use crate::http::HttpError;
use crate::logging;
use crate::reactor::{Next, Shared};
use crate::wsgi::environ::{self, EnvConsts};
use crate::wsgi::file_wrapper::{inspect, FileWrapper, Wrapped};
use crate::wsgi::start_response::{ClientDisconnected, Response, StartResponse};

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
                shared.idle_workers.fetch_add(1, Ordering::Relaxed);
                let task = py.allow_threads(|| shared.tasks_rx.recv());
                shared.idle_workers.fetch_sub(1, Ordering::Relaxed);
                task
            }
        };
        let Ok(Some(task)) = task else { break };
        let conn = task.conn;
        let mut next = Some(task.req);
        while let Some(req) = next.take() {
            let close = serve(py, ctx, &conn, req);
            next = finish(shared, &conn, close);
        }
        // Signal handlers run only on the main thread, so nothing to carry over here.
        let _ = logging::deliver(py);
    }
}

/// Hands the connection back after a response: the next pipelined request if one is
/// complete (served by this worker at once), or to the reactor.
fn finish(shared: &Shared, conn: &Conn, close: bool) -> Option<Request> {
    let mut st = conn.st.lock();
    st.busy = false;
    if close {
        st.close_after_flush = true;
    }
    match shared.advance(conn, &mut st) {
        Next::Serve(req) => {
            st.busy = true;
            Some(req)
        }
        Next::Wait | Next::Closed => None,
    }
}

/// Serves one request; returns whether the connection must close afterwards.
fn serve(py: Python<'_>, ctx: &WorkerCtx, conn: &Arc<Conn>, req: Request) -> bool {
    let Request { head, body } = req;
    let side = RequestSide {
        version: head.version,
        keep_alive: head.keep_alive,
        asked_keep_alive: head.asked_keep_alive,
    };
    let is_head = head.is_head();
    let resp = Response::new(ctx.shared.clone(), conn.clone(), side, is_head);
    let sr = match Bound::new(py, StartResponse { resp }) {
        Ok(sr) => sr,
        Err(e) => {
            e.print(py);
            return true;
        }
    };
    let outcome = environ::build(py, &ctx.consts, conn, &head, body)
        .and_then(|env| ctx.app.bind(py).call1((env, &sr)))
        .and_then(|iterable| {
            let sent = send_body(py, &sr, &iterable);
            let closed = close_iterable(py, &iterable);
            sent.and(closed)
        })
        .and_then(|_| sr.borrow_mut().resp.finish(py));

    let mut sr = sr.borrow_mut();
    let resp = &mut sr.resp;
    if let Err(err) = outcome {
        let path = logged_path(&head.uri);
        if err.is_instance_of::<ClientDisconnected>(py) || resp.disconnected {
            let _ = ctx.logger.bind(py).call_method1(
                intern!(py, "info"),
                (format!("Client disconnected while serving {path}"),),
            );
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
        if !st.closed {
            // What the socket does not take now is flushed once finish() hands the
            // connection back (advance() arms the poller for it).
            if let Err(e) = st.send(&conn.sock, &[&page]) {
                ctx.shared.log_socket_error("sending an error response", &e);
                ctx.shared.close_locked(conn, &mut st);
            }
        }
        return true;
    }
    if let (Some(cl), false) = (resp.content_length, is_head) {
        let has_body = resp.framing.map_or(false, |f| f.has_body && !f.chunked);
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
fn exc_info<'py>(py: Python<'py>, err: &PyErr) -> Bound<'py, pyo3::types::PyTuple> {
    let tb: PyObject = match err.traceback(py) {
        Some(tb) => tb.into_any().unbind(),
        None => py.None(),
    };
    pyo3::types::PyTuple::new(py, [err.get_type(py).into_any().unbind(), err.value(py).clone().into_any().unbind(), tb])
        .expect("a 3-tuple")
}

/// Logs `msg` at ERROR with the error's traceback, as logger.exception() would.
fn log_exception(py: Python<'_>, logger: &PyObject, msg: &str, err: &PyErr) {
    let kwargs = pyo3::types::PyDict::new(py);
    if kwargs.set_item(intern!(py, "exc_info"), exc_info(py, err)).is_ok() {
        let _ = logger.bind(py).call_method(intern!(py, "error"), (msg,), Some(&kwargs));
    }
}

fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let tb = py.import("traceback")?;
        let lines = tb.call_method1("format_exception", exc_info(py, err))?;
        let joined = pyo3::types::PyString::new(py, "").call_method1("join", (lines,))?;
        joined.extract()
    })();
    formatted.unwrap_or_else(|_| err.to_string())
}

/// Sends the application's body: a wrapped file as a file, a list item by item, any
/// other iterable as it yields.
fn send_body(py: Python<'_>, sr: &Bound<'_, StartResponse>, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(fw) = iterable.downcast::<FileWrapper>() {
        if sr.borrow().resp.status.is_some() {
            match inspect(py, &fw.borrow()) {
                Wrapped::File(region) => return sr.borrow_mut().resp.send_file(py, region),
                Wrapped::Seekable { len } => return send_seekable(py, sr, &fw.borrow(), len),
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
fn send_seekable(py: Python<'_>, sr: &Bound<'_, StartResponse>, fw: &FileWrapper, len: u64) -> PyResult<()> {
    let mut left = sr.borrow_mut().resp.set_file_length(len);
    let f = fw.filelike.bind(py);
    while left > 0 {
        let want = left.min(fw.block_size as u64);
        let block = f.call_method1(intern!(py, "read"), (want,))?;
        let mut me = sr.borrow_mut();
        let data = me.resp.expect_bytes(py, &block)?.as_bytes();
        if data.is_empty() {
            break;
        }
        let take = data.len().min(left as usize);
        left -= take as u64;
        me.resp.write(py, &data[..take])?;
    }
    Ok(())
}

fn write_chunk(
    py: Python<'_>,
    sr: &Bound<'_, StartResponse>,
    item: &Bound<'_, PyAny>,
    first: bool,
    only: bool,
) -> PyResult<()> {
    let mut me = sr.borrow_mut();
    let resp = &mut me.resp;
    let data = resp.expect_bytes(py, item)?.as_bytes();
    if first && only && resp.content_length.is_none() && resp.status.is_some() && !resp.wrote_header() {
        resp.content_length = Some(data.len() as u64);
    }
    if data.is_empty() {
        return Ok(());
    }
    resp.write(py, data)
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
