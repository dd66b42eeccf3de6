//! End to end with the real components (issue 19): our Go plugins, published
//! through the real `plugin-api` into a real MinIO, synced by the real
//! `kuiper-node` into the base directory of a stock eKuiper v2.4.0 (kuiperd,
//! built from source by `harness/go/build.sh`), and checked through eKuiper's
//! own REST API and the records its rules write. Nothing is faked: a missing
//! Go toolchain, MinIO or kuiperd fails these tests, with the build's output.

mod common;

mod fingerprint;
mod fleet;
mod gate;
mod lifecycle;
mod parity;
mod supervised;
