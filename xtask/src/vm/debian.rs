//! Debian kernel packages: the newest image of a series from the archive's Packages
//! indexes, downloaded, checked against the index's SHA256 and kept in a cache with only
//! its vmlinuz and config, so a rerun downloads nothing.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{cache_dir, Kernel};
use crate::run_cmd;

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// Without these the guest cannot start, print, or load the agent: no modules are
/// loaded, so each must be built in (=y).
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_DEVTMPFS",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_IPV6",
];
/// The cloud flavour first (what cloud nodes run, fewer drivers to probe while booting);
/// the generic flavour is the fallback.
pub(super) const FLAVOURS: &[&str] = &["cloud-amd64", "amd64"];

/// A kernel ready to boot, from the cache.
pub(super) struct KernelImage {
    pub(super) vmlinuz: PathBuf,
    pub(super) package: String,
    pub(super) version: String,
}

/// One stanza of a Packages index.
struct Deb {
    package: String,
    version: String,
    filename: String,
    sha256: String,
    mirror: &'static str,
}

/// The newest kernel of this series and flavour, from the cache unless `refresh`.
pub(super) fn fetch_kernel(kernel: Kernel, flavour: &str, refresh: bool) -> Result<KernelImage> {
    let dir = cache_dir().join(kernel.suite()).join(flavour);
    let cached = read_cached(&dir);
    match cached {
        Some(image) if !refresh => {
            kernel.say(&format!("{} {} cached", image.package, image.version));
            return Ok(image);
        }
        _ => {}
    }
    let deb = newest_deb(kernel, flavour)?;
    if let Some(image) = cached.filter(|c| c.package == deb.package && c.version == deb.version) {
        kernel.say(&format!("{} {} cached (newest)", deb.package, deb.version));
        return Ok(image);
    }
    download_into_cache(&deb, &dir)?;
    kernel.say(&format!("{} {} downloaded", deb.package, deb.version));
    read_cached(&dir).context("kernel extracted but not readable from the cache")
}

/// Download, verify and unpack `deb` into the cache entry `dir`, marking it complete
/// last (see `read_cached`).
fn download_into_cache(deb: &Deb, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("kernel.deb");
    let url = format!("{}/{}", deb.mirror, deb.filename);
    run_cmd(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&file)
            .arg(&url),
    )?;
    verify_sha256(&file, &deb.sha256)?;
    extract_kernel(&file, dir)?;
    std::fs::remove_file(&file).ok();
    check_config(&dir.join("config"))?;
    std::fs::write(
        dir.join("kernel.txt"),
        format!("{} {}\n", deb.package, deb.version),
    )?;
    Ok(())
}

/// A complete cache entry: `kernel.txt` is written last, so its presence means the
/// vmlinuz beside it was verified and its config checked.
fn read_cached(dir: &Path) -> Option<KernelImage> {
    let text = std::fs::read_to_string(dir.join("kernel.txt")).ok()?;
    let (package, version) = text.trim().split_once(' ')?;
    let vmlinuz = dir.join("vmlinuz");
    vmlinuz.exists().then(|| KernelImage {
        vmlinuz,
        package: package.to_string(),
        version: version.to_string(),
    })
}

/// Newest matching package across the suite and its security pocket (where point
/// releases lag behind kernel security updates).
fn newest_deb(kernel: Kernel, flavour: &str) -> Result<Deb> {
    let suite = kernel.suite();
    let indexes = [
        (MIRROR, format!("{MIRROR}/dists/{suite}")),
        (
            SECURITY_MIRROR,
            format!("{SECURITY_MIRROR}/dists/{suite}-security"),
        ),
    ];
    let mut best: Option<Deb> = None;
    for (mirror, dists) in indexes {
        let index = packages_index(&format!("{dists}/main/binary-amd64/Packages.xz"))?;
        for deb in parse_packages(&index, mirror) {
            if !is_kernel_image(&deb.package, kernel.series(), flavour) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| version_newer(&deb.version, &b.version))
            {
                best = Some(deb);
            }
        }
    }
    best.with_context(|| {
        format!(
            "no linux-image-{}.*-{flavour} in {suite} or {suite}-security",
            kernel.series()
        )
    })
}

/// `linux-image-<abi>-<flavour>` whose ABI is of this series. The ABI is digits, dots,
/// dashes and a `+debNN` tag; any other word in it is another flavour (cloud, rt), which
/// matters because "amd64" is also the tail of "cloud-amd64".
fn is_kernel_image(package: &str, series: &str, flavour: &str) -> bool {
    let Some(abi) = package
        .strip_prefix("linux-image-")
        .and_then(|rest| rest.strip_suffix(&format!("-{flavour}")))
    else {
        return false;
    };
    abi.starts_with(&format!("{series}."))
        && abi
            .replace("deb", "")
            .chars()
            .all(|c| c.is_ascii_digit() || ".-+".contains(c))
}

/// A Packages.xz index, decompressed by xz as it downloads.
fn packages_index(url: &str) -> Result<String> {
    let mut curl = Command::new("curl")
        .args(["-fsSL", "--retry", "3", url])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting curl")?;
    let out = Command::new("xz")
        .arg("-dc")
        .stdin(curl.stdout.take().context("curl stdout")?)
        .output()
        .context("starting xz")?;
    let fetched = curl.wait().context("waiting for curl")?;
    if !fetched.success() || !out.status.success() || out.stdout.is_empty() {
        bail!(
            "downloading {url} failed (curl {fetched}, xz {})",
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_packages(index: &str, mirror: &'static str) -> Vec<Deb> {
    index
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .map(str::to_string)
            };
            Some(Deb {
                package: field("Package")?,
                version: field("Version")?,
                filename: field("Filename")?,
                sha256: field("SHA256")?,
                mirror,
            })
        })
        .collect()
}

/// Debian version order (epochs, `~`, revisions) is dpkg's to define.
fn version_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

fn verify_sha256(file: &Path, want: &str) -> Result<()> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("starting sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let got = text.split_whitespace().next().unwrap_or_default();
    if got != want {
        std::fs::remove_file(file).ok();
        bail!(
            "{}: SHA256 {got} does not match the index's {want}",
            file.display()
        );
    }
    Ok(())
}

/// Keep only boot/vmlinuz-* and boot/config-* of the package; the modules are not needed
/// (everything the guest uses is built in, see REQUIRED_CONFIG).
fn extract_kernel(deb: &Path, dir: &Path) -> Result<()> {
    let tree = dir.join("extract");
    std::fs::remove_dir_all(&tree).ok();
    run_cmd(Command::new("dpkg").arg("-x").arg(deb).arg(&tree))?;
    for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("config-", "config")] {
        let found = std::fs::read_dir(tree.join("boot"))?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .with_context(|| format!("no boot/{prefix}* in {}", deb.display()))?;
        std::fs::rename(found.path(), dir.join(name))?;
    }
    std::fs::remove_dir_all(&tree).ok();
    Ok(())
}

fn check_config(config: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let missing: Vec<&str> = REQUIRED_CONFIG
        .iter()
        .copied()
        .filter(|option| !text.lines().any(|l| l == format!("{option}=y")))
        .collect();
    if !missing.is_empty() {
        bail!("kernel config lacks {}", missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages_of_one_flavour_and_series() {
        assert!(is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64",
            "6.1",
            "cloud-amd64"
        ));
        assert!(is_kernel_image(
            "linux-image-6.1.0-56-amd64",
            "6.1",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64",
            "6.1",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-rt-amd64",
            "6.1",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.12.117+deb12-amd64",
            "6.1",
            "amd64"
        ));
        assert!(is_kernel_image(
            "linux-image-6.12.117+deb13-amd64",
            "6.12",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "6.1",
            "cloud-amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "6.1",
            "cloud-amd64"
        ));
    }
}
