//! Spool and publish: a received data set is written to `data_dir/.incoming/` as it arrives,
//! then renamed into its layout path in one atomic step, so no partial file is ever visible.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::file_meta::FileMeta;

/// Spool directory under `data_dir`; on the same filesystem, so publishing is a rename.
pub const INCOMING_DIR: &str = ".incoming";
const SPOOL_SUFFIX: &str = ".part";
/// Large enough that a 16 KiB-PDU sender costs one write per ~16 fragments.
const WRITE_BUFFER: usize = 256 * 1024;

/// The storage root and its spool directory.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    incoming: PathBuf,
    durable: bool,
    next_id: AtomicU64,
}

impl Storage {
    /// Create `root` and its spool directory; remove spool files a crashed run left behind.
    pub fn open(root: &Path, durable: bool) -> io::Result<Storage> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let incoming = root.join(INCOMING_DIR);
        fs::create_dir_all(&incoming)?;
        for entry in fs::read_dir(&incoming)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == &SPOOL_SUFFIX[1..]) {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Storage {
            root,
            incoming,
            durable,
            next_id: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Start a spool file holding preamble and file meta.
    pub fn spool(&self, meta: &FileMeta<'_>) -> io::Result<Spool> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self
            .incoming
            .join(format!("{}-{id}{SPOOL_SUFFIX}", std::process::id()));
        let file = File::create(&path)?;
        // From here on, dropping the Spool removes the file.
        let mut spool = Spool {
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            path,
        };
        let mut header = Vec::with_capacity(512);
        meta.encode(&mut header);
        spool.write(&header)?;
        Ok(spool)
    }

    /// Move a complete spool file to `relative` under the root, replacing an earlier instance
    /// atomically. Returns the final path.
    pub fn publish(&self, mut spool: Spool, relative: &Path) -> io::Result<PathBuf> {
        // Layout components are sanitised already; this guards the invariant at the last step.
        let contained = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            && !relative.starts_with(INCOMING_DIR);
        if !contained {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path escapes data_dir",
            ));
        }
        let target = self.root.join(relative);
        let file = spool.finish()?;
        if self.durable {
            file.sync_all()?;
        }
        drop(file);
        let dir = target.parent().unwrap_or(&self.root);
        self.create_dirs(dir)?;
        fs::rename(&spool.path, &target)?;
        spool.path = PathBuf::new();
        if self.durable {
            sync_dir(dir)?;
        }
        Ok(target)
    }

    /// Create `dir` and its missing parents under the root. With durability on, each new
    /// directory's entry is fsynced in its parent too: syncing only the file's own directory
    /// would leave a freshly created one unreachable after a power loss.
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        if !self.durable {
            return fs::create_dir_all(dir);
        }
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| *d != self.root && !d.is_dir())
            .collect();
        fs::create_dir_all(dir)?;
        for created in missing.iter().rev() {
            sync_dir(created.parent().unwrap_or(&self.root))?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A data set being received. Dropped without publishing, it deletes its file.
#[derive(Debug)]
pub struct Spool {
    writer: Option<BufWriter<File>>,
    path: PathBuf,
}

impl Spool {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.write_all(data),
            None => Err(io::Error::other("spool already finished")),
        }
    }

    fn finish(&mut self) -> io::Result<File> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("spool already finished"))?;
        writer.into_inner().map_err(|e| e.into_error())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.writer = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dicom-inlet-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn meta() -> FileMeta<'static> {
        FileMeta {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7",
            sop_instance_uid: "1.2.3",
            transfer_syntax_uid: "1.2.840.10008.1.2",
            source_ae_title: "SCU",
        }
    }

    #[test]
    fn publish_moves_complete_file_and_replaces_duplicates() {
        let root = temp_root("publish");
        let storage = Storage::open(&root, true).unwrap();
        for body in [b"first".as_slice(), b"second"] {
            let mut spool = storage.spool(&meta()).unwrap();
            spool.write(body).unwrap();
            let path = storage.publish(spool, Path::new("a/b/1.2.3.dcm")).unwrap();
            assert!(fs::read(&path).unwrap().ends_with(body));
        }
        assert_eq!(fs::read_dir(root.join(INCOMING_DIR)).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn dropped_spool_leaves_nothing() {
        let root = temp_root("drop");
        let storage = Storage::open(&root, false).unwrap();
        let mut spool = storage.spool(&meta()).unwrap();
        spool.write(&[0; 100_000]).unwrap();
        drop(spool);
        assert_eq!(fs::read_dir(root.join(INCOMING_DIR)).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stale_spool_files_are_removed_at_open() {
        let root = temp_root("stale");
        fs::create_dir_all(root.join(INCOMING_DIR)).unwrap();
        fs::write(root.join(INCOMING_DIR).join("123-4.part"), b"partial").unwrap();
        Storage::open(&root, false).unwrap();
        assert_eq!(fs::read_dir(root.join(INCOMING_DIR)).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn escaping_paths_are_refused() {
        let root = temp_root("escape");
        let storage = Storage::open(&root, false).unwrap();
        for bad in ["../x.dcm", "/tmp/x.dcm", ".incoming/x.dcm"] {
            let spool = storage.spool(&meta()).unwrap();
            assert!(storage.publish(spool, Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(fs::read_dir(root.join(INCOMING_DIR)).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
