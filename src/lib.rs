//! rhaiflow: a workflow orchestrator in the model of Apache Airflow whose DAG files are Rhai scripts.
//!
//! See `ARCHITECTURE.md` for the map of modules and the rules between them.

pub mod alert;
pub mod app;
pub mod cli;
pub mod config;
pub mod executor;
pub mod graph;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod operators;
pub mod port;
pub mod schedule;
pub mod scheduler;
pub mod script;
pub mod store;
pub mod web;
pub mod worker;
