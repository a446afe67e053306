//! Rebuild the eBPF object when bpf-linker changes (for example after `cargo xtask setup`
//! rebuilt it against a new LLVM).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
