//! Spool and publish: a received data set is written to `data_dir/.incoming/` as it arrives,
//! then renamed into its layout path in one atomic step, so no partial file is ever visible.

use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::file_meta::FileMeta;

/// Spool directory under `data_dir`; on the same filesystem, so publishing is a rename.
pub const INCOMING_DIR: &str = ".incoming";
const SPOOL_SUFFIX: &str = ".part";
/// Writes smaller than this are gathered: the file meta and a small data set leave in one
/// write, and a 16 KiB-PDU sender's fragments in one write per ~64 KiB. A larger fragment is
/// written straight from the receive buffer, uncopied.
const GATHER: usize = 64 * 1024;
/// Spool ids are drawn for the whole process: servers of one process may share a data_dir.
static NEXT_SPOOL_ID: AtomicU64 = AtomicU64::new(0);

/// The start of this process's spool names: its id and start time, so a later run, even under
/// a reused process id, tells its own live spool files from those a crashed run left.
fn spool_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH);
        let started = now.map_or(0, |d| d.as_nanos());
        format!("{}-{started:x}-", std::process::id())
    })
}

/// The storage root and its spool directory.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    incoming: PathBuf,
    durable: bool,
}

impl Storage {
    /// Create `root` and its spool directory; remove spool files a crashed run left behind
    /// (not those of other servers in this process).
    pub fn open(root: &Path, durable: bool) -> io::Result<Storage> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let incoming = root.join(INCOMING_DIR);
        fs::create_dir_all(&incoming)?;
        for entry in fs::read_dir(&incoming)? {
            let path = entry?.path();
            let ours = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(spool_prefix()));
            if path.extension().is_some_and(|e| e == &SPOOL_SUFFIX[1..]) && !ours {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Storage {
            root,
            incoming,
            durable,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Start a spool file holding preamble and file meta.
    pub fn spool(&self, meta: &FileMeta<'_>) -> io::Result<Spool> {
        let id = NEXT_SPOOL_ID.fetch_add(1, Ordering::Relaxed);
        let path = self
            .incoming
            .join(format!("{}{id}{SPOOL_SUFFIX}", spool_prefix()));
        // Never another's file, whatever happens to the names.
        let file = File::create_new(&path)?;
        let mut pending = Vec::with_capacity(GATHER);
        meta.encode(&mut pending);
        // From here on, dropping the Spool removes the file.
        Ok(Spool {
            writer: Some(Writer { file, pending }),
            path,
        })
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
        // Most instances go to a folder that exists already (same series as the one before):
        // try the rename first and create folders only when it says they are missing. An
        // existing folder needs no new directory sync either.
        if let Err(e) = fs::rename(&spool.path, &target) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            self.create_dirs(dir)?;
            fs::rename(&spool.path, &target)?;
        }
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

/// A spool file and the small writes gathered for it.
#[derive(Debug)]
struct Writer {
    file: File,
    pending: Vec<u8>,
}

impl Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.pending.len() + data.len() <= GATHER {
            self.pending.extend_from_slice(data);
            return Ok(());
        }
        // What was gathered and the new bytes in one vectored write, the latter uncopied.
        let mut slices = [IoSlice::new(&self.pending), IoSlice::new(data)];
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match self.file.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<File> {
        self.file.write_all(&self.pending)?;
        Ok(self.file)
    }
}

/// A data set being received. Dropped without publishing, it deletes its file.
#[derive(Debug)]
pub struct Spool {
    writer: Option<Writer>,
    path: PathBuf,
}

impl Spool {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.write(data),
            None => Err(io::Error::other("spool already finished")),
        }
    }

    /// Write out what is gathered, so the file holds every byte received so far (for a
    /// handler to read it before it is published).
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Err(io::Error::other("spool already finished")),
        }
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn finish(&mut self) -> io::Result<File> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("spool already finished"))?;
        writer.finish()
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
    fn gathered_and_direct_writes_keep_their_order() {
        let root = temp_root("writes");
        let storage = Storage::open(&root, false).unwrap();
        let mut spool = storage.spool(&meta()).unwrap();
        let mut body = Vec::new();
        for (i, size) in [10, GATHER - 5, 3 * GATHER, 7, GATHER, 1]
            .into_iter()
            .enumerate()
        {
            let part = vec![i as u8; size];
            spool.write(&part).unwrap();
            body.extend_from_slice(&part);
        }
        let path = storage.publish(spool, Path::new("w.dcm")).unwrap();
        let mut header = Vec::new();
        meta().encode(&mut header);
        assert_eq!(fs::read(&path).unwrap(), [header, body].concat());
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
    fn storages_sharing_a_root_keep_their_spools_apart() {
        let root = temp_root("shared");
        let first = Storage::open(&root, false).unwrap();
        let mut a = first.spool(&meta()).unwrap();
        a.write(b"first storage").unwrap();
        // Opening a second one neither removes nor reuses the first one's spool file.
        let second = Storage::open(&root, false).unwrap();
        let mut b = second.spool(&meta()).unwrap();
        b.write(b"second").unwrap();
        let a = first.publish(a, Path::new("a.dcm")).unwrap();
        let b = second.publish(b, Path::new("b.dcm")).unwrap();
        assert!(fs::read(a).unwrap().ends_with(b"first storage"));
        assert!(fs::read(b).unwrap().ends_with(b"second"));
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
