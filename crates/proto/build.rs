//! Compiles `../../proto` with protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // At run time, not `env!`: a build-script binary reused from another
    // checkout of the same sources (shared target dir) must not look there.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest).join("../../proto");
    let files = [
        "posthorn/common/v1/envelope.proto",
        "posthorn/router/v1/router.proto",
        "posthorn/resolver/v1/resolver.proto",
        "posthorn/queue/v1/queue.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
