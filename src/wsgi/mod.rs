//! The WSGI side: environ, wsgi.input, start_response, file_wrapper, and the worker loop.

pub mod environ;
pub mod file_wrapper;
pub mod input;
pub mod response;
pub mod start_response;
pub mod worker;
