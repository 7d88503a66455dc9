//! C-STORE on the SCP side (PS3.4 §B.2, PS3.7 §9.1.1): the data set streams to a spool file
//! while the scanner reads its filing attributes; on the last fragment it is checked against
//! the command, published, journaled, and answered.

use crate::association::{AcceptedContext, Association};
use crate::dimse::{status, Command};
use crate::events::{FailedStore, Receipt, StoredInstance};
use crate::file_meta::FileMeta;
use crate::journal::Row;
use crate::layout;
use crate::scan::{Element, Encoding, Scanner, SortAttributes};
use crate::store::{Placed, Spool};
use crate::verdict::{self, Failure, Instance, Verdict};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::reader::PduReader;
use super::{Connection, Stop};

/// A data set on its way to disk.
pub(super) struct Receiving {
    spool: Spool,
    scanner: Scanner,
    /// Data set bytes received so far.
    bytes: u64,
}

/// Most received instances of one association waiting for one durable flush: an
/// asynchronous window's worth (DCMTK and our SCU propose 8 or so), bounded so that a peer
/// with a larger one still gets answers while it sends. Each holds an open spool file.
const MAX_DEFERRED: usize = 32;
/// Longest an instance waits for the rest of its group: about one flush's time, so a large
/// instance arriving behind it (seconds of data) does not hold its answer.
const MAX_DEFER: Duration = Duration::from_millis(10);

/// A received instance waiting (durable) to be flushed with those after it.
pub(super) struct Deferred {
    since: Instant,
    context_id: u8,
    command: Command,
    sink: Sink,
}

/// What a finished instance is answered with and passes on.
struct Reply {
    status: u16,
    comment: Option<String>,
    /// Data set bytes received.
    received: u64,
    study: Option<String>,
    event: Option<StoredInstance>,
}

/// An instance in its place: where, and the version held for its callbacks. Not `new` when a
/// duplicate was dropped under "keep the first": the earlier file stands, nothing to journal.
struct Published {
    path: PathBuf,
    held: Option<PathBuf>,
    new: bool,
}

impl AsRef<Path> for Published {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Where the bytes of the current data set go.
pub(super) enum Sink {
    Spool(Box<Receiving>),
    /// Received and dropped; the request is answered with this status.
    Discard {
        status: u16,
        comment: String,
    },
}

impl Sink {
    /// Append a data set fragment to the spool and the scanner. On a failure, or once the
    /// instance outgrows `max_size`, switch to discarding (dropping the spool removes its file):
    /// the rest of the data set is drained, not stored or buffered, and the request answered
    /// with a failure status.
    pub(super) fn write(&mut self, data: &[u8], max_size: Option<u64>) {
        let Sink::Spool(receiving) = self else {
            return;
        };
        receiving.bytes += data.len() as u64;
        let failure = if let Some(max) = max_size.filter(|max| receiving.bytes > *max) {
            // PS3.4 §B.2.3: A7xx "refused: out of resources" is the status for what we will
            // not hold.
            (
                status::OUT_OF_RESOURCES,
                format!("instance larger than the limit of {max} bytes"),
            )
        } else {
            match (receiving.spool.write(data), receiving.scanner.feed(data)) {
                (Err(e), _) => (
                    status::OUT_OF_RESOURCES,
                    format!("cannot write the data set: {e}"),
                ),
                (Ok(()), Err(e)) => (
                    status::CANNOT_UNDERSTAND,
                    format!("cannot parse the data set: {e}"),
                ),
                (Ok(()), Ok(())) => return,
            }
        };
        *self = Sink::Discard {
            status: failure.0,
            comment: failure.1,
        };
    }

    /// Write out what the spool gathered, for a flush of the file system to cover it.
    fn write_out(&mut self) {
        let Sink::Spool(receiving) = self else {
            return;
        };
        if let Err(e) = receiving.spool.flush() {
            *self = Sink::Discard {
                status: status::OUT_OF_RESOURCES,
                comment: format!("cannot write the data set: {e}"),
            };
        }
    }
}

impl Connection<'_> {
    /// One C-STORE answered: in this association's record and the server's totals.
    pub(super) fn count_instance(&mut self, stored: bool, bytes: u64) {
        if stored {
            self.record.instances += 1;
        } else {
            self.record.failures += 1;
        }
        self.shared.stats.count_instance(stored, bytes);
    }

    pub(super) fn begin_store(
        &self,
        association: &Association,
        context: &AcceptedContext,
        command: &Command,
    ) -> Sink {
        let discard = |status, comment: &str| Sink::Discard {
            status,
            comment: comment.to_owned(),
        };
        let (Some(sop_class), Some(sop_instance)) = (
            &command.affected_sop_class_uid,
            &command.affected_sop_instance_uid,
        ) else {
            return discard(
                status::CANNOT_UNDERSTAND,
                "C-STORE-RQ lacks Affected SOP Class/Instance UID",
            );
        };
        if *sop_class != context.abstract_syntax {
            return discard(
                status::SOP_CLASS_NOT_SUPPORTED,
                "Affected SOP Class UID differs from the presentation context",
            );
        }
        // UIDs are ASCII (PS3.5 §9.1). Other bytes did not survive decoding, and would leave
        // the file meta naming another instance than the data set.
        if !sop_instance.is_ascii() {
            return discard(
                status::CANNOT_UNDERSTAND,
                "Affected SOP Instance UID is not ASCII",
            );
        }
        let meta = FileMeta {
            sop_class_uid: sop_class,
            sop_instance_uid: sop_instance,
            transfer_syntax_uid: &context.transfer_syntax,
            source_ae_title: &association.calling_ae,
        };
        match self.shared.storage.spool(&meta) {
            Ok(spool) => Sink::Spool(Box::new(Receiving {
                spool,
                scanner: Scanner::new(Encoding::for_transfer_syntax(&context.transfer_syntax))
                    .keeping_elements(
                        self.shared.config.emit_stored || self.shared.verdicts.is_some(),
                    ),
                bytes: 0,
            })),
            Err(e) => Sink::Discard {
                status: status::OUT_OF_RESOURCES,
                comment: format!("cannot spool: {e}"),
            },
        }
    }

    /// The last fragment of a data set arrived: publish, journal and answer it. With
    /// durability on, it waits instead, written out, for [`settle`](Self::settle), which
    /// flushes it with whatever else this association received meanwhile.
    pub(super) fn complete_store(
        &mut self,
        association: &Association,
        context_id: u8,
        command: Command,
        mut sink: Sink,
    ) -> Result<(), Stop> {
        if !self.shared.storage.durable() {
            let reply = self.finish_store(association, context_id, &command, sink);
            return self.reply(association, context_id, &command, reply);
        }
        sink.write_out();
        self.deferred.push(Deferred {
            since: Instant::now(),
            context_id,
            command,
            sink,
        });
        if self.deferred.len() >= MAX_DEFERRED {
            self.settle(association)?;
        }
        Ok(())
    }

    /// Whether the instances waiting for a flush are to be settled before the next PDU is
    /// read: when they waited long enough, or between messages when the peer sent nothing
    /// more yet (they wait for the next request of its asynchronous window, no longer).
    pub(super) fn settle_due(&self, between_messages: bool, reader: &PduReader) -> bool {
        let Some(first) = self.deferred.first() else {
            return false;
        };
        first.since.elapsed() >= MAX_DEFER || (between_messages && !self.more_input(reader))
    }

    /// Whether the peer has sent more than we read.
    fn more_input(&self, reader: &PduReader) -> bool {
        if reader.buffered() {
            return true;
        }
        let mut poll = libc::pollfd {
            fd: self.stream.tcp().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call; a zero timeout never blocks.
        unsafe { libc::poll(&mut poll, 1, 0) > 0 }
    }

    /// Answer every instance waiting (durable): one flush for their data, shared with the
    /// other associations flushing at the time; then each is published and journaled; one
    /// flush for their names and journal rows; then the responses, in order. So each answer
    /// leaves after its own instance is durable, and a window of them costs two flushes.
    pub(super) fn settle(&mut self, association: &Association) -> Result<(), Stop> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let deferred = std::mem::take(&mut self.deferred);
        let storage = &self.shared.storage;
        let data = storage.sync();
        let mut replies = Vec::with_capacity(deferred.len());
        for Deferred {
            context_id,
            command,
            sink,
            ..
        } in deferred
        {
            let sink = match &data {
                Ok(()) => sink,
                // Dropping the spool removes its file: nothing unflushed is published.
                Err(e) => Sink::Discard {
                    status: status::OUT_OF_RESOURCES,
                    comment: e.to_string(),
                },
            };
            let reply = self.finish_store(association, context_id, &command, sink);
            replies.push((context_id, command, reply));
        }
        let names = storage.sync();
        for (context_id, command, mut reply) in replies {
            if let (Err(e), true) = (&names, verdict::is_stored(reply.status)) {
                // Journaled already, so still delivered; the sender sends it again.
                reply = Reply {
                    status: status::OUT_OF_RESOURCES,
                    comment: Some(e.to_string()),
                    study: None,
                    event: None,
                    ..reply
                };
            }
            self.reply(association, context_id, &command, reply)?;
        }
        Ok(())
    }

    /// Check, publish and journal a received instance: what to answer.
    fn finish_store(
        &mut self,
        association: &Association,
        context_id: u8,
        command: &Command,
        sink: Sink,
    ) -> Reply {
        let context = association
            .context(context_id)
            .expect("PDVs are checked against the accepted contexts");
        let mut received = 0;
        let origin = Origin {
            association,
            context_id,
            context,
            command,
        };
        let Answer {
            status,
            comment,
            stored,
        } = match sink {
            Sink::Discard { status, comment } => Answer::failure(status, comment),
            Sink::Spool(receiving) => {
                received = receiving.bytes;
                self.record.bytes += receiving.bytes;
                self.store(&origin, *receiving)
            }
        };
        let emit = self.shared.config.emit_stored;
        // Only an instance the sender is told is stored, and new (not a duplicate dropped under
        // "keep the first"), is journaled and announced.
        let mut elements = Vec::new();
        let row = stored.and_then(|(published, mut attrs)| {
            if published.new && verdict::is_stored(status) {
                elements = std::mem::take(&mut attrs.elements);
                return Some(origin.row(published, attrs, self.peer, received, emit));
            }
            if let Some(held) = published.held {
                let _ = std::fs::remove_file(held);
            }
            None
        });
        // What the consumer is told of; taken before the row goes to the journal's writer.
        let announced = row.as_ref().map(|row| {
            let event = emit.then(|| StoredInstance {
                receipt: origin.receipt(&row.path, self.peer, received),
                held: row.held.clone(),
                journal_id: None,
                elements,
            });
            (row.study_instance_uid.clone(), event)
        });
        // Journaled before the answer leaves: what the sender is told is stored is never
        // forgotten, even if the process dies right after.
        let (status, comment, announced) = match (row, &self.shared.journal) {
            (Some(row), Some(journal)) => {
                let held = row.held.clone();
                match journal.record(row) {
                    Ok(id) => {
                        let announced = announced.map(|(study, event)| {
                            let event = event.map(|e| StoredInstance {
                                journal_id: Some(id),
                                ..e
                            });
                            (study, event)
                        });
                        (status, comment, announced)
                    }
                    Err(e) => {
                        if let Some(held) = held {
                            let _ = std::fs::remove_file(held);
                        }
                        let comment = format!("cannot record the instance in the journal: {e}");
                        (status::OUT_OF_RESOURCES, Some(comment), None)
                    }
                }
            }
            _ => (status, comment, announced),
        };
        let (study, event) = announced.unwrap_or_default();
        Reply {
            status,
            comment,
            received,
            study,
            event,
        }
    }

    /// Send the answer of a finished instance, count it, and pass it on.
    fn reply(
        &mut self,
        association: &Association,
        context_id: u8,
        command: &Command,
        reply: Reply,
    ) -> Result<(), Stop> {
        let Reply {
            status,
            comment,
            received,
            study,
            event,
        } = reply;
        if let Some(study) = study.filter(|s| !self.record.studies.contains(s)) {
            self.record.studies.push(study);
        }
        let stored = verdict::is_stored(status);
        self.count_instance(stored, received);
        self.respond(association, context_id, command, status, comment.as_deref())?;
        // A handler may refuse without an Error Comment, or warn with one.
        if !stored {
            let comment = comment.as_deref().unwrap_or_default();
            self.report_failure(association, command, status, comment);
        }
        if let Some(event) = event {
            // A full queue makes this association wait: back-pressure, never loss.
            self.events.push_stored(event);
        }
        Ok(())
    }

    /// A refused C-STORE, for the log: always reported (waiting for room, as stored instances
    /// do), so the SCP's side says what the sender was told.
    pub(super) fn report_failure(
        &self,
        association: &Association,
        command: &Command,
        status: u16,
        error_comment: &str,
    ) {
        let failed = FailedStore {
            sop_class_uid: command.affected_sop_class_uid.clone().unwrap_or_default(),
            sop_instance_uid: command
                .affected_sop_instance_uid
                .clone()
                .unwrap_or_default(),
            calling_ae: association.calling_ae.clone(),
            called_ae: association.called_ae.clone(),
            peer: self.peer,
            status,
            error_comment: error_comment.to_owned(),
        };
        self.events.push_failed(failed);
    }

    /// Check the data set against its command, let the handler decide if there is one, and
    /// publish: what to answer, and where the file went with what the scanner found.
    fn store(&self, origin: &Origin<'_>, receiving: Receiving) -> Answer {
        let bytes = receiving.bytes;
        let (spool, relative, attrs) = match self.check(origin.command, receiving) {
            Ok(checked) => checked,
            Err((status, comment)) => return Answer::failure(status, comment),
        };
        let (verdict, published) = match &self.shared.verdicts {
            None => match self.place(spool, &relative) {
                Ok(published) => (Verdict::success(), Some(published)),
                Err((status, comment)) => return Answer::failure(status, comment),
            },
            Some(verdicts) => {
                let path = self.shared.storage.root().join(&relative);
                verdicts.around_publish(
                    spool,
                    |file| origin.instance(file, &path, self.peer, bytes, &attrs.elements),
                    |spool| self.place(spool, &relative),
                )
            }
        };
        Answer {
            status: verdict.status,
            comment: verdict.error_comment,
            stored: published.map(|published| (published, attrs)),
        }
    }

    /// Check the data set against its command and find its layout path.
    fn check(
        &self,
        command: &Command,
        Receiving { spool, scanner, .. }: Receiving,
    ) -> Result<(Spool, PathBuf, SortAttributes), Failure> {
        let attrs = scanner.finish().map_err(|e| {
            (
                status::CANNOT_UNDERSTAND,
                format!("cannot parse the data set: {e}"),
            )
        })?;
        let sop_class = command
            .affected_sop_class_uid
            .as_deref()
            .unwrap_or_default();
        let sop_instance = command
            .affected_sop_instance_uid
            .as_deref()
            .unwrap_or_default();
        // The data set must describe the instance the command announced (PS3.4 §B.2.3).
        for (found, announced, name) in [
            (&attrs.sop_class_uid, sop_class, "SOP Class UID"),
            (&attrs.sop_instance_uid, sop_instance, "SOP Instance UID"),
        ] {
            if let Some(found) = found.as_deref().filter(|f| *f != announced.as_bytes()) {
                let found = String::from_utf8_lossy(found);
                return Err((
                    status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    mismatch_comment(name, &found, announced),
                ));
            }
        }
        let relative =
            layout::relative_path(self.shared.config.sort_key, &attrs, sop_instance.as_bytes())
                .map_err(|missing| (status::CANNOT_UNDERSTAND, missing.to_string()))?;
        Ok((spool, relative, attrs))
    }

    /// Move a checked spool file into its layout path, as the duplicate policy says.
    fn place(&self, spool: Spool, relative: &Path) -> Result<Published, Failure> {
        let config = &self.shared.config;
        // Callbacks read the version they were told of, even after a duplicate replaced it.
        let held = match &self.shared.journal {
            Some(journal) if config.emit_stored => Some(journal.held_path(&spool.name())),
            _ => None,
        };
        let placed = self
            .shared
            .storage
            .publish(spool, relative, config.duplicates, held.as_deref())
            .map_err(|e| (status::OUT_OF_RESOURCES, format!("cannot store: {e}")))?;
        match placed {
            Placed::Stored(path) => Ok(Published {
                path,
                held,
                new: true,
            }),
            Placed::Kept(path) => Ok(Published {
                path,
                held: None,
                new: false,
            }),
            Placed::Refused => Err((
                status::DUPLICATE_SOP_INSTANCE,
                // The UID is in the response's Affected SOP Instance UID; the comment (LO)
                // holds 64 characters.
                "this SOP Instance is stored already (duplicates rejected)".into(),
            )),
        }
    }
}

/// Where a C-STORE came from, as the handler is told.
struct Origin<'a> {
    association: &'a Association,
    context_id: u8,
    context: &'a AcceptedContext,
    command: &'a Command,
}

impl Origin<'_> {
    fn sop_instance_uid(&self) -> String {
        self.command
            .affected_sop_instance_uid
            .clone()
            .unwrap_or_default()
    }

    /// What handlers and callbacks are told of the instance, stored (to be) at `path`.
    fn receipt(&self, path: &Path, peer: SocketAddr, bytes: u64) -> Receipt {
        Receipt {
            path: path.to_path_buf(),
            sop_class_uid: self.context.abstract_syntax.clone(),
            sop_instance_uid: self.sop_instance_uid(),
            transfer_syntax_uid: self.context.transfer_syntax.clone(),
            calling_ae: self.association.calling_ae.clone(),
            called_ae: self.association.called_ae.clone(),
            peer,
            bytes,
        }
    }

    fn instance(
        &self,
        file: &Path,
        path: &Path,
        peer: SocketAddr,
        bytes: u64,
        elements: &[Element],
    ) -> Instance {
        Instance {
            receipt: self.receipt(path, peer, bytes),
            file: file.to_path_buf(),
            elements: elements.to_vec(),
            message_id: self.command.message_id.unwrap_or(0),
            context_id: self.context_id,
        }
    }

    /// The journal's row for a stored instance.
    fn row(
        &self,
        Published { path, held, .. }: Published,
        attrs: SortAttributes,
        peer: SocketAddr,
        bytes: u64,
        pending: bool,
    ) -> Row {
        let text = |v: Option<Vec<u8>>| {
            v.filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        Row {
            sop_class_uid: self.context.abstract_syntax.clone(),
            sop_instance_uid: self.sop_instance_uid(),
            transfer_syntax_uid: self.context.transfer_syntax.clone(),
            patient_id: text(attrs.patient_id),
            study_instance_uid: text(attrs.study_instance_uid),
            series_instance_uid: text(attrs.series_instance_uid),
            accession_number: text(attrs.accession_number),
            modality: text(attrs.modality),
            study_date: text(attrs.study_date),
            path,
            bytes,
            calling_ae: self.association.calling_ae.clone(),
            called_ae: self.association.called_ae.clone(),
            peer: Some(peer),
            held,
            pending,
        }
    }
}

/// What a C-STORE is answered with, and the file it left with what the scanner found (None:
/// no file).
struct Answer {
    status: u16,
    comment: Option<String>,
    stored: Option<(Published, SortAttributes)>,
}

impl Answer {
    fn failure(status: u16, comment: String) -> Answer {
        Answer {
            status,
            comment: Some(comment),
            stored: None,
        }
    }
}

/// Error Comment is LO (PS3.5 §6.2): 64 characters at most.
const MAX_ERROR_COMMENT: usize = 64;

/// "SOP Instance UID: data set X, command Y" within the Error Comment's 64 characters: UIDs
/// too long for it lose their middle, so the root and the distinguishing tail both remain.
fn mismatch_comment(name: &str, found: &str, announced: &str) -> String {
    let fixed = name.len() + ": data set , command ".len();
    let room = MAX_ERROR_COMMENT.saturating_sub(fixed);
    // A short UID leaves the other what it does not need.
    let first = (room / 2).max(room.saturating_sub(announced.len()));
    let found = shorten_middle(found, first);
    let announced = shorten_middle(announced, room.saturating_sub(found.len()));
    format!("{name}: data set {found}, command {announced}")
}

/// `uid` in at most `max` characters, its middle replaced by "..." when it is longer (UIDs are
/// ASCII, PS3.5 §9.1; anything else is cut at character boundaries).
fn shorten_middle(uid: &str, max: usize) -> String {
    let chars: Vec<char> = uid.chars().collect();
    if chars.len() <= max {
        return uid.to_owned();
    }
    let kept = max.saturating_sub(3);
    let head = kept / 2;
    let tail = kept - head;
    let mut short: String = chars[..head].iter().collect();
    short.push_str(&"..."[..max.min(3)]);
    short.extend(&chars[chars.len() - tail..]);
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_comment_says_what_differs_within_64_characters() {
        let found = "1.2.826.0.1.3680043.8.498.10200000000000000000000000000000000000001";
        let announced = "1.2.826.0.1.3680043.8.498.10200000000000000000000000000000000000002";
        let comment = mismatch_comment("SOP Instance UID", found, announced);
        assert!(comment.chars().count() <= MAX_ERROR_COMMENT, "{comment}");
        assert!(
            comment.starts_with("SOP Instance UID: data set 1.2.8"),
            "{comment}"
        );
        // The tails, where the two UIDs differ, both survive.
        assert!(comment.contains("...00001, command 1.2.8"), "{comment}");
        assert!(comment.ends_with("00002"), "{comment}");

        let short = mismatch_comment("SOP Class UID", "1.2.840.10008.5.1.4.1.1.4", "1.2.3");
        assert_eq!(
            short,
            "SOP Class UID: data set 1.2.840.10008.5.1.4.1.1.4, command 1.2.3"
        );
    }

    #[test]
    fn shorten_middle_keeps_both_ends() {
        assert_eq!(shorten_middle("1.2.3.4.5.6.7.8.9", 9), "1.2...8.9");
        assert_eq!(shorten_middle("1.2.3", 9), "1.2.3");
        assert_eq!(shorten_middle("1.2.3.4", 2), "..");
    }
}
