//! One association on one socket: read PDUs into a reusable buffer, negotiate, answer C-ECHO,
//! stream C-STORE data sets to the spool, publish them and respond (PS3.8 §9, PS3.7 §9.1).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::association::{self, AcceptedContext, Association};
use crate::dimse::{self, status, Command, Response, MAX_COMMAND_SET};
use crate::error::rejection_words;
use crate::events::{AssociationRecord, EventQueue, Outcome};
use crate::pdu::{self, abort, Abort, Pdu, MAX_CONTROL_PDU};
use crate::server::Shared;
use crate::tls::ServerStream;
use crate::verdict::{Echo, Verdict};

use c_store::{Deferred, Sink};
use reader::PduReader;

mod c_store;
// pub(crate): any stream reading its socket by a deadline (TLS too) can use it.
pub(crate) mod read_timeout;
mod reader;

/// The first byte of a TLS client's first record (RFC 8446 §5.1, content type handshake).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Longest wait for the peer to close after our A-ASSOCIATE-RJ or A-ABORT.
const ARTIM_LINGER: Duration = Duration::from_secs(5);

/// Why an association ends early.
enum Stop {
    /// The socket failed or the peer went away.
    Io(io::Error),
    PeerAborted,
    /// No complete A-ASSOCIATE-RQ within the ARTIM time: close without a PDU (PS3.8 §9.2.3,
    /// action AA-2), as there is no association to abort.
    ArtimExpired,
    /// The peer went silent past a timeout; we send an A-ABORT.
    TimedOut(&'static str),
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

/// A PDU that does not parse: A-ABORT with the reason the codec names (PS3.8 §9.3.8).
impl From<pdu::PduError> for Stop {
    fn from(e: pdu::PduError) -> Stop {
        protocol_error(e.abort_reason(), e.to_string())
    }
}

/// What a read is waiting for, which says how long it may take and what happens after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The A-ASSOCIATE-RQ, within `acse_timeout` of the connection (the ARTIM timer).
    Artim,
    /// The first PDU of the next message, within `network_timeout`.
    Idle,
    /// The rest of a started message or PDU, within `dimse_timeout` per PDU.
    Dimse,
}

impl Wait {
    fn expired(self) -> Stop {
        match self {
            Wait::Artim => Stop::ArtimExpired,
            Wait::Idle => Stop::TimedOut("idle longer than network_timeout"),
            Wait::Dimse => Stop::TimedOut("message stalled longer than dimse_timeout"),
        }
    }

    /// Why a read failed while waiting for this.
    fn failed(self, e: io::Error) -> Stop {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.expired(),
            _ => Stop::Io(e),
        }
    }
}

/// `timeout` from now; None (wait forever) for no timeout or one past the clock's range.
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

fn protocol_error(reason: u8, why: impl Into<String>) -> Stop {
    Stop::Abort {
        source: abort::SOURCE_PROVIDER,
        reason,
        why: why.into(),
    }
}

/// A-ABORT for a PDU that may not come now: reason 2 (unexpected) for a PDU type of PS3.8,
/// reason 1 (unrecognized) for any other; its body is not read.
fn unexpected_pdu(pdu_type: u8, why: &str) -> Stop {
    if (pdu::ASSOCIATE_RQ..=pdu::ABORT).contains(&pdu_type) {
        protocol_error(
            abort::UNEXPECTED_PDU,
            format!("unexpected PDU type {pdu_type:#04x}: {why}"),
        )
    } else if pdu_type == TLS_HANDSHAKE_RECORD {
        protocol_error(
            abort::UNRECOGNIZED_PDU,
            "unknown PDU type 0x16: a TLS handshake on the plain port",
        )
    } else {
        protocol_error(
            abort::UNRECOGNIZED_PDU,
            format!("unknown PDU type {pdu_type:#04x}"),
        )
    }
}

/// Check the framing and context of every PDV of a P-DATA-TF body before acting on any: a
/// malformed PDU is refused whole, so no part of it is answered or stored.
fn check_pdvs(association: &Association, body: &[u8]) -> Result<(), Stop> {
    for pdv in pdu::pdvs(body) {
        let pdv = pdv?;
        if association.context(pdv.context_id).is_none() {
            return Err(protocol_error(
                abort::INVALID_PARAMETER,
                format!(
                    "PDV on presentation context {} that was not accepted",
                    pdv.context_id
                ),
            ));
        }
    }
    Ok(())
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
    stream: ServerStream,
    shared: &'a Shared,
    events: &'a EventQueue,
    peer: SocketAddr,
    /// Encoded PDUs waiting to leave in one write.
    out: Vec<u8>,
    command: Vec<u8>,
    record: AssociationRecord,
    /// Received instances waiting for a durable flush (durable only).
    deferred: Vec<Deferred>,
}

/// Serve one connection to its end and report it; with `tls`, the TLS handshake comes first.
pub(crate) fn serve(
    tcp: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
    shared: &Shared,
    events: &EventQueue,
    over_limit: bool,
) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let started = Instant::now();
    // The ARTIM timer runs from the connection to the whole A-ASSOCIATE-RQ (PS3.8 §9.1.5), the
    // TLS handshake included, so a stalled handshake cannot hold the connection longer.
    let artim = deadline(shared.config.acse_timeout);
    let mut record = AssociationRecord {
        peer,
        calling_ae: String::new(),
        called_ae: String::new(),
        instances: 0,
        failures: 0,
        echoes: 0,
        bytes: 0,
        duration: Default::default(),
        outcome: Outcome::Closed,
        detail: None,
        user_identity: None,
        studies: Vec::new(),
    };
    let stream = match tls {
        None => Ok(ServerStream::plain(tcp)),
        Some(config) => handshake(tcp, config, shared, artim),
    };
    match stream {
        Ok(stream) => {
            let mut connection = Connection {
                stream,
                shared,
                events,
                peer,
                out: Vec::with_capacity(4096),
                command: Vec::new(),
                record,
                deferred: Vec::new(),
            };
            let result = connection.run(over_limit, artim);
            connection.finish(result);
            record = connection.record;
        }
        Err(why) => {
            // No association was started, so there is nothing to answer in DICOM.
            record.outcome = Outcome::Rejected;
            record.detail = Some(format!("TLS handshake failed: {why}"));
        }
    }
    record.duration = started.elapsed();
    // Its instances are in the index before its end is told (completion on release).
    if record.outcome != Outcome::Released {
        sync_journal(shared, &record);
    }
    // Never waits for room, never dropped: a stuck callback neither pins finished
    // associations (and their slots) nor loses their log lines.
    events.push_record(record);
}

/// Wait for the journal to commit what the association recorded (its rows are logged at once
/// and committed within milliseconds). A failing commit leaves them logged, for later.
fn sync_journal(shared: &Shared, record: &AssociationRecord) {
    if let (true, Some(journal)) = (record.instances > 0, &shared.journal) {
        let _ = journal.sync();
    }
}

/// TLS over the accepted socket (PS3.15 Annex B), the handshake done by `due` on this
/// association's thread, so a slow one delays no other connection.
fn handshake(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    shared: &Shared,
    due: Option<Instant>,
) -> Result<ServerStream, String> {
    // The handshake's flights must not wait for delayed ACKs either.
    tcp.set_nodelay(true)
        .and_then(|()| tcp.set_write_timeout(shared.config.acse_timeout))
        .map_err(|e| e.to_string())?;
    ServerStream::accept(tcp, config, due).map_err(|e| e.to_string())
}

impl Connection<'_> {
    fn run(&mut self, over_limit: bool, artim: Option<Instant>) -> Result<(), Stop> {
        let config = &self.shared.config;
        // Without TCP_NODELAY each small C-STORE-RSP waits for the delayed ACK (~40 ms).
        self.stream.tcp().set_nodelay(true)?;
        self.stream
            .tcp()
            .set_write_timeout(config.network_timeout)?;
        let mut reader = PduReader::new();
        let (pdu_type, length) = self.read_header(&mut reader, artim, Wait::Artim)?;
        match pdu_type {
            pdu::ASSOCIATE_RQ => {}
            // An A-ABORT before the association exists: just close (PS3.8 §9.2.3, AA-3).
            pdu::ABORT => return Err(Stop::PeerAborted),
            other => return Err(unexpected_pdu(other, "expected A-ASSOCIATE-RQ")),
        }
        let body = self.read_body(&mut reader, length, MAX_CONTROL_PDU, artim, Wait::Artim)?;
        let rq = match Pdu::parse(pdu_type, body) {
            Ok(Pdu::AssociateRq(rq)) => rq,
            Ok(_) => unreachable!("the PDU type was checked"),
            Err(e) => return Err(e.into()),
        };
        self.record.calling_ae = String::from_utf8_lossy(&rq.calling_ae).trim().to_owned();
        self.record.called_ae = String::from_utf8_lossy(&rq.called_ae).trim().to_owned();
        let identity = rq.user_info.user_identity_rq.as_ref();
        self.record.user_identity = identity.map(association::identity_words);
        let negotiated = match over_limit {
            true => {
                if self.shared.shutting_down.load(Ordering::SeqCst) {
                    self.record.detail = Some("server shutting down".into());
                }
                Err(association::busy())
            }
            false => config.policy.negotiate(&rq),
        }
        .and_then(|(association, mut ac)| {
            let calling_ae = &association.calling_ae;
            match config.policy.check_user_identity(identity, calling_ae) {
                Ok(response) => {
                    ac.user_info.user_identity_ac = response;
                    Ok((association, ac))
                }
                Err(why) => {
                    self.record.detail = Some(format!("user identity refused: {why}"));
                    Err(association::identity_rejected())
                }
            }
        });
        let association = match negotiated {
            Ok((association, ac)) => {
                ac.encode(&mut self.out);
                association
            }
            Err(rj) => {
                rj.encode(&mut self.out);
                self.record.outcome = Outcome::Rejected;
                // The log says why in words, as the SCU does (PS3.8 Table 9-21).
                let (result, _, why) = rejection_words(rj.result, rj.source, rj.reason);
                let codes = format!(
                    "{result}, {why} [result {}, source {}, reason {}]",
                    rj.result, rj.source, rj.reason
                );
                self.record.detail = Some(match self.record.detail.take() {
                    Some(why) => format!("{why} ({codes})"),
                    None => codes,
                });
                return self.flush_and_close();
            }
        };
        drop(rq);
        self.flush()?;
        self.serve_association(&association, &mut reader)
    }

    fn serve_association(
        &mut self,
        association: &Association,
        reader: &mut PduReader,
    ) -> Result<(), Stop> {
        let config = &self.shared.config;
        let mut message = Message::Idle;
        loop {
            // Between messages the peer may think; inside one, each PDU is due promptly.
            let wait = match message {
                Message::Idle => Wait::Idle,
                _ => Wait::Dimse,
            };
            let timeout = match wait {
                Wait::Idle => config.network_timeout,
                _ => config.dimse_timeout,
            };
            if self.settle_due(wait == Wait::Idle, reader) {
                self.settle(association)?;
            }
            let (pdu_type, length) = self.read_header(reader, deadline(timeout), wait)?;
            match pdu_type {
                pdu::P_DATA_TF => {
                    let max = config.policy.receive_limit();
                    let due = deadline(config.dimse_timeout);
                    let body = self.read_body(reader, length, max, due, Wait::Dimse)?;
                    check_pdvs(association, body)?;
                    let pdvs = pdu::pdvs(body).flatten();
                    for (pdv, context) in
                        pdvs.filter_map(|p| Some((p, association.context(p.context_id)?)))
                    {
                        message = self.receive(association, context, message, pdv)?;
                    }
                }
                pdu::RELEASE_RQ => {
                    let due = deadline(config.dimse_timeout);
                    let body = self.read_body(reader, length, MAX_CONTROL_PDU, due, Wait::Dimse)?;
                    Pdu::parse(pdu_type, body)?;
                    if !matches!(message, Message::Idle) {
                        // The unfinished message is dropped with its spool file.
                        self.record.detail = Some("released during a message".into());
                    }
                    self.settle(association)?;
                    // Its instances are in the index once the sender sees the release.
                    sync_journal(self.shared, &self.record);
                    pdu::encode_release_rp(&mut self.out);
                    self.flush()?;
                    self.record.outcome = Outcome::Released;
                    return Ok(());
                }
                // Its body (source and reason) changes nothing: the association is over.
                pdu::ABORT => return Err(Stop::PeerAborted),
                other => {
                    return Err(unexpected_pdu(
                        other,
                        "only P-DATA-TF, A-RELEASE-RQ and A-ABORT may follow the association",
                    ))
                }
            }
        }
    }

    /// Read a PDU header by `due`: (type, body length).
    fn read_header(
        &mut self,
        reader: &mut PduReader,
        due: Option<Instant>,
        wait: Wait,
    ) -> Result<(u8, u32), Stop> {
        self.stream.set_due(due)?;
        reader.header(&mut self.stream).map_err(|e| wait.failed(e))
    }

    /// Read the body of `length` bytes of the PDU whose header was just read, by `due`. The
    /// length is checked against `max` before a byte of the body is read or allocated.
    fn read_body<'r>(
        &mut self,
        reader: &'r mut PduReader,
        length: u32,
        max: u32,
        due: Option<Instant>,
        wait: Wait,
    ) -> Result<&'r [u8], Stop> {
        if length > max {
            return Err(protocol_error(
                abort::INVALID_PARAMETER,
                format!("PDU of {length} bytes exceeds the maximum of {max}"),
            ));
        }
        self.stream.set_due(due)?;
        reader
            .body(&mut self.stream, length)
            .map_err(|e| wait.failed(e))
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
                sink.write(pdv.data, self.shared.config.max_instance_size);
                if !pdv.is_last {
                    return Ok(Message::DataSet {
                        context_id,
                        command,
                        sink,
                    });
                }
                self.complete_store(association, context_id, command, sink)?;
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
        let is_request = command.command_field & dimse::RESPONSE_BIT == 0;
        // A C-CANCEL-RQ names the request it cancels instead (PS3.7 §9.3.2.3).
        if is_request && command.command_field != dimse::C_CANCEL_RQ && command.message_id.is_none()
        {
            // The response must name the request's MessageID (PS3.7 §9.3.1): none to name.
            return Err(protocol_error(
                abort::INVALID_PARAMETER,
                "request command set without MessageID",
            ));
        }
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
                self.record.echoes += 1;
                let verdict = match &self.shared.echoes {
                    None => Verdict::success(),
                    Some(echoes) => echoes.echo_verdict(Echo {
                        sop_class_uid: context.abstract_syntax.clone(),
                        transfer_syntax_uid: context.transfer_syntax.clone(),
                        calling_ae: association.calling_ae.clone(),
                        called_ae: association.called_ae.clone(),
                        peer: self.peer,
                        message_id: command.message_id.unwrap_or(0),
                        context_id,
                    }),
                };
                let comment = verdict.error_comment.as_deref();
                self.respond(association, context_id, &command, verdict.status, comment)?;
                Ok(Message::Idle)
            }
            dimse::C_STORE_RQ => {
                self.count_instance(false, 0);
                let comment = "C-STORE-RQ without a data set";
                self.respond(
                    association,
                    context_id,
                    &command,
                    status::CANNOT_UNDERSTAND,
                    Some(comment),
                )?;
                self.report_failure(association, &command, status::CANNOT_UNDERSTAND, comment);
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

    /// Send a response command set, fragmented to the peer's max PDU, in one write.
    fn respond(
        &mut self,
        association: &Association,
        context_id: u8,
        command: &Command,
        status: u16,
        error_comment: Option<&str>,
    ) -> Result<(), Stop> {
        // Requests are answered in arrival order: instances waiting for a flush first.
        self.settle(association)?;
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
        pdu::encode_command_pdus(&mut self.out, context_id, fragment, &encoded);
        self.flush()
    }

    fn flush(&mut self) -> Result<(), Stop> {
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        Ok(result?)
    }

    /// Send a final A-ASSOCIATE-RJ or A-ABORT, then wait in Sta13 for the peer to close the
    /// transport connection, up to the ARTIM timer (PS3.8 §9.2.3: AE-8 or AA-1, then AR-5 on
    /// the peer's close or AA-2 on expiry), and only then close our side. Closing first
    /// would let the peer see the close before it has acted on our PDU (pynetdicom then
    /// reports an abort instead of the rejection), and closing with unread input would reset
    /// the connection, which can discard our last PDU before the peer reads it.
    fn flush_and_close(&mut self) -> Result<(), Stop> {
        self.flush()?;
        let artim = self
            .shared
            .config
            .acse_timeout
            .unwrap_or(ARTIM_LINGER)
            .min(ARTIM_LINGER);
        self.stream.set_due(deadline(Some(artim)))?;
        // Sta13 ignores what still arrives (AA-6): read and drop it.
        self.stream.drain(MAX_CONTROL_PDU as usize);
        self.stream.close_write()?;
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
            Err(Stop::ArtimExpired) => {
                self.record.outcome = Outcome::Closed;
                self.record.detail = Some("no A-ASSOCIATE-RQ within acse_timeout".into());
                return;
            }
            Err(Stop::TimedOut(why)) => (abort::SOURCE_PROVIDER, abort::NOT_SPECIFIED, why.into()),
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
                    "timed out sending to the peer".into(),
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

#[cfg(test)]
mod tests;
