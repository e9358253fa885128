//! Typed settings, read once from the validated Python `Adjustments` object.

use std::time::Duration;

use pyo3::prelude::*;

#[derive(Debug, Clone)]
pub struct Config {
    pub threads: usize,
    pub url_scheme: String,
    pub url_prefix: String,
    pub ident: String,
    pub outbuf_overflow: usize,
    pub outbuf_high_watermark: usize,
    pub inbuf_overflow: usize,
    pub connection_limit: usize,
    pub cleanup_interval: Duration,
    pub channel_timeout: Duration,
    pub log_socket_errors: bool,
    pub max_request_header_size: usize,
    pub max_request_body_size: u64,
    pub expose_tracebacks: bool,
    pub channel_request_lookahead: usize,
    pub recv_bytes: usize,
    pub server_name: String,
    /// Drop Forwarded / X-Forwarded-* from every environ: no proxy is trusted and clearing
    /// untrusted proxy headers is on (Waitress's default). When a proxy is trusted the
    /// Python proxy-headers middleware does this work instead.
    pub drop_proxy_headers: bool,
    /// Accept HTTP/1.1 requests without a Host header (RFC 9112 says 400; Waitress
    /// accepts them). Off by default.
    pub allow_missing_host: bool,
    /// How long a graceful stop waits for requests in progress before closing them.
    pub graceful_timeout: Duration,
    /// Requests after which this process stops gracefully to be replaced (0: never).
    pub max_requests: u64,
    /// `wsgi.multiprocess`: the server runs in several worker processes.
    pub multiprocess: bool,
    /// The access log's format, when the access log is on.
    pub access_log: Option<std::sync::Arc<crate::access_log::Format>>,
    /// TLS on the TCP listeners (ssl_certfile & co.), when ssl_certfile is set.
    pub tls: Option<crate::tls::Settings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threads: 4,
            url_scheme: "http".into(),
            url_prefix: String::new(),
            ident: "rswaitress".into(),
            outbuf_overflow: 1_048_576,
            outbuf_high_watermark: 16_777_216,
            inbuf_overflow: 524_288,
            connection_limit: 100,
            cleanup_interval: Duration::from_secs(30),
            channel_timeout: Duration::from_secs(120),
            log_socket_errors: true,
            max_request_header_size: 262_144,
            max_request_body_size: 1_073_741_824,
            expose_tracebacks: false,
            channel_request_lookahead: 0,
            recv_bytes: 65_536,
            server_name: "waitress.invalid".into(),
            drop_proxy_headers: true,
            allow_missing_host: false,
            graceful_timeout: Duration::from_secs(30),
            max_requests: 0,
            multiprocess: false,
            access_log: None,
            tls: None,
        }
    }
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(if v.is_finite() && v > 0.0 { v } else { 0.0 })
}

impl Config {
    /// Reads every setting the core uses from an `Adjustments` instance.
    pub fn from_adjustments(adj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let get_usize = |name: &str| -> PyResult<usize> { adj.getattr(name)?.extract::<usize>() };
        let get_f64 = |name: &str| -> PyResult<f64> { adj.getattr(name)?.extract::<f64>() };
        let get_bool = |name: &str| -> PyResult<bool> { adj.getattr(name)?.is_truthy() };
        let get_str = |name: &str| -> PyResult<String> {
            let v = adj.getattr(name)?;
            if v.is_none() {
                Ok(String::new())
            } else {
                v.extract::<String>()
            }
        };
        Ok(Config {
            threads: get_usize("threads")?.max(1),
            url_scheme: get_str("url_scheme")?,
            url_prefix: get_str("url_prefix")?,
            ident: get_str("ident")?,
            outbuf_overflow: get_usize("outbuf_overflow")?,
            outbuf_high_watermark: get_usize("outbuf_high_watermark")?.max(1),
            inbuf_overflow: get_usize("inbuf_overflow")?,
            connection_limit: get_usize("connection_limit")?.max(1),
            cleanup_interval: secs(get_f64("cleanup_interval")?),
            channel_timeout: secs(get_f64("channel_timeout")?),
            log_socket_errors: get_bool("log_socket_errors")?,
            max_request_header_size: get_usize("max_request_header_size")?.max(1),
            max_request_body_size: adj.getattr("max_request_body_size")?.extract::<u64>()?,
            expose_tracebacks: get_bool("expose_tracebacks")?,
            channel_request_lookahead: get_usize("channel_request_lookahead")?,
            recv_bytes: get_usize("recv_bytes")?.clamp(4096, 1 << 20),
            server_name: get_str("server_name")?,
            drop_proxy_headers: adj.getattr("trusted_proxy")?.is_none()
                && get_bool("clear_untrusted_proxy_headers")?
                && !get_bool("log_untrusted_proxy_headers")?,
            allow_missing_host: get_bool("allow_missing_host")?,
            graceful_timeout: secs(get_f64("graceful_timeout")?),
            // Set on the copy of the settings a worker process gets (with its jitter).
            max_requests: adj.getattr("max_requests")?.extract::<u64>()?,
            multiprocess: get_usize("workers")? > 1,
            access_log: if get_bool("access_log")? {
                let text = get_str("access_log_format")?;
                let format = crate::access_log::Format::parse(&text).map_err(|e| {
                    pyo3::exceptions::PyValueError::new_err(format!("access_log_format: {e}"))
                })?;
                Some(std::sync::Arc::new(format))
            } else {
                None
            },
            tls: tls_settings(adj)?,
        })
    }
}

/// The `ssl_*` settings (already checked by the adjustments), when ssl_certfile is set.
pub fn tls_settings(adj: &Bound<'_, PyAny>) -> PyResult<Option<crate::tls::Settings>> {
    let opt = |name: &str| -> PyResult<Option<String>> { adj.getattr(name)?.extract::<Option<String>>() };
    let Some(certfile) = opt("ssl_certfile")? else { return Ok(None) };
    let reqs = opt("ssl_cert_reqs")?.unwrap_or_default();
    let cert_reqs = match reqs.as_str() {
        "required" => crate::tls::CertReqs::Required,
        "optional" => crate::tls::CertReqs::Optional,
        _ => crate::tls::CertReqs::None,
    };
    Ok(Some(crate::tls::Settings {
        certfile,
        keyfile: opt("ssl_keyfile")?,
        password: opt("ssl_keyfile_password")?,
        ca_certs: opt("ssl_ca_certs")?,
        cert_reqs,
        tls13_only: opt("ssl_min_version")?.as_deref() == Some("TLSv1.3"),
    }))
}

impl Config {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}
