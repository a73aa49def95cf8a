//! Compiles every `.proto` under `proto/` in one pass with a vendored `protoc`,
//! so a fresh machine needs no protoc install.

use std::{env, error::Error, path::PathBuf};

const PROTOS: &[&str] = &[
    "cairn/agent/v1/agent.proto",
    "cairn/auth/v1/auth.proto",
    "cairn/common/v1/errors.proto",
    "cairn/ingest/v1/ingest.proto",
    "cairn/orchestrator/v1/worker.proto",
    "ingestion/ingestion.proto",
    "tasker/v1/analytics.proto",
    "tasker/v1/common.proto",
    "tasker/v1/config.proto",
    "tasker/v1/dlq.proto",
    "tasker/v1/health.proto",
    "tasker/v1/steps.proto",
    "tasker/v1/tasks.proto",
    "tasker/v1/templates.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Clients are built on `cairn_client` channels, never with the
        // generated `connect` constructor (which would also clash with the
        // worker stream's `Connect` RPC).
        .build_transport(false)
        // A producer's batch frame is a slice of the decode buffer, not a
        // copy of it: the agent checks it and copies it once, into the WAL.
        .bytes(".cairn.agent.v1.ProduceRequest.frame")
        .file_descriptor_set_path(out.join("cairn_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
