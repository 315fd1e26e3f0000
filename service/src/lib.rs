//! The file-pipeline service: library half (its own tests and the xtask's drive it in-process).

pub mod auth;
pub mod config;
pub mod decrypt;
pub mod error;
pub mod http;
pub mod metrics;
pub mod names;
pub mod processing;
pub mod queue;
pub mod request_id;
pub mod retrieval;
pub mod serve;
pub mod store;
pub mod tls;
pub mod upload;
