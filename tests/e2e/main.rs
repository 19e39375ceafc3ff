//! End-to-end tests: every test here starts real plugin processes.

mod handshake;
mod lifecycle;
mod support;
