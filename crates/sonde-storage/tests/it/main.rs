//! Storage integration tests: one binary, one module per area, each driving a real
//! `Storage` on a temporary directory (or the power-loss simulator).

mod common;
mod corruption;
mod crash;
mod maintain;
mod open_format;
mod order;
mod power_loss;
mod reopen;
mod rollups;
mod small_metrics;
