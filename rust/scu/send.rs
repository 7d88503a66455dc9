//! C-STORE of Part 10 files (PS3.4 §B.2, PS3.7 §9.1.1): propose what the files need, then
//! stream each data set from disk over one or more associations, keeping up to the granted
//! asynchronous window of requests outstanding on each.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use crate::dimse::{self, Command};
use crate::error::Error;
use crate::scan::Encoding;

use super::association::{Proposal, Requestor, MAX_CONTEXTS};
use super::part10::Part10Header;
use super::transcode::{self, fallbacks};
use super::ScuConfig;

/// How often the caller's progress hook runs while nothing completes (so it can cancel).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceResult {
    pub path: PathBuf,
    /// The data set's SOP Class and Instance UIDs (the file meta's if it has none), when the
    /// file could be read, and the transfer syntax it was sent in.
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub transfer_syntax_uid: Option<String>,
    /// The C-STORE-RSP status; None when no response came (not sent, or the association
    /// failed before the response).
    pub status: Option<u16>,
    /// The peer's Error Comment (0000,0902), or why there is no status.
    pub error_comment: Option<String>,
    /// Data set bytes sent.
    pub bytes: u64,
    /// Something about the file worth telling even if it was stored: a file meta whose
    /// Media Storage UIDs differ from the data set's.
    pub warning: Option<String>,
}

impl InstanceResult {
    fn new(path: &Path) -> InstanceResult {
        InstanceResult {
            path: path.to_path_buf(),
            sop_class_uid: None,
            sop_instance_uid: None,
            transfer_syntax_uid: None,
            status: None,
            error_comment: None,
            bytes: 0,
            warning: None,
        }
    }

    fn failed(mut self, why: impl Into<String>) -> InstanceResult {
        self.error_comment = Some(why.into());
        self
    }
}

fn unreadable(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::InvalidData => e.to_string(),
        _ => format!("cannot read the file: {e}"),
    }
}

/// Open a file that can be read: a regular one (or a link to one), since opening a FIFO would
/// wait for a writer. Errors say in words what the path is instead.
fn open_regular(path: &Path) -> io::Result<File> {
    let other = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => File::open(path),
        Ok(meta) if meta.is_dir() => Err(other("a directory, not a file".into())),
        Ok(_) => Err(other(
            "not a regular file (a FIFO, socket or device), so not read".into(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::read_link(path) {
            Ok(target) => Err(other(format!(
                "a dangling symbolic link: its target {} does not exist",
                target.display()
            ))),
            Err(_) => Err(other("no such file (it was removed)".into())),
        },
        Err(e) => Err(e),
    }
}

/// Open a file positioned at its data set: (header, file, data set length).
fn open_part10(path: &Path) -> io::Result<(Part10Header, File, u64)> {
    let mut reader = BufReader::with_capacity(2048, open_regular(path)?);
    let header = Part10Header::read(&mut reader)?;
    let mut file = reader.into_inner();
    let length = file
        .metadata()?
        .len()
        .saturating_sub(header.data_set_offset);
    file.seek(SeekFrom::Start(header.data_set_offset))?;
    Ok((header, file, length))
}

/// The contexts the files need (each SOP class in each file's own transfer syntax, in order of
/// first use, then in the syntaxes it can be converted to) and which files can be sent; the
/// others get their result now.
fn plan(paths: &[PathBuf], results: &mut [Option<InstanceResult>]) -> (Vec<Proposal>, Vec<usize>) {
    let mut proposals = Vec::new();
    let mut seen = HashSet::new();
    let mut sendable = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let header = open_regular(path).and_then(|f| Part10Header::read(&mut BufReader::new(f)));
        let header = match header {
            Ok(header) => header,
            Err(e) => {
                results[index] = Some(InstanceResult::new(path).failed(unreadable(&e)));
                continue;
            }
        };
        let proposal = Proposal {
            abstract_syntax: header.sop_class_uid,
            transfer_syntax: header.transfer_syntax_uid,
        };
        if !seen.contains(&proposal) {
            if proposals.len() == MAX_CONTEXTS {
                let why = "more than 128 SOP class and transfer syntax combinations in one \
                           send; send these files separately";
                results[index] = Some(InstanceResult::new(path).failed(why));
                continue;
            }
            seen.insert(proposal.clone());
            proposals.push(proposal);
        }
        sendable.push(index);
    }
    // Native data sets can be converted while they stream, down to the default syntax every
    // peer supports (PS3.5 §10.1), so their SOP classes are also proposed in those syntaxes,
    // room permitting.
    let converted: Vec<_> = proposals
        .iter()
        .flat_map(|p| {
            fallbacks(&p.transfer_syntax).iter().map(|syntax| Proposal {
                abstract_syntax: p.abstract_syntax.clone(),
                transfer_syntax: (*syntax).into(),
            })
        })
        .filter(|p| seen.insert(p.clone()))
        .collect();
    let room = MAX_CONTEXTS - proposals.len();
    proposals.extend(converted.into_iter().take(room));
    (proposals, sendable)
}

/// State shared by the association threads.
struct Work<'a> {
    config: &'a ScuConfig,
    paths: &'a [PathBuf],
    proposals: &'a [Proposal],
    sendable: &'a [usize],
    next: AtomicUsize,
    cancel: AtomicBool,
    established: AtomicBool,
    /// Why the last association could not be opened.
    error: Mutex<Option<Error>>,
}

impl Work<'_> {
    fn take(&self) -> Option<usize> {
        if self.cancel.load(Ordering::SeqCst) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        self.sendable.get(i).copied()
    }

    fn has_more(&self) -> bool {
        !self.cancel.load(Ordering::SeqCst)
            && self.next.load(Ordering::SeqCst) < self.sendable.len()
    }

    fn record(&self, error: Error) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

/// How starting one C-STORE went.
enum Start {
    /// Request and data set are out; the response is awaited under this message ID.
    Sent(u16),
    /// Nothing was sent for this file; the association goes on.
    Skipped(String),
    /// The file failed mid-message: the association must be aborted.
    SourceFailed(String),
    /// The association failed.
    Lost(Error),
}

fn start(association: &mut Requestor, result: &mut InstanceResult) -> Start {
    let (header, file, length) = match open_part10(&result.path) {
        Ok(opened) => opened,
        Err(e) => return Start::Skipped(unreadable(&e)),
    };
    result.sop_class_uid = Some(header.sop_class_uid.clone());
    result.sop_instance_uid = Some(header.sop_instance_uid.clone());
    result.transfer_syntax_uid = Some(header.transfer_syntax_uid.clone());
    result.warning = header
        .meta_mismatch
        .as_ref()
        .map(|why| format!("{why}; sent with the data set's"));
    let (context_id, mut source, length) = match choose_context(association, &header, file, length)
    {
        Ok((context_id, transfer_syntax, source, length)) => {
            result.transfer_syntax_uid = Some(transfer_syntax.into());
            (context_id, source, length)
        }
        Err(why) => return Start::Skipped(why),
    };
    let message_id = association.message_id();
    association.queue_command(
        context_id,
        &Command {
            command_field: dimse::C_STORE_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(header.sop_class_uid),
            affected_sop_instance_uid: Some(header.sop_instance_uid),
            has_data_set: true,
            status: None,
        },
    );
    match association.send_data_set(context_id, &mut source, length) {
        Ok(Ok(())) => {
            result.bytes = length;
            Start::Sent(message_id)
        }
        Ok(Err(e)) => Start::SourceFailed(format!("file changed while being sent: {e}")),
        Err(e) => Start::Lost(e),
    }
}

/// How a file goes on the wire: context id, transfer syntax, data set source and its length.
type Outgoing<'h> = (u8, &'h str, Box<dyn Read>, u64);

/// The accepted context to send a file in: its own transfer syntax, or the first of those it
/// can be converted to, converted while it is read. Returns the context id, the syntax sent,
/// the data set source and its length as sent.
fn choose_context<'h>(
    association: &Requestor,
    header: &'h Part10Header,
    file: File,
    length: u64,
) -> Result<Outgoing<'h>, String> {
    let (class, own) = (&header.sop_class_uid, header.transfer_syntax_uid.as_str());
    if let Some(id) = association.context_for(class, own) {
        // PS3.5 §A.5: a deflated data set of odd length takes one trailing NUL byte; files
        // written without it are still common (pydicom's image_dfl.dcm), and PDVs must be even.
        if Encoding::for_transfer_syntax(own).deflated && length % 2 == 1 {
            let padded = file.take(length).chain(&[0u8][..]);
            return Ok((id, own, Box::new(padded), length + 1));
        }
        return Ok((id, own, Box::new(file), length));
    }
    let Some((id, syntax)) = fallbacks(own)
        .iter()
        .find_map(|syntax| Some((association.context_for(class, syntax)?, *syntax)))
    else {
        return Err(format!(
            "the peer accepted no presentation context for SOP class {class} in transfer \
             syntax {own}{}",
            match fallbacks(own) {
                [] => String::new(),
                others => format!(" or {}", others.join(" or ")),
            }
        ));
    };
    let (source, converted) =
        transcode::convert(file, length, own, syntax).map_err(|e| unreadable(&e))?;
    Ok((id, syntax, source, converted))
}

/// One association thread: open, send what the queue gives while keeping at most the window
/// outstanding, release when the queue is empty. A failed association fails its outstanding
/// instances and is replaced by a new one (each failure consumes at least one file, so this
/// ends); if a new one cannot be opened the thread stops and leaves the queue to the others.
fn run_association(work: &Work<'_>, done: &Sender<(usize, InstanceResult)>) {
    let fail_all = |outstanding: &mut VecDeque<(u16, usize, InstanceResult)>, why: &str| {
        for (_, index, result) in outstanding.drain(..) {
            let _ = done.send((index, result.failed(why)));
        }
    };
    'associations: while work.has_more() {
        let mut association = match Requestor::open(work.config, work.proposals) {
            Ok(association) => association,
            Err(e) => return work.record(e),
        };
        work.established.store(true, Ordering::SeqCst);
        let mut outstanding = VecDeque::new();
        loop {
            if outstanding.len() < association.window {
                if let Some(index) = work.take() {
                    let mut result = InstanceResult::new(&work.paths[index]);
                    match start(&mut association, &mut result) {
                        Start::Sent(message_id) => {
                            outstanding.push_back((message_id, index, result))
                        }
                        Start::Skipped(why) => {
                            let _ = done.send((index, result.failed(why)));
                        }
                        Start::SourceFailed(why) => {
                            association.abort();
                            fail_all(&mut outstanding, &format!("association aborted: {why}"));
                            let _ = done.send((index, result.failed(why)));
                            continue 'associations;
                        }
                        Start::Lost(e) => {
                            let why = e.to_string();
                            fail_all(&mut outstanding, &why);
                            let _ = done.send((index, result.failed(why)));
                            continue 'associations;
                        }
                    }
                    continue;
                }
            }
            if outstanding.is_empty() {
                // Instances are all answered; a peer mishandling the release changes nothing.
                let _ = association.release();
                return;
            }
            match association.reply() {
                Ok(reply) => {
                    let Some(at) = outstanding
                        .iter()
                        .position(|(id, ..)| *id == reply.message_id)
                    else {
                        let why = association.unexpected_reply(reply.message_id).to_string();
                        fail_all(&mut outstanding, &why);
                        continue 'associations;
                    };
                    if let Some((_, index, mut result)) = outstanding.remove(at) {
                        result.status = Some(reply.status);
                        result.error_comment = reply.error_comment;
                        let _ = done.send((index, result));
                    }
                }
                Err(e) => {
                    fail_all(&mut outstanding, &e.to_string());
                    continue 'associations;
                }
            }
        }
    }
}

/// Send Part 10 files with C-STORE on up to `associations` parallel associations. Returns one
/// result per path, in the order given. Files that cannot be sent (not DICOM, unreadable, no
/// accepted context) get a result without status; only a peer that cannot be associated with
/// at all is an error.
///
/// `progress` runs on the calling thread with each result as it completes, and with `None`
/// at least every 100 ms; returning `Break` stops taking new files (outstanding ones are
/// still answered, and their results still go to `progress`, and the associations
/// released), and the rest are reported as not sent.
pub fn send(
    config: &ScuConfig,
    paths: &[PathBuf],
    associations: usize,
    progress: &mut dyn FnMut(Option<&InstanceResult>) -> ControlFlow<()>,
) -> Result<Vec<InstanceResult>, Error> {
    config.validate()?;
    if associations == 0 {
        return Err(Error::InvalidConfig(
            "associations must be at least 1".into(),
        ));
    }
    let mut results: Vec<Option<InstanceResult>> = vec![None; paths.len()];
    let (proposals, sendable) = plan(paths, &mut results);
    let work = Work {
        config,
        paths,
        proposals: &proposals,
        sendable: &sendable,
        next: AtomicUsize::new(0),
        cancel: AtomicBool::new(false),
        established: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let mut report = |result: Option<&InstanceResult>| {
        if progress(result).is_break() {
            work.cancel.store(true, Ordering::SeqCst);
        }
    };
    for result in results.iter().flatten() {
        report(Some(result));
    }
    thread::scope(|scope| {
        let (done, completed) = mpsc::channel();
        for _ in 0..associations.min(sendable.len()) {
            let done = done.clone();
            let work = &work;
            scope.spawn(move || run_association(work, &done));
        }
        drop(done);
        loop {
            match completed.recv_timeout(IDLE_TICK) {
                Ok((index, result)) => {
                    report(Some(&result));
                    results[index] = Some(result);
                }
                Err(RecvTimeoutError::Timeout) => report(None),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    let error = work.error.into_inner().unwrap_or_else(|p| p.into_inner());
    let cancelled = work.cancel.load(Ordering::SeqCst);
    if !sendable.is_empty() && !work.established.load(Ordering::SeqCst) && !cancelled {
        if let Some(error) = error {
            return Err(error);
        }
    }
    let why = match (&error, cancelled) {
        (_, true) => "not sent: cancelled".to_owned(),
        (Some(e), false) => format!("not sent: {e}"),
        (None, false) => "not sent".to_owned(),
    };
    Ok(results
        .into_iter()
        .zip(paths)
        .map(|(result, path)| result.unwrap_or_else(|| InstanceResult::new(path).failed(&why)))
        .collect())
}
