//! Compiles the protos with protox (no system `protoc`) and writes the
//! descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/numbering/v1/allocator.proto",
        "proto/numbering/v1/invoices.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("numbering_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Type names let the codec tell a request (the caller's fault when it
    // does not decode) from a reply.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_fds_with_config(descriptors, config)?;

    println!("cargo:rerun-if-changed=proto");
    // Printing our own rerun lines stops Cargo from rerunning on any change,
    // so name the migrations too: `sqlx::migrate!` must see new ones.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
