//! Generated types and gRPC stubs for every Cairn protocol.
//!
//! Cairn's own APIs live under `cairn::<area>::v1`; external contracts that
//! existing clients rely on (WIRE.md) keep their own packages at the top level.

#![allow(clippy::all, missing_docs)]

/// Cairn's own APIs.
pub mod cairn {
    /// Produce, fetch, metadata and topics: the agent's APIs.
    pub mod agent {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("cairn.agent.v1");
        }
    }
    /// What every Cairn API shares: the machine-readable error reasons.
    pub mod common {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("cairn.common.v1");
        }
    }
    /// Telemetry records and the log reader's API.
    pub mod ingest {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("cairn.ingest.v1");
        }
    }
    /// How workers take steps from the orchestrator.
    pub mod orchestrator {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("cairn.orchestrator.v1");
        }
    }
    /// API keys and principals.
    pub mod auth {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("cairn.auth.v1");
        }
    }
}

/// Junjo-compatible ingestion and auth contract (WIRE.md §1).
pub mod ingestion {
    tonic::include_proto!("ingestion");
}

/// tasker-core's `tasker.v1` orchestration API, wire-compatible field for
/// field (WIRE-tasker.md): clients generated from tasker-core's own files
/// call Cairn's orchestrator unchanged.
pub mod tasker {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("tasker.v1");
    }
}

/// Protobuf well-known types, as the generated code uses them.
pub use prost_types::{Duration, Timestamp};

/// Encoded `FileDescriptorSet` of every proto above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cairn_descriptor");
