//! End-to-end tests against the real `sonde` binary on free loopback ports.

mod harness;
mod ingest;
mod remote_write;
