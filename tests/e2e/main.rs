//! End-to-end tests: every test here starts real plugin processes.

#![allow(
    clippy::disallowed_types,
    reason = "tests: they open sockets directly to play the other side"
)]

mod automtls;
mod bulk;
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
mod idle;
mod interop;
mod interop_inspect;
mod interop_real;
mod lane;
mod lifecycle;
mod metrics;
mod multiplex;
mod pool;
mod sandbox;
mod socket_group;
mod supervision;
mod support;
mod trace;
mod verified;
