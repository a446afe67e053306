//! The initramfs archive: a cpio in the "newc" format the kernel unpacks, gzipped.
use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The guest's root as a tree of entries; parent directories are added for every path.
#[derive(Default)]
pub(super) struct Cpio {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    CharDevice { mode: u32, rdev: (u32, u32) },
}

impl Cpio {
    fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(dir.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.to_string(), entry);
    }

    pub(super) fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.add(path, Entry::File { mode, data });
    }

    /// Copy a host file (following symlinks) to `path`, keeping its permission bits.
    pub(super) fn file_from(&mut self, host: &Path, path: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(path, mode, data);
        Ok(())
    }

    pub(super) fn char_device(&mut self, path: &str, mode: u32, rdev: (u32, u32)) {
        self.add(path, Entry::CharDevice { mode, rdev });
    }

    /// The archive through `gzip -1` (the kernel's initramfs decompressor needs no
    /// better, and it is the fastest) into `out`.
    pub(super) fn write_gzip(&self, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut gzip = Command::new("gzip")
            .arg("-1")
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("starting gzip")?;
        let stdin = gzip.stdin.take().context("gzip stdin")?;
        self.write_to(std::io::BufWriter::new(stdin))?;
        let status = gzip.wait()?;
        if !status.success() {
            bail!("gzip failed ({status})");
        }
        Ok(())
    }

    /// Parents sort before their children (a prefix sorts first), as unpacking needs.
    fn write_to(&self, mut out: impl Write) -> Result<()> {
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040_755, &[], (0, 0)),
                Entry::File { mode, data } => (0o100_000 | mode, data, (0, 0)),
                Entry::CharDevice { mode, rdev } => (0o020_000 | mode, &[], *rdev),
            };
            write_cpio_entry(&mut out, ino as u32 + 1, path, mode, data, rdev)?;
        }
        write_cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[], (0, 0))?;
        out.flush()?;
        Ok(())
    }
}

fn write_cpio_entry(
    out: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<()> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).context("file too large for cpio")?,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        header += &format!("{f:08x}");
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])?;
    Ok(())
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_four_byte_aligned() {
        let mut out = Vec::new();
        write_cpio_entry(&mut out, 1, "init", 0o100_755, b"abcde", (0, 0)).unwrap();
        // 110-byte header + "init\0" = 115, padded to 116; 5 data bytes padded to 8.
        assert_eq!(out.len(), 116 + 8);
        assert!(out.starts_with(b"070701"));
    }
}
