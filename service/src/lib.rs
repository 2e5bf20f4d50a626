//! medinfer's HTTP API as plain async functions over [`http`] types and small ports.
//!
//! The hosts — the native server (`medinfer serve`) and the Spin component — read a request
//! (bounded by [`Service::body_limit`]), call [`Service::handle`] with their key-value store,
//! and write the response. This crate names no HTTP server, async runtime or Spin API.
//!
//! - [`api`]: routing, auth, handlers; [`input`]: request bodies → images;
//! - [`auth`]: JWT verification and roles; [`config`]: secrets and limits;
//! - [`results`]: stored results and their indexes; [`audit`]: the hash-chained audit log;
//! - [`kv`]: the key-value port; [`platform`]: clock and randomness; [`models`]: model folders.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod input;
pub mod kv;
pub mod models;
pub mod platform;
pub mod results;

pub use api::{Body, OPENAPI, ROUTES, Service, error_response};
pub use config::Config;
pub use error::ApiError;
pub use kv::{KeyValue, MemoryKv, StoreError};
pub use platform::{Platform, SystemPlatform};
