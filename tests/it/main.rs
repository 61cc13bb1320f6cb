//! One integration-test binary (faster to link than one per file); one file per capability.

mod harness;

mod accounts;
mod alerting;
pub mod cli;
mod coinbase;
mod email;
mod faultrun;
mod grafana;
mod http;
mod packaging;
mod production;
mod reconcile;
mod replicas;
mod report;
mod schema;
mod sli;
mod tidy;
mod websocket;
