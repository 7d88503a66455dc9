//! Spool and publish: a received data set is written to this node's spool area,
//! `data_dir/.incoming/<node id>/`, as it arrives, then renamed into its layout path in one
//! atomic step, so no partial file is ever visible.
//!
//! Several nodes (processes, machines) may share one data_dir. Each holds an exclusive lock on
//! `.incoming/<node id>.lock` for its lifetime; a spool area whose lock can be taken belongs to
//! a node that is gone, and the next node to start removes it.
//!
//! Durability (`durable`): a published file's data is flushed before its rename makes it
//! visible, and its name (with the journal's commit) before its sender is answered; the
//! caller asks for the second flush ([`Storage::sync`]). Each flush is one `syncfs(2)` of the
//! data_dir's file system, shared by every instance waiting for one at the time: a file fsync
//! costs about as much as a whole file system's (one journal commit on ext4), so instances of
//! several associations, or of one association's asynchronous window, pay one together.

use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::file_meta::FileMeta;

/// Spool directory under `data_dir`; on the same filesystem, so publishing is a rename.
pub const INCOMING_DIR: &str = ".incoming";
const SPOOL_SUFFIX: &str = ".part";
const LOCK_SUFFIX: &str = ".lock";
/// Longest node id: a file name on every file system, with room for the suffix.
const NODE_ID_MAX: usize = 64;
/// Writes smaller than this are gathered: the file meta and a small data set leave in one
/// write, and a 16 KiB-PDU sender's fragments in one write per ~64 KiB. A larger fragment is
/// written straight from the receive buffer, uncopied.
const GATHER: usize = 64 * 1024;
/// Spool ids are drawn for the whole process: servers of one process may share a spool area.
static NEXT_SPOOL_ID: AtomicU64 = AtomicU64::new(0);
/// This run among the runs of every node on the data_dir: the spool ids restart at 0 in each
/// process (and a container's process id may be the same each time).
static RUN: LazyLock<String> = LazyLock::new(|| {
    let started = SystemTime::now().duration_since(UNIX_EPOCH);
    format!("{:x}", started.map_or(0, |d| d.as_nanos()))
});

/// A node's spool area and the lock that says its node is alive. Servers of one process with
/// the same node id share it (a second lock on the file would fail: flock is per open file).
#[derive(Debug)]
struct NodeArea {
    dir: PathBuf,
    _lock: File,
}

/// The areas this process holds.
static AREAS: Mutex<Vec<Weak<NodeArea>>> = Mutex::new(Vec::new());

/// A node id is one path component of safe characters: it names a directory and a lock file.
pub fn check_node_id(node_id: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if node_id.is_empty() || node_id.len() > NODE_ID_MAX {
        return Err(format!(
            "node_id must be 1 to {NODE_ID_MAX} characters, got {node_id:?}"
        ));
    }
    if node_id.starts_with('.') || !node_id.chars().all(safe) {
        return Err(format!(
            "node_id may hold letters, digits, '-', '_' and '.' (not first), got {node_id:?}"
        ));
    }
    Ok(())
}

/// Lock `path` exclusively without waiting (creating it if `create`); None if another holds
/// it, or it is gone and not to be created. The lock is only taken as the file still at
/// `path`: a node cleaning a dead area unlinks the lock file while it holds it, and a lock on
/// the unlinked file would guard nothing.
pub(crate) fn try_lock_file(path: &Path, create: bool) -> io::Result<Option<File>> {
    loop {
        let opened = File::options()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path);
        let file = match opened {
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            opened => opened?,
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let held = file.metadata()?;
        match fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(file)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Take this node's area under `incoming` (or share the one this process holds), emptying
/// what a crashed run under the same id left, and remove the areas of nodes that are gone.
fn claim_area(incoming: &Path, node_id: &str) -> io::Result<Arc<NodeArea>> {
    let dir = incoming.join(node_id);
    let mut areas = AREAS.lock().unwrap_or_else(|p| p.into_inner());
    areas.retain(|area| area.strong_count() > 0);
    if let Some(area) = areas
        .iter()
        .filter_map(Weak::upgrade)
        .find(|area| area.dir == dir)
    {
        return Ok(area);
    }
    let lock_path = incoming.join(format!("{node_id}{LOCK_SUFFIX}"));
    let Some(lock) = try_lock_file(&lock_path, true)? else {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("node id {node_id:?} is in use by another running node"),
        ));
    };
    remove_area(&dir)?;
    fs::create_dir(&dir)?;
    remove_dead_areas(incoming, &lock_path)?;
    let area = Arc::new(NodeArea { dir, _lock: lock });
    areas.push(Arc::downgrade(&area));
    Ok(area)
}

fn remove_area(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every other node's area whose lock is free is a dead node's: its partial files go, then
/// its lock file (still held, so no node starting under that id meanwhile can own it).
/// Loose spool files beside the areas come from versions before areas existed.
fn remove_dead_areas(incoming: &Path, own_lock: &Path) -> io::Result<()> {
    for entry in fs::read_dir(incoming)? {
        let entry = entry?;
        let path = entry.path();
        // Areas are found by their lock files (an area may be named `x.lock` itself).
        if path == own_lock || !entry.file_type()?.is_file() {
            continue;
        }
        if path.extension().is_some_and(|e| e == &SPOOL_SUFFIX[1..]) {
            let _ = fs::remove_file(&path);
            continue;
        }
        if path.extension().is_none_or(|e| e != &LOCK_SUFFIX[1..]) {
            continue;
        }
        // Held: a node alive elsewhere, or another node removing it right now. Never created
        // here, so a node starting under that id cannot find it held by us.
        if let Some(_dead) = try_lock_file(&path, false)? {
            remove_area(&path.with_extension(""))?;
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

/// Copies of one instance kept at most under `Duplicates::KeepBoth`.
const MAX_COPIES: u32 = 1000;

/// What to do with an instance whose file exists already (same SOP Instance UID, same place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// The new instance replaces the file (pacsanini's behaviour).
    Replace,
    /// The first stays; the new one is acknowledged and dropped.
    KeepFirst,
    /// The new one is refused with a failure status.
    Reject,
    /// Both stay: the new one as `UID~2.dcm`, `UID~3.dcm`…
    KeepBoth,
}

impl Duplicates {
    pub fn parse(name: &str) -> Option<Duplicates> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "replace" => Some(Duplicates::Replace),
            "keep-first" => Some(Duplicates::KeepFirst),
            "reject" => Some(Duplicates::Reject),
            "keep-both" => Some(Duplicates::KeepBoth),
            _ => None,
        }
    }
}

/// Where a published instance went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Stored at this path.
    Stored(PathBuf),
    /// An earlier instance at this path was kept; the new one dropped.
    Kept(PathBuf),
    /// A file was there already and duplicates are refused.
    Refused,
}

/// `dir/name.dcm` → `dir/name~N.dcm`.
fn numbered(target: &Path, copy: u32) -> PathBuf {
    let stem = target.file_stem().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!("{stem}~{copy}.dcm"))
}

/// Flushes of one file system, each shared by all who ask while none has started yet.
#[derive(Debug, Default)]
struct Flushes {
    state: Mutex<FlushState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Flushes started and finished so far; at most one runs at a time.
    started: u64,
    finished: u64,
    /// The latest flush that failed, and why.
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl Flushes {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make durable what was written before this call (`flush` does it): by this thread
    /// (flushing what everyone wrote meanwhile) unless a flush that started after the call
    /// covers it. A failed flush fails everyone it was to cover, and those after it too: after
    /// a write-back error, a later successful flush does not prove the earlier data reached
    /// the disk.
    fn flush(&self, flush: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.lock();
        // A flush running now may have started before our writes: the next one covers them.
        let needed = state.started + 1;
        while state.finished < needed {
            if state.started == state.finished {
                state.started += 1;
                let number = state.started;
                drop(state);
                let result = flush();
                state = self.lock();
                state.finished = number;
                if let Err(e) = result {
                    state.failed = Some((number, e.kind(), e.to_string()));
                }
                self.finished.notify_all();
            } else {
                state = self.finished.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
        match &state.failed {
            Some((number, kind, why)) if *number >= needed => Err(io::Error::new(
                *kind,
                format!("cannot flush data_dir to disk: {why}"),
            )),
            _ => Ok(()),
        }
    }
}

/// `syncfs(2)`: write back and commit everything of the file system `dir` is on.
fn syncfs(dir: &File) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor `dir` keeps open for its duration.
    match unsafe { libc::syncfs(dir.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The storage root and its spool directory.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    area: Arc<NodeArea>,
    /// The root, open for flushing its file system when durable.
    durable: Option<File>,
    flushes: Flushes,
}

impl Storage {
    /// Create `root` and the spool area of node `node_id` (a valid id: [`check_node_id`]);
    /// remove spool files left by a crashed run of this node and by nodes that are gone.
    pub fn open(root: &Path, durable: bool, node_id: &str) -> io::Result<Storage> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let incoming = root.join(INCOMING_DIR);
        fs::create_dir_all(&incoming)?;
        let area = claim_area(&incoming, node_id)?;
        let durable = durable.then(|| File::open(&root)).transpose()?;
        Ok(Storage {
            root,
            area,
            durable,
            flushes: Flushes::default(),
        })
    }

    pub fn durable(&self) -> bool {
        self.durable.is_some()
    }

    /// With durability on, make durable everything written under the root before this call
    /// (published names, new folders, the journal's commits): one flush shared with every
    /// thread asking at the same time. Without, nothing to do.
    pub fn sync(&self) -> io::Result<()> {
        match &self.durable {
            Some(root) => self.flushes.flush(|| syncfs(root)),
            None => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Start a spool file holding preamble and file meta.
    pub fn spool(&self, meta: &FileMeta<'_>) -> io::Result<Spool> {
        let id = NEXT_SPOOL_ID.fetch_add(1, Ordering::Relaxed);
        let path = self.area.dir.join(format!("{id}{SPOOL_SUFFIX}"));
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

    /// Move a complete spool file to `relative` under the root, as `duplicates` says when
    /// a file is there already. With `hold`, the complete file is also linked there first,
    /// before it becomes visible, so the caller keeps exactly this version whatever later
    /// replaces it; the link is removed again unless the instance is stored. With durability
    /// on, the data must be durable before its name is published: a caller that wrote out the
    /// spool ([`Spool::flush`]) syncs before this (one flush for many spools); bytes still
    /// gathered are written and synced here. The name is durable once the caller's next
    /// [`sync`](Self::sync) returns.
    pub fn publish(
        &self,
        mut spool: Spool,
        relative: &Path,
        duplicates: Duplicates,
        hold: Option<&Path>,
    ) -> io::Result<Placed> {
        // Layout components are sanitised already; this guards the invariant at the last step.
        let contained = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            && !relative.starts_with(INCOMING_DIR)
            && !relative.starts_with(crate::journal::JOURNAL_DIR);
        if !contained {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path escapes data_dir",
            ));
        }
        let target = self.root.join(relative);
        let gathered = spool.writer.as_ref().is_some_and(|w| !w.pending.is_empty());
        drop(spool.finish()?);
        if gathered {
            self.sync()?;
        }
        if let Some(hold) = hold {
            fs::hard_link(&spool.path, hold)?;
        }
        let placed = self.place(&mut spool, target, duplicates);
        if let (Some(hold), Ok(Placed::Kept(_) | Placed::Refused) | Err(_)) = (hold, &placed) {
            let _ = fs::remove_file(hold);
        }
        placed
    }

    /// Put the spool file at `target` (or beside it, keeping both), creating folders only
    /// when the first try says they are missing: most instances go to a folder that exists
    /// already (same series as the one before), which needs no new directory sync either.
    fn place(
        &self,
        spool: &mut Spool,
        target: PathBuf,
        duplicates: Duplicates,
    ) -> io::Result<Placed> {
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        let retry = |op: &dyn Fn() -> io::Result<()>| match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir)?;
                op()
            }
            other => other,
        };
        let placed = if duplicates == Duplicates::Replace {
            // rename() replaces an earlier file atomically.
            retry(&|| fs::rename(&spool.path, &target))?;
            spool.path = PathBuf::new();
            Placed::Stored(target)
        } else {
            // link() never replaces: it fails when the name exists, atomically, so two
            // associations storing the same instance at once cannot both see it free. The
            // spool name is removed when `spool` drops.
            let mut candidate = target.clone();
            let mut copy = 1;
            loop {
                match retry(&|| fs::hard_link(&spool.path, &candidate)) {
                    Ok(()) => break Placed::Stored(candidate),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match duplicates {
                        Duplicates::KeepFirst => return Ok(Placed::Kept(target)),
                        Duplicates::Reject => return Ok(Placed::Refused),
                        _ if copy >= MAX_COPIES => return Err(e),
                        _ => {
                            copy += 1;
                            candidate = numbered(&target, copy);
                        }
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(placed)
    }
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
    /// A name unique to this spool file across runs and the nodes sharing the data_dir (its
    /// node's area, this run, its id), for what the caller keeps of it in a shared folder.
    pub fn name(&self) -> String {
        let id = self.path.file_stem().unwrap_or_default().to_string_lossy();
        let node = self.path.parent().and_then(Path::file_name);
        let node = node.unwrap_or_default().to_string_lossy();
        format!("{node}-{}-{id}.dcm", *RUN)
    }

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

    const REPLACE: Duplicates = Duplicates::Replace;

    fn stored(placed: io::Result<Placed>) -> PathBuf {
        match placed.unwrap() {
            Placed::Stored(path) => path,
            other => panic!("not stored: {other:?}"),
        }
    }

    /// Spool files under `.incoming`, in every node's area.
    fn spool_files(root: &Path) -> usize {
        let areas = fs::read_dir(root.join(INCOMING_DIR)).unwrap();
        areas
            .map(|area| area.unwrap().path())
            .filter(|area| area.is_dir())
            .map(|area| fs::read_dir(area).unwrap().count())
            .sum()
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
        let storage = Storage::open(&root, true, "node").unwrap();
        for body in [b"first".as_slice(), b"second"] {
            let mut spool = storage.spool(&meta()).unwrap();
            spool.write(body).unwrap();
            let path = stored(storage.publish(spool, Path::new("a/b/1.2.3.dcm"), REPLACE, None));
            assert!(fs::read(&path).unwrap().ends_with(body));
        }
        assert_eq!(spool_files(&root), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn spool_names_name_their_node_and_run() {
        // Two processes' spool ids both start at 0: the node and the run tell them apart in
        // the journal's shared held folder.
        let root = temp_root("names");
        let a = Storage::open(&root, false, "node-a").unwrap();
        let b = Storage::open(&root, false, "node-b").unwrap();
        let (first, second) = (a.spool(&meta()).unwrap(), b.spool(&meta()).unwrap());
        let (first, second) = (first.name(), second.name());
        assert!(first.starts_with(&format!("node-a-{}-", *RUN)), "{first}");
        assert!(second.starts_with(&format!("node-b-{}-", *RUN)), "{second}");
        assert!(first.ends_with(".dcm") && first != second);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn gathered_and_direct_writes_keep_their_order() {
        let root = temp_root("writes");
        let storage = Storage::open(&root, false, "node").unwrap();
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
        let path = stored(storage.publish(spool, Path::new("w.dcm"), REPLACE, None));
        let mut header = Vec::new();
        meta().encode(&mut header);
        assert_eq!(fs::read(&path).unwrap(), [header, body].concat());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn dropped_spool_leaves_nothing() {
        let root = temp_root("drop");
        let storage = Storage::open(&root, false, "node").unwrap();
        let mut spool = storage.spool(&meta()).unwrap();
        spool.write(&[0; 100_000]).unwrap();
        drop(spool);
        assert_eq!(spool_files(&root), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn storages_sharing_a_root_keep_their_spools_apart() {
        let root = temp_root("shared");
        let first = Storage::open(&root, false, "node").unwrap();
        let mut a = first.spool(&meta()).unwrap();
        a.write(b"first storage").unwrap();
        // Opening more, of this node or another, neither removes nor reuses its spool file.
        let second = Storage::open(&root, false, "node").unwrap();
        let mut b = second.spool(&meta()).unwrap();
        b.write(b"second").unwrap();
        let third = Storage::open(&root, false, "other").unwrap();
        let mut c = third.spool(&meta()).unwrap();
        c.write(b"third").unwrap();
        let a = stored(first.publish(a, Path::new("a.dcm"), REPLACE, None));
        let b = stored(second.publish(b, Path::new("b.dcm"), REPLACE, None));
        let c = stored(third.publish(c, Path::new("c.dcm"), REPLACE, None));
        assert!(fs::read(a).unwrap().ends_with(b"first storage"));
        assert!(fs::read(b).unwrap().ends_with(b"second"));
        assert!(fs::read(c).unwrap().ends_with(b"third"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stale_spool_files_are_removed_at_open() {
        let root = temp_root("stale");
        let incoming = root.join(INCOMING_DIR);
        // A crashed run of this node, a dead node, and a loose file of an older version.
        for dir in ["node", "dead"] {
            fs::create_dir_all(incoming.join(dir)).unwrap();
            fs::write(incoming.join(dir).join("4.part"), b"partial").unwrap();
            fs::write(incoming.join(format!("{dir}.lock")), b"").unwrap();
        }
        fs::write(incoming.join("123-4.part"), b"partial").unwrap();
        let _storage = Storage::open(&root, false, "node").unwrap();
        let mut left: Vec<_> = fs::read_dir(&incoming)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["node", "node.lock"]);
        assert_eq!(spool_files(&root), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_live_nodes_area_is_kept_and_its_id_refused() {
        let root = temp_root("live");
        let incoming = root.join(INCOMING_DIR);
        fs::create_dir_all(incoming.join("alive")).unwrap();
        fs::write(incoming.join("alive").join("7.part"), b"in progress").unwrap();
        // Held as another process would hold it (flock is per open file).
        let held = try_lock_file(&incoming.join("alive.lock"), true)
            .unwrap()
            .unwrap();
        let _storage = Storage::open(&root, false, "node").unwrap();
        assert!(incoming.join("alive").join("7.part").exists());
        let err = Storage::open(&root, false, "alive").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains("in use by another running node"),
            "{err}"
        );
        // Once its node is gone, the next start removes it.
        drop(held);
        let _other = Storage::open(&root, false, "other").unwrap();
        // A node whose id looks like a lock file name is no lock file.
        let _dotted = Storage::open(&root, false, "dotted.lock").unwrap();
        let _third = Storage::open(&root, false, "third").unwrap();
        assert!(incoming.join("dotted.lock").is_dir());
        assert!(!incoming.join("alive").exists());
        assert!(!incoming.join("alive.lock").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn node_ids_are_single_safe_components() {
        for good in ["a", "host-1.example_2", &"x".repeat(NODE_ID_MAX)] {
            assert!(check_node_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(NODE_ID_MAX + 1),
        ] {
            assert!(check_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaping_paths_are_refused() {
        let root = temp_root("escape");
        let storage = Storage::open(&root, false, "node").unwrap();
        for bad in [
            "../x.dcm",
            "/tmp/x.dcm",
            ".incoming/x.dcm",
            ".journal/x.dcm",
        ] {
            let spool = storage.spool(&meta()).unwrap();
            let published = storage.publish(spool, Path::new(bad), REPLACE, None);
            assert!(published.is_err(), "{bad}");
        }
        assert_eq!(spool_files(&root), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn duplicate_policies() {
        let root = temp_root("duplicates");
        let storage = Storage::open(&root, true, "node").unwrap();
        let held = root.join("held");
        fs::create_dir_all(&held).unwrap();
        let publish = |body: &[u8], policy, hold: Option<&Path>| {
            let mut spool = storage.spool(&meta()).unwrap();
            spool.write(body).unwrap();
            storage.publish(spool, Path::new("s/1.2.3.dcm"), policy, hold)
        };
        let first = stored(publish(b"first", Duplicates::KeepFirst, None));
        let kept = publish(b"second", Duplicates::KeepFirst, Some(&held.join("k")));
        assert_eq!(kept.unwrap(), Placed::Kept(first.clone()));
        let refused = publish(b"third", Duplicates::Reject, Some(&held.join("r")));
        assert_eq!(refused.unwrap(), Placed::Refused);
        assert!(fs::read(&first).unwrap().ends_with(b"first"));
        let both = stored(publish(b"fourth", Duplicates::KeepBoth, None));
        assert_eq!(both, root.join("s/1.2.3~2.dcm"));
        assert!(fs::read(&both).unwrap().ends_with(b"fourth"));
        // A held version outlives its replacement; dropped ones leave no link.
        let hold = held.join("h.dcm");
        stored(publish(b"fifth", REPLACE, Some(&hold)));
        stored(publish(b"sixth", REPLACE, None));
        assert!(fs::read(&hold).unwrap().ends_with(b"fifth"));
        assert!(fs::read(&first).unwrap().ends_with(b"sixth"));
        assert_eq!(fs::read_dir(&held).unwrap().count(), 1);
        assert_eq!(spool_files(&root), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_flush_covers_only_who_asked_before_it_started() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::mpsc;
        let flushes = Arc::new(Flushes::default());
        let started = Arc::new(AtomicUsize::new(0));
        let (running, is_running) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let first = {
            let (flushes, started) = (Arc::clone(&flushes), Arc::clone(&started));
            std::thread::spawn(move || {
                flushes.flush(|| {
                    started.fetch_add(1, Ordering::SeqCst);
                    running.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(())
                })
            })
        };
        is_running.recv().unwrap();
        // Asked while the first flush runs: covered only by one that starts after.
        let later: Vec<_> = (0..3)
            .map(|_| {
                let (flushes, started) = (Arc::clone(&flushes), Arc::clone(&started));
                std::thread::spawn(move || {
                    let before = started.load(Ordering::SeqCst);
                    flushes.flush(|| {
                        started.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })?;
                    Ok::<_, io::Error>(started.load(Ordering::SeqCst) > before)
                })
            })
            .collect();
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for thread in later {
            assert!(thread.join().unwrap().unwrap());
        }
        // A failed flush fails who it covered; the next one is tried afresh.
        let failed = flushes.flush(|| Err(io::Error::other("EIO")));
        assert!(failed.unwrap_err().to_string().contains("EIO"));
        flushes.flush(|| Ok(())).unwrap();
    }

    #[test]
    fn duplicate_policy_names() {
        for (name, policy) in [
            ("replace", Duplicates::Replace),
            ("keep-first", Duplicates::KeepFirst),
            ("KEEP_BOTH", Duplicates::KeepBoth),
            ("reject", Duplicates::Reject),
        ] {
            assert_eq!(Duplicates::parse(name), Some(policy));
        }
        assert_eq!(Duplicates::parse("newest"), None);
    }
}
