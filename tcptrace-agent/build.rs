//! Build the eBPF object with aya-build and embed it in the agent binary.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Fuzzing and docs need the library, not the eBPF object: embed an empty one;
        // loading it fails with a message that says why.
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("tcptrace");
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
    )?;
    strip_dwarf(&PathBuf::from(std::env::var("OUT_DIR")?).join("tcptrace"))
}

/// Drop the object's DWARF (`.debug_*` and their relocations), 3.7 of its 4.3 MB: the
/// kernel and aya read its BTF and never its DWARF (which the BPF backend needed only
/// to write the BTF), but aya's parse gathers every section's relocations all the same,
/// which cost the agent 2.5 MB of the object's pages and 2.9 MB of heap at load.
fn strip_dwarf(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.is_empty() {
        return Ok(()); // AYA_BUILD_SKIP
    }
    let mut elf = object::build::elf::Builder::read(&*data).context("reading the eBPF object")?;
    for section in &mut elf.sections {
        let name = section.name.as_slice();
        section.delete = name.starts_with(b".debug_") || name.starts_with(b".rel.debug_");
    }
    elf.delete_orphans();
    // LLVM names sections from the symbol string table; the writer wants a table of
    // its own for them.
    let names = elf.sections.add();
    names.name = b".shstrtab"[..].into();
    names.sh_type = object::elf::SHT_STRTAB;
    names.data = object::build::elf::SectionData::SectionString;
    let mut out = Vec::new();
    elf.write(&mut out)
        .context("writing the eBPF object without DWARF")?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
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
