//! Test support for kuiper-registry: real peers on loopback.
//!
//! - [`files::FileHost`]: a wiremock file host serving zips or failing on purpose.
//! - [`callbacks::CallbackSink`]: a wiremock callback target that records calls.
//! - [`raw::RawHost`]: a TCP host that answers with exact bytes (lying lengths, stalls).
//! - [`zips::ZipBuilder`]: builds valid, malformed and malicious zips.
//! - [`s3::S3Server`]: an in-process S3-protocol server (s3s + s3s-fs) with SigV4.
//! - [`rig`], [`minio::Minio`]: the real-component rig (stock kuiperd, Go plugins,
//!   MinIO) built by `harness/go/build.sh`, a MinIO server on loopback, and
//!   [`ekuiper::Kuiperd`], a stock eKuiper node.
//! - [`lambda_runtime::RuntimeApi`]: a Lambda Runtime API emulator feeding HTTP
//!   events to a function; [`lambda_round_trip`]: what every build of the
//!   function must answer; [`lambda_tools`]: cargo-lambda, zig and qemu-aarch64.
//! - [`plugins`]: real `.so` plugins compiled from the example crates, and
//!   from the C example `c-plugin/plugin.c` with `cc`.

pub mod auth;
pub mod callbacks;
pub mod ekuiper;
pub mod files;
pub mod lambda_round_trip;
pub mod lambda_runtime;
pub mod lambda_tools;
pub mod minio;
pub mod plugins;
pub mod raw;
pub mod rig;
pub mod s3;
pub mod zips;
