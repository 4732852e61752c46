//! End-to-end tests against the real `sonde` binary on free loopback ports.

mod alerting;
mod auth;
mod flight;
mod grafana;
mod harness;
mod ingest;
mod load;
mod maintain;
mod objstore;
mod otlp;
mod promql;
mod remote_write;
mod rollups;
mod slt;
mod sql;
