//! A serverless, S3-backed native plugin registry for eKuiper edge nodes.
//!
//! - [`api`]: the HTTP edge; `api::app` is the route table shared by Lambda,
//!   the local server and the tests.
//! - [`registry`]: the domain (create, list, describe, update, delete, udfs)
//!   and the commit protocol over the [`store::Store`] trait.
//! - [`package`]: zip and ELF rules, names and versions; pure functions.
//! - [`fetch`]: outbound HTTP (downloads, callbacks) with limits.
//! - [`store`]: the `Store` trait, the bucket layout, the local and S3 backends.
//! - [`config`]: environment variables and flags.
//! - [`server`]: wiring config -> store -> registry -> router, for the binaries.
//! - [`fleet`]: node reports in the store, and their drift from the registry.
//! - [`node`]: the node agent (`kuiper-node`): sync a node's directory and load its plugins.

pub mod api;
pub mod config;
pub mod fetch;
pub mod fleet;
pub mod node;
pub mod package;
pub mod registry;
pub mod server;
pub mod store;
