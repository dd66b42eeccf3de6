//! End-to-end tests of `kuiper-node`: plugins are published through the real
//! `plugin-api` router (over a local store, a real S3-protocol server and
//! MinIO), then the real `kuiper-node` binary syncs a node directory from the
//! same store and loads real libraries (Rust `cdylib`s and C built with `cc`).
//! Assertions are on what a user sees: the JSON report, exit codes, files on disk.

#[macro_use]
mod common;

mod abi;
mod conflicts;
mod crash;
mod fleet;
mod incremental;
mod lifecycle;
mod links;
mod markers;
mod memory;
mod ownership;
mod scripts;
mod verify;
