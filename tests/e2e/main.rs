//! End-to-end tests: every test here starts real plugin processes.

mod handshake;
mod hostconn;
mod lifecycle;
mod support;
