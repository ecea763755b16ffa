//! Generated messages and gRPC stubs of the `numbering.v1` package.
#![allow(missing_docs, clippy::pedantic)]

tonic::include_proto!("numbering.v1");

/// Encoded descriptors of the `numbering.v1` protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("numbering_descriptor");

/// A point in time as the protos carry it.
#[must_use]
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
