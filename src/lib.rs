//! ordersync keeps a trading bot's order table honest about its orders on Coinbase.
//!
//! Reading order: `config` (what to run with) -> `account` (whose key a row is asked with) -> `order` (the bot's row) -> `exchange` (what Coinbase
//! says) -> `decide` (the one decision) -> `db` (the one apply path over SQLite and PostgreSQL) ->
//! `reconcile` (the loop that joins them) -> `listen` (the real-time WebSocket feed into the same path) -> `metrics`, `http`, `alert`, `report` (how it is seen) -> `app` (the wiring) ->
//! `cli` (the commands). `sandbox` is the Coinbase simulator that the demo and the tests run against.

pub mod account;
pub mod alert;
pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod decide;
pub mod demo;
pub mod exchange;
pub mod http;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod order;
pub mod reconcile;
pub mod reload;
pub mod replica;
pub mod report;
pub mod sandbox;
pub mod systemd;
pub mod telemetry;
