//! Build the eBPF object with aya-build and embed it in the agent binary.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Fuzzing and docs need the library, not the eBPF object: embed an empty one;
        // loading it fails with a message that says why.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tcptrace");
        if !out.exists() {
            std::fs::write(out, [])?;
        }
    }
    let metadata = cargo_metadata()?;
    let ebpf = Package {
        name: "tcptrace-ebpf",
        root_dir: &metadata,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default()).context(
        "building the eBPF object failed; run `cargo xtask setup` to install the nightly \
         rust-src component and bpf-linker",
    )
}

/// Directory of the eBPF crate, next to this one in the workspace.
fn cargo_metadata() -> anyhow::Result<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let path = std::path::Path::new(&dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("tcptrace-ebpf");
    Ok(path.to_string_lossy().into_owned())
}
