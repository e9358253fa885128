"""rswaitress: a WSGI server with a Rust core, a drop-in replacement for Waitress."""
