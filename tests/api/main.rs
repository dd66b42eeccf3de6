//! Black-box tests of the plugin REST API: the real router served on
//! 127.0.0.1:0, over the local store, a real S3-protocol server and MinIO,
//! downloading real zips of real `.so` files from a wiremock file host.

#[macro_use]
mod common;

mod auth;
mod callbacks;
mod corpus;
mod create;
mod delete;
mod disagreement;
mod faults;
mod fingerprints;
mod functions;
mod limits;
mod listing;
mod minio;
mod nodes;
mod persistence;
mod races;
mod reference;
mod ssrf;
mod update;
mod validation;
