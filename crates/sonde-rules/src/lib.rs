//! Alerting and recording rules.
//!
//! - [`config`]: rule files (Prometheus' rule-group YAML plus Sonde's `sql:`, `spike:`
//!   and `budget:` forms), validated with `file:line` errors;
//! - [`eval`]: evaluation of one rule at a given time and the alert state machine
//!   (inactive → pending → firing → resolved, `for`, `keep_firing_for`, no-data);
//! - [`notify`]: routing, grouping and delivery to webhooks and Alertmanager;
//! - [`manager`]: scheduling per group, persistence, reload, APIs and metrics.

pub mod config;
pub mod eval;
pub mod manager;
pub mod notify;
pub mod template;

pub use config::{Group, RuleError, parse_rules};
pub use eval::{Backend, Labels};
pub use manager::{AlertingConfig, Manager};
