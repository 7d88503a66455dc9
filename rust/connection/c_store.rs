//! C-STORE on the SCP side (PS3.4 §B.2, PS3.7 §9.1.1): the data set streams to a spool file
//! while the scanner reads its filing attributes; on the last fragment it is checked against
//! the command, published, journaled, and answered.

use crate::association::{AcceptedContext, Association};
use crate::dimse::{status, Command};
use crate::events::StoredInstance;
use crate::file_meta::FileMeta;
use crate::journal::Row;
use crate::layout;
use crate::scan::{Encoding, Scanner, SortAttributes};
use crate::store::{Placed, Spool};
use std::path::PathBuf;

use super::{Connection, Stop};

/// A data set on its way to disk.
pub(super) struct Receiving {
    spool: Spool,
    scanner: Scanner,
    /// Data set bytes received so far.
    bytes: u64,
}

/// An instance in its place: where, what the scanner found, and the version held for its
/// callbacks.
struct Published {
    path: PathBuf,
    attrs: SortAttributes,
    held: Option<PathBuf>,
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
                scanner: Scanner::new(Encoding::for_transfer_syntax(&context.transfer_syntax)),
                bytes: 0,
            })),
            Err(e) => Sink::Discard {
                status: status::OUT_OF_RESOURCES,
                comment: format!("cannot spool: {e}"),
            },
        }
    }

    pub(super) fn complete_store(
        &mut self,
        association: &Association,
        (context_id, context): (u8, &AcceptedContext),
        command: &Command,
        sink: Sink,
    ) -> Result<(), Stop> {
        let mut received = 0;
        let (status, comment, stored) = match sink {
            Sink::Discard { status, comment } => (status, Some(comment), None),
            Sink::Spool(receiving) => {
                received = receiving.bytes;
                self.record.bytes += receiving.bytes;
                match self.publish(command, *receiving) {
                    Ok(published) => (status::SUCCESS, None, published),
                    Err((status, comment)) => (status, Some(comment), None),
                }
            }
        };
        let stored = stored.map(|Published { path, attrs, held }| {
            let text = |v: Option<Vec<u8>>| {
                v.filter(|v| !v.is_empty())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            };
            Row {
                sop_class_uid: context.abstract_syntax.clone(),
                sop_instance_uid: command
                    .affected_sop_instance_uid
                    .clone()
                    .unwrap_or_default(),
                transfer_syntax_uid: context.transfer_syntax.clone(),
                patient_id: text(attrs.patient_id),
                study_instance_uid: text(attrs.study_instance_uid),
                series_instance_uid: text(attrs.series_instance_uid),
                accession_number: text(attrs.accession_number),
                modality: text(attrs.modality),
                study_date: text(attrs.study_date),
                path,
                bytes: received,
                calling_ae: association.calling_ae.clone(),
                called_ae: association.called_ae.clone(),
                peer: Some(self.peer),
                held,
                pending: self.shared.config.emit_stored,
            }
        });
        // What the consumer is told of; taken before the row goes to the journal's writer.
        let emit = self.shared.config.emit_stored;
        let announced = stored.as_ref().map(|row| {
            let event = emit.then(|| StoredInstance {
                path: row.path.clone(),
                held: row.held.clone(),
                journal_id: None,
                sop_class_uid: row.sop_class_uid.clone(),
                sop_instance_uid: row.sop_instance_uid.clone(),
                transfer_syntax_uid: row.transfer_syntax_uid.clone(),
                calling_ae: row.calling_ae.clone(),
                called_ae: row.called_ae.clone(),
                peer: self.peer,
                bytes: received,
            });
            (row.study_instance_uid.clone(), event)
        });
        // Journaled before the answer leaves: what the sender is told is stored is never
        // forgotten, even if the process dies right after.
        let (status, comment, announced) = match (stored, &self.shared.journal) {
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
        if let Some(study) = study.filter(|s| !self.record.studies.contains(s)) {
            self.record.studies.push(study);
        }
        self.count_instance(status == status::SUCCESS, received);
        self.respond(association, context_id, command, status, comment.as_deref())?;
        if let Some(event) = event {
            // A full queue makes this association wait: back-pressure, never loss.
            self.events.push_stored(event);
        }
        Ok(())
    }

    /// Check the data set against its command, then move it into its layout path. Returns
    /// the path, the scanned attributes and the held version; None for a duplicate dropped
    /// under "keep the first".
    fn publish(
        &self,
        command: &Command,
        Receiving { spool, scanner, .. }: Receiving,
    ) -> Result<Option<Published>, (u16, String)> {
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
            (&attrs.sop_class_uid, sop_class, "SOPClassUID"),
            (&attrs.sop_instance_uid, sop_instance, "SOPInstanceUID"),
        ] {
            if let Some(found) = found.as_deref().filter(|f| *f != announced.as_bytes()) {
                let found = String::from_utf8_lossy(found);
                return Err((
                    status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    format!("data set {name} {found} differs from the command's {announced}"),
                ));
            }
        }
        let relative =
            layout::relative_path(self.shared.config.sort_key, &attrs, sop_instance.as_bytes())
                .map_err(|missing| (status::CANNOT_UNDERSTAND, missing.to_string()))?;
        let config = &self.shared.config;
        // Callbacks read the version they were told of, even after a duplicate replaced it.
        let held = match &self.shared.journal {
            Some(journal) if config.emit_stored => Some(journal.held_path(&spool.name())),
            _ => None,
        };
        let placed = self
            .shared
            .storage
            .publish(spool, &relative, config.duplicates, held.as_deref())
            .map_err(|e| (status::OUT_OF_RESOURCES, format!("cannot store: {e}")))?;
        match placed {
            Placed::Stored(path) => Ok(Some(Published { path, attrs, held })),
            Placed::Kept(_) => Ok(None),
            Placed::Refused => Err((
                status::DUPLICATE_SOP_INSTANCE,
                // The UID is in the response's Affected SOP Instance UID; the comment (LO)
                // holds 64 characters.
                "this SOP Instance is stored already (duplicates rejected)".into(),
            )),
        }
    }
}
