//! Generated messages and gRPC stubs of the `numbering.v1` package.
#![allow(missing_docs, clippy::pedantic)]

tonic::include_proto!("numbering.v1");

/// Encoded descriptors of the `numbering.v1` protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("numbering_descriptor");
