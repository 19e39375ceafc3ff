//! End-to-end tests: every test here starts real plugin processes.

#![allow(
    clippy::disallowed_types,
    reason = "tests: they open sockets directly to play the other side"
)]

mod cli;
mod corpus_rows;
mod datadir;
mod demo;
mod edges;
mod exits;
mod faults;
mod gate;
mod handshake;
mod hostconn;
mod hostserve;
mod interop;
mod lifecycle;
mod metrics;
mod sandbox;
mod supervision;
mod support;
mod trace;
