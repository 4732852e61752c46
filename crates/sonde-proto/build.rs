//! Generates Rust code for proto/ with a protoc shipped inside a crate, so a fresh
//! machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe_env_protoc(&protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("sonde/v1/ingest.proto"),
        root.join("prometheus/remote.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_protoc(path: &std::path::Path) {
    // set_var is unsafe in edition 2024 because of other threads; a build script has none.
    unsafe { std::env::set_var("PROTOC", path) };
}
