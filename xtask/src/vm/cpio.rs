//! The initramfs archive: a cpio in the "newc" format the kernel unpacks, gzipped.
//!
//! The headers are the `cpio` crate's (newc, every file type and mode; pure Rust, no
//! dependencies). What is ours is the tree: a parent directory for every path, entries
//! in an order that creates parents first, and the gzip step.
use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use ::cpio::newc::{trailer, Builder as Header, ModeFileType as FileType};
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
    fn write_to<W: Write>(&self, mut out: W) -> Result<()> {
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            out = write_entry(out, ino as u32 + 1, path, entry)?;
        }
        trailer(out)?.flush()?;
        Ok(())
    }
}

/// One entry, owned by root, with no mtime, so the same tree makes the same archive.
fn write_entry<W: Write>(out: W, ino: u32, path: &str, entry: &Entry) -> Result<W> {
    let header = Header::new(path).ino(ino);
    let (header, data): (Header, &[u8]) = match entry {
        // A directory's "." and its name. The kernel reads nlink only on regular files,
        // to find hard links: theirs stays the crate's 1, each file its own.
        Entry::Dir => (
            header
                .mode(0o755)
                .set_mode_file_type(FileType::Directory)
                .nlink(2),
            &[],
        ),
        Entry::File { mode, data } => (
            header.mode(*mode).set_mode_file_type(FileType::Regular),
            data,
        ),
        Entry::CharDevice {
            mode,
            rdev: (major, minor),
        } => (
            header
                .mode(*mode)
                .set_mode_file_type(FileType::Char)
                .rdev_major(*major)
                .rdev_minor(*minor),
            &[],
        ),
    };
    let size = u32::try_from(data.len()).context("file too large for cpio")?;
    let mut writer = header.write(out, size);
    writer.write_all(data)?;
    Ok(writer.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read back what the kernel will unpack: every entry, parents first, with its type,
    /// permissions, links, device numbers and data.
    #[test]
    fn archive_of_a_tree() {
        let mut root = Cpio::default();
        root.file("/init", 0o755, b"abcde".to_vec());
        root.char_device("/dev/console", 0o600, (5, 1));
        let mut archive = Vec::new();
        root.write_to(&mut archive).unwrap();
        // newc pads each header+name and each file's data to four bytes.
        assert_eq!(archive.len() % 4, 0);

        let mut rest = archive.as_slice();
        let mut entries = Vec::new();
        loop {
            let mut reader = ::cpio::NewcReader::new(rest).unwrap();
            let e = reader.entry().clone();
            if e.is_trailer() {
                break;
            }
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
            entries.push((
                e.name().to_string(),
                e.ino(),
                e.mode(),
                e.nlink(),
                (e.rdev_major(), e.rdev_minor()),
                data,
            ));
            rest = reader.finish().unwrap();
        }
        assert_eq!(
            entries,
            [
                ("dev".into(), 1, 0o040_755, 2, (0, 0), vec![]),
                ("dev/console".into(), 2, 0o020_600, 1, (5, 1), vec![]),
                ("init".into(), 3, 0o100_755, 1, (0, 0), b"abcde".to_vec()),
            ]
        );
    }
}
