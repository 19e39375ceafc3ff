//! End-to-end tests: every test here starts real plugin processes.

mod cli;
mod corpus_rows;
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
