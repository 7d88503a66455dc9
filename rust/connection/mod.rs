//! One association on one socket: read PDUs into a reusable buffer, negotiate, answer C-ECHO,
//! stream C-STORE data sets to the spool, publish them and respond (PS3.8 §9, PS3.7 §9.1).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use crate::association::{self, AcceptedContext, Association};
use crate::dimse::{self, status, Command, Response};
use crate::file_meta::FileMeta;
use crate::layout;
use crate::pdu::{self, Abort, Pdu};
use crate::scan::{Encoding, Scanner};
use crate::server::{AssociationRecord, Event, Outcome, Shared, StoredInstance};
use crate::store::Spool;

/// Bound on PDUs other than P-DATA (an A-ASSOCIATE-RQ with hundreds of contexts fits easily).
const MAX_CONTROL_PDU: u32 = 1 << 20;
/// Longest wait for the peer to close after our A-ASSOCIATE-RJ or A-ABORT.
const ARTIM_LINGER: Duration = Duration::from_secs(5);
/// Bound on a reassembled command set; real ones are a few hundred bytes.
const MAX_COMMAND_SET: usize = 64 * 1024;

/// A-ABORT source and reasons (PS3.8 §9.3.8).
mod abort {
    pub const SOURCE_USER: u8 = 0;
    pub const SOURCE_PROVIDER: u8 = 2;
    pub const NOT_SPECIFIED: u8 = 0;
    pub const UNRECOGNIZED_PDU: u8 = 1;
    pub const UNEXPECTED_PDU: u8 = 2;
    pub const UNEXPECTED_PARAMETER: u8 = 5;
    pub const INVALID_PARAMETER: u8 = 6;
}

/// Why an association ends early.
enum Stop {
    /// The socket failed or the peer went away.
    Io(io::Error),
    PeerAborted,
    /// We send an A-ABORT with this source/reason.
    Abort {
        source: u8,
        reason: u8,
        why: String,
    },
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Io(e)
    }
}

fn protocol_error(reason: u8, why: impl Into<String>) -> Stop {
    Stop::Abort {
        source: abort::SOURCE_PROVIDER,
        reason,
        why: why.into(),
    }
}

/// A data set on its way to disk.
struct Receiving {
    spool: Spool,
    scanner: Scanner,
    bytes: u64,
}

/// Where the bytes of the current data set go.
enum Sink {
    Spool(Box<Receiving>),
    /// Received and dropped; the request is answered with this status.
    Discard {
        status: u16,
        comment: String,
    },
}

/// DIMSE message reassembly state (PS3.7 §9.1, PS3.8 annex E).
enum Message {
    Idle,
    /// Command fragments of a message arriving on this context.
    Command(u8),
    DataSet {
        context_id: u8,
        command: Command,
        sink: Sink,
    },
}

struct Connection<'a> {
    stream: TcpStream,
    shared: &'a Shared,
    events: &'a SyncSender<Event>,
    peer: SocketAddr,
    /// Encoded PDUs waiting to leave in one write.
    out: Vec<u8>,
    command: Vec<u8>,
    record: AssociationRecord,
}

/// Serve one connection to its end and report it.
pub(crate) fn serve(
    stream: TcpStream,
    shared: &Shared,
    events: &SyncSender<Event>,
    over_limit: bool,
) {
    let Ok(peer) = stream.peer_addr() else { return };
    let mut connection = Connection {
        stream,
        shared,
        events,
        peer,
        out: Vec::with_capacity(4096),
        command: Vec::new(),
        record: AssociationRecord {
            peer,
            calling_ae: String::new(),
            called_ae: String::new(),
            instances: 0,
            failures: 0,
            bytes: 0,
            duration: Default::default(),
            outcome: Outcome::Closed,
            detail: None,
        },
    };
    let started = Instant::now();
    let result = connection.run(over_limit);
    connection.finish(result);
    connection.record.duration = started.elapsed();
    let _ = events.send(Event::AssociationEnded(connection.record));
}

impl Connection<'_> {
    fn run(&mut self, over_limit: bool) -> Result<(), Stop> {
        let config = &self.shared.config;
        // Without TCP_NODELAY each small C-STORE-RSP waits for the delayed ACK (~40 ms).
        self.stream.set_nodelay(true)?;
        self.stream.set_read_timeout(config.acse_timeout)?;
        self.stream.set_write_timeout(config.network_timeout)?;
        let mut buffer = Vec::new();
        let pdu_type = self.read_pdu(&mut buffer, MAX_CONTROL_PDU)?;
        let rq = match Pdu::parse(pdu_type, &buffer) {
            Ok(Pdu::AssociateRq(rq)) => rq,
            Ok(_) => {
                return Err(protocol_error(
                    abort::UNEXPECTED_PDU,
                    "expected A-ASSOCIATE-RQ",
                ))
            }
            Err(e) => return Err(protocol_error(e.abort_reason(), e.to_string())),
        };
        self.record.calling_ae = String::from_utf8_lossy(&rq.calling_ae).trim().to_owned();
        self.record.called_ae = String::from_utf8_lossy(&rq.called_ae).trim().to_owned();
        if over_limit {
            association::busy().encode(&mut self.out);
            self.record.outcome = Outcome::Rejected;
            self.record.detail = Some("association limit reached".into());
            return self.flush_and_close();
        }
        let association = match config.policy.negotiate(&rq) {
            Ok((association, ac)) => {
                ac.encode(&mut self.out);
                association
            }
            Err(rj) => {
                rj.encode(&mut self.out);
                self.record.outcome = Outcome::Rejected;
                self.record.detail = Some(format!(
                    "result {}, source {}, reason {}",
                    rj.result, rj.source, rj.reason
                ));
                return self.flush_and_close();
            }
        };
        drop(rq);
        self.flush()?;
        self.stream.set_read_timeout(config.network_timeout)?;
        self.serve_association(&association, &mut buffer)
    }

    fn serve_association(
        &mut self,
        association: &Association,
        buffer: &mut Vec<u8>,
    ) -> Result<(), Stop> {
        let mut message = Message::Idle;
        loop {
            let pdu_type = self.read_pdu(buffer, self.shared.config.policy.max_pdu)?;
            match pdu_type {
                pdu::P_DATA_TF => {
                    for pdv in pdu::pdvs(buffer) {
                        let pdv =
                            pdv.map_err(|e| protocol_error(e.abort_reason(), e.to_string()))?;
                        let Some(context) = association.context(pdv.context_id) else {
                            return Err(protocol_error(
                                abort::INVALID_PARAMETER,
                                format!(
                                    "PDV on presentation context {} that was not accepted",
                                    pdv.context_id
                                ),
                            ));
                        };
                        message = self.receive(association, context, message, pdv)?;
                    }
                }
                pdu::RELEASE_RQ => {
                    if !matches!(message, Message::Idle) {
                        self.record.detail = Some("released during a message".into());
                    }
                    pdu::encode_release_rp(&mut self.out);
                    self.flush()?;
                    self.record.outcome = Outcome::Released;
                    return Ok(());
                }
                pdu::ABORT => return Err(Stop::PeerAborted),
                other => {
                    return Err(protocol_error(
                        abort::UNEXPECTED_PDU,
                        format!("unexpected PDU type {other:#04x} on an established association"),
                    ))
                }
            }
        }
    }

    /// Read one PDU into `buffer` (its body only) and return its type. Lengths are checked
    /// before a byte of the body is read.
    fn read_pdu(&mut self, buffer: &mut Vec<u8>, max_pdata: u32) -> Result<u8, Stop> {
        let mut header = [0u8; pdu::HEADER_LEN];
        self.stream.read_exact(&mut header)?;
        let (pdu_type, length) = pdu::parse_header(&header);
        let limit = match pdu_type {
            pdu::P_DATA_TF => max_pdata,
            pdu::ASSOCIATE_RQ..=pdu::ABORT => MAX_CONTROL_PDU,
            other => {
                return Err(protocol_error(
                    abort::UNRECOGNIZED_PDU,
                    format!("unknown PDU type {other:#04x}"),
                ))
            }
        };
        // A max length of 0 means no limit on our side too; keep the control bound then.
        let limit = if limit == 0 { MAX_CONTROL_PDU } else { limit };
        if length > limit {
            return Err(protocol_error(
                abort::INVALID_PARAMETER,
                format!("PDU of {length} bytes exceeds the maximum of {limit}"),
            ));
        }
        buffer.resize(length as usize, 0);
        self.stream.read_exact(buffer)?;
        Ok(pdu_type)
    }

    fn receive(
        &mut self,
        association: &Association,
        context: &AcceptedContext,
        message: Message,
        pdv: pdu::Pdv<'_>,
    ) -> Result<Message, Stop> {
        match (message, pdv.is_command) {
            (Message::Idle, true) => {
                self.command.clear();
                self.receive_command(association, context, pdv)
            }
            (Message::Command(id), true) if id == pdv.context_id => {
                self.receive_command(association, context, pdv)
            }
            (
                Message::DataSet {
                    context_id,
                    command,
                    mut sink,
                },
                false,
            ) if context_id == pdv.context_id => {
                write_fragment(&mut sink, pdv.data);
                if !pdv.is_last {
                    return Ok(Message::DataSet {
                        context_id,
                        command,
                        sink,
                    });
                }
                self.complete_store(association, (context_id, context), &command, sink)?;
                Ok(Message::Idle)
            }
            (_, true) => Err(protocol_error(
                abort::UNEXPECTED_PARAMETER,
                "command fragment out of sequence",
            )),
            (_, false) => Err(protocol_error(
                abort::UNEXPECTED_PARAMETER,
                "data set fragment without a command",
            )),
        }
    }

    fn receive_command(
        &mut self,
        association: &Association,
        context: &AcceptedContext,
        pdv: pdu::Pdv<'_>,
    ) -> Result<Message, Stop> {
        if self.command.len() + pdv.data.len() > MAX_COMMAND_SET {
            return Err(protocol_error(
                abort::INVALID_PARAMETER,
                "command set too large",
            ));
        }
        self.command.extend_from_slice(pdv.data);
        if !pdv.is_last {
            return Ok(Message::Command(pdv.context_id));
        }
        let command = Command::parse(&self.command).map_err(|e| {
            protocol_error(abort::INVALID_PARAMETER, format!("bad command set: {e}"))
        })?;
        let context_id = pdv.context_id;
        match command.command_field {
            dimse::C_STORE_RQ if command.has_data_set => {
                let sink = self.begin_store(association, context, &command);
                Ok(Message::DataSet {
                    context_id,
                    command,
                    sink,
                })
            }
            dimse::C_CANCEL_RQ => Ok(Message::Idle),
            field if field & dimse::RESPONSE_BIT != 0 => Err(protocol_error(
                abort::UNEXPECTED_PARAMETER,
                "a DIMSE response sent to an SCP",
            )),
            _ if command.has_data_set => {
                let sink = Sink::Discard {
                    status: status::UNRECOGNIZED_OPERATION,
                    comment: format!(
                        "command {:#06x} with a data set is not supported",
                        command.command_field
                    ),
                };
                Ok(Message::DataSet {
                    context_id,
                    command,
                    sink,
                })
            }
            dimse::C_ECHO_RQ => {
                self.respond(association, context_id, &command, status::SUCCESS, None)?;
                Ok(Message::Idle)
            }
            dimse::C_STORE_RQ => {
                self.record.failures += 1;
                let comment = "C-STORE-RQ without a data set";
                self.respond(
                    association,
                    context_id,
                    &command,
                    status::CANNOT_UNDERSTAND,
                    Some(comment),
                )?;
                Ok(Message::Idle)
            }
            field => {
                let comment = format!("command {field:#06x} is not supported");
                self.respond(
                    association,
                    context_id,
                    &command,
                    status::UNRECOGNIZED_OPERATION,
                    Some(&comment),
                )?;
                Ok(Message::Idle)
            }
        }
    }

    fn begin_store(
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

    fn complete_store(
        &mut self,
        association: &Association,
        (context_id, context): (u8, &AcceptedContext),
        command: &Command,
        sink: Sink,
    ) -> Result<(), Stop> {
        let (status, comment, stored) = match sink {
            Sink::Discard { status, comment } => (status, Some(comment), None),
            Sink::Spool(receiving) => {
                self.record.bytes += receiving.bytes;
                match self.publish(association, context, command, *receiving) {
                    Ok(stored) => (status::SUCCESS, None, Some(stored)),
                    Err((status, comment)) => (status, Some(comment), None),
                }
            }
        };
        if status == status::SUCCESS {
            self.record.instances += 1;
        } else {
            self.record.failures += 1;
        }
        self.respond(association, context_id, command, status, comment.as_deref())?;
        if let Some(stored) = stored.filter(|_| self.shared.config.emit_stored) {
            // A full queue makes this association wait: back-pressure, never loss.
            let _ = self.events.send(Event::Stored(stored));
        }
        Ok(())
    }

    fn publish(
        &self,
        association: &Association,
        context: &AcceptedContext,
        command: &Command,
        Receiving {
            spool,
            scanner,
            bytes,
        }: Receiving,
    ) -> Result<StoredInstance, (u16, String)> {
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
        let path = self
            .shared
            .storage
            .publish(spool, &relative)
            .map_err(|e| (status::OUT_OF_RESOURCES, format!("cannot store: {e}")))?;
        Ok(StoredInstance {
            path,
            sop_class_uid: sop_class.to_owned(),
            sop_instance_uid: sop_instance.to_owned(),
            transfer_syntax_uid: context.transfer_syntax.clone(),
            calling_ae: association.calling_ae.clone(),
            called_ae: association.called_ae.clone(),
            peer: self.peer,
            bytes,
        })
    }

    /// Send a response command set, fragmented to the peer's max PDU, in one write.
    fn respond(
        &mut self,
        association: &Association,
        context_id: u8,
        command: &Command,
        status: u16,
        error_comment: Option<&str>,
    ) -> Result<(), Stop> {
        let mut encoded = Vec::with_capacity(256);
        Response {
            command_field: command.command_field | dimse::RESPONSE_BIT,
            message_id_being_responded_to: command.message_id.unwrap_or(0),
            affected_sop_class_uid: command.affected_sop_class_uid.as_deref(),
            affected_sop_instance_uid: command.affected_sop_instance_uid.as_deref(),
            status,
            error_comment,
        }
        .encode(&mut encoded);
        // PDU length = 6 (PDV header) + fragment; a max of 0 means no limit (PS3.8 §D.1).
        let fragment = match association.peer_max_pdu {
            0 => encoded.len(),
            max => (max as usize).saturating_sub(6).max(2),
        };
        let chunks = encoded.len().div_ceil(fragment);
        for (i, chunk) in encoded.chunks(fragment).enumerate() {
            pdu::encode_pdata(&mut self.out, context_id, true, i + 1 == chunks, chunk);
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), Stop> {
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        Ok(result?)
    }

    /// Send a final A-ASSOCIATE-RJ or A-ABORT and let the peer close first, as the ARTIM
    /// timer does (PS3.8 §9.1.6): closing with unread input would reset the connection, and a
    /// reset can discard our last PDU before the peer reads it.
    fn flush_and_close(&mut self) -> Result<(), Stop> {
        self.flush()?;
        self.stream.shutdown(Shutdown::Write)?;
        let artim = self
            .shared
            .config
            .acse_timeout
            .unwrap_or(ARTIM_LINGER)
            .min(ARTIM_LINGER);
        self.stream.set_read_timeout(Some(artim))?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_CONTROL_PDU as usize {
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok(())
    }

    /// Record how the association ended and send an A-ABORT where one is due.
    fn finish(&mut self, result: Result<(), Stop>) {
        let shutting_down = self.shared.shutting_down.load(Ordering::SeqCst);
        let (source, reason, why) = match result {
            Ok(()) => return,
            Err(Stop::PeerAborted) => {
                self.record.outcome = Outcome::AbortedByPeer;
                return;
            }
            Err(Stop::Abort {
                source,
                reason,
                why,
            }) => (source, reason, why),
            Err(Stop::Io(_)) if shutting_down => (
                abort::SOURCE_USER,
                abort::NOT_SPECIFIED,
                "server shutting down".into(),
            ),
            Err(Stop::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                (
                    abort::SOURCE_PROVIDER,
                    abort::NOT_SPECIFIED,
                    "timed out waiting for the peer".into(),
                )
            }
            Err(Stop::Io(e)) => {
                self.record.outcome = Outcome::Closed;
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    self.record.detail = Some(e.to_string());
                }
                return;
            }
        };
        self.record.outcome = Outcome::Aborted;
        self.record.detail = Some(why);
        Abort { source, reason }.encode(&mut self.out);
        let _ = self.flush_and_close();
    }
}

/// Append a data set fragment to the spool and the scanner; on failure switch to discarding
/// (the spool file is removed when dropped) so the rest of the data set is drained.
fn write_fragment(sink: &mut Sink, data: &[u8]) {
    let Sink::Spool(receiving) = sink else {
        return;
    };
    receiving.bytes += data.len() as u64;
    let failure = match (receiving.spool.write(data), receiving.scanner.feed(data)) {
        (Err(e), _) => (
            status::OUT_OF_RESOURCES,
            format!("cannot write the data set: {e}"),
        ),
        (Ok(()), Err(e)) => (
            status::CANNOT_UNDERSTAND,
            format!("cannot parse the data set: {e}"),
        ),
        (Ok(()), Ok(())) => return,
    };
    *sink = Sink::Discard {
        status: failure.0,
        comment: failure.1,
    };
}

#[cfg(test)]
mod tests;
