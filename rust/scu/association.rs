//! Requestor side of an association (PS3.8 §7.1, §9.3): connect, propose presentation contexts,
//! read the A-ASSOCIATE-AC/RJ, exchange DIMSE messages, release or abort. Every PDU the peer
//! sends is read into one reusable buffer after its length has been checked.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Instant;

use crate::association::context_result;
use crate::dimse::{self, Command, Response, MAX_COMMAND_SET};
use crate::error::Error;
use crate::file_meta::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::pdu::{
    self, abort, Abort, AssociateRq, Pdu, PresentationContextRq, UserInfo, MAX_CONTROL_PDU,
};

use super::ScuConfig;
use crate::tls::ClientStream;

/// Largest P-DATA fragment we send when the peer sets no limit (max length 0, PS3.8 §D.1).
const UNLIMITED_PEER_FRAGMENT: usize = 1 << 20;
/// Data set PDUs gathered before a write: a peer's small PDUs (DCMTK's 16 KiB) leave ~16 to a
/// system call, and under TLS they fill whole 16 KiB records instead of a full one plus a
/// PDU-header-sized one each. The buffer stays under this plus one fragment.
const WRITE_BATCH: usize = 256 * 1024;
/// At most 128 presentation contexts fit the odd ids 1..=255 (PS3.8 §9.3.2.2).
pub const MAX_CONTEXTS: usize = 128;

/// A-ABORT source and reason in words, for error messages.
fn abort_words(a: &Abort) -> String {
    let source = match a.source {
        0 => "the peer (service user)",
        2 => "the peer's service provider",
        _ => "the peer",
    };
    let reason = match (a.source, a.reason) {
        (2, 1) => "unrecognized PDU",
        (2, 2) => "unexpected PDU",
        (2, 4) => "unrecognized PDU parameter",
        (2, 5) => "unexpected PDU parameter",
        (2, 6) => "invalid PDU parameter value",
        _ => "no reason given",
    };
    format!(
        "A-ABORT from {source}: {reason} [source {}, reason {}]",
        a.source, a.reason
    )
}

/// One presentation context we propose: an abstract syntax with exactly one transfer syntax,
/// so the answer says which syntax the peer takes for it (a file's own, or the Implicit VR
/// fallback), each its own context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proposal {
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// A response to one of our requests, as much of it as the SCU reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_id: u16,
    pub status: u16,
    pub error_comment: Option<String>,
}

/// An established association, requestor side.
pub struct Requestor {
    stream: ClientStream,
    /// Body of the last PDU read.
    buffer: Vec<u8>,
    /// Outgoing bytes: whole PDUs, each batch leaving in one write.
    out: Vec<u8>,
    /// Command fragments being reassembled.
    command: Vec<u8>,
    /// Responses read but not yet asked for (a PDU may carry several).
    replies: VecDeque<Reply>,
    /// Accepted contexts: (id, proposal).
    accepted: Vec<(u8, Proposal)>,
    /// Largest fragment per P-DATA-TF PDU the peer receives.
    fragment_len: usize,
    /// Requests we may have outstanding at once (the negotiated asynchronous window).
    pub window: usize,
    our_max_pdu: u32,
    next_message_id: u16,
}

fn connect(config: &ScuConfig) -> Result<TcpStream, Error> {
    let address = format!("{}:{}", config.host, config.port);
    let failed = |source| Error::ConnectionFailed {
        address: address.clone(),
        source,
    };
    let addrs = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(failed)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for this host name");
    for addr in addrs {
        let attempt = match config.timeout {
            Some(timeout) => TcpStream::connect_timeout(&addr, timeout),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// The proposals, as presentation context items with ids 1, 3, 5...
fn context_items(proposals: &[Proposal]) -> Vec<PresentationContextRq> {
    proposals
        .iter()
        .zip((1..=255u8).step_by(2))
        .map(|(p, id)| PresentationContextRq {
            id,
            abstract_syntax: p.abstract_syntax.clone(),
            transfer_syntaxes: vec![p.transfer_syntax.clone()],
        })
        .collect()
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Requestor {
    /// Connect and negotiate. Fails if the peer rejects, aborts, or accepts none of the
    /// proposals (then the association is released again).
    pub fn open(config: &ScuConfig, proposals: &[Proposal]) -> Result<Requestor, Error> {
        let proposals = &proposals[..proposals.len().min(MAX_CONTEXTS)];
        let tcp = connect(config)?;
        let setup = |e| Error::Io {
            context: "cannot configure the socket".into(),
            source: e,
        };
        // Without TCP_NODELAY each small request waits for the delayed ACK (~40 ms).
        tcp.set_nodelay(true).map_err(setup)?;
        tcp.set_read_timeout(config.timeout).map_err(setup)?;
        tcp.set_write_timeout(config.timeout).map_err(setup)?;
        let stream = match &config.tls {
            None => ClientStream::plain(tcp),
            Some(tls) => {
                let due = config.timeout.and_then(|t| Instant::now().checked_add(t));
                let stream = ClientStream::connect(tcp, tls, &config.host, due)?;
                stream
                    .tcp()
                    .set_read_timeout(config.timeout)
                    .map_err(setup)?;
                stream
            }
        };
        let mut requestor = Requestor {
            stream,
            buffer: Vec::new(),
            out: Vec::with_capacity(4096),
            command: Vec::new(),
            replies: VecDeque::new(),
            accepted: Vec::new(),
            fragment_len: 0,
            window: 1,
            our_max_pdu: config.max_pdu,
            next_message_id: 1,
        };
        // Only propose a window when we would use one: some peers mishandle the item.
        let async_ops_window = (config.async_window > 1).then_some((config.async_window, 1));
        AssociateRq {
            protocol_version: 1,
            called_ae: pdu::ae_field(&config.called_ae),
            calling_ae: pdu::ae_field(&config.calling_ae),
            application_context: pdu::APPLICATION_CONTEXT.into(),
            presentation_contexts: context_items(proposals),
            user_info: UserInfo {
                max_length: Some(config.max_pdu),
                implementation_class_uid: Some(IMPLEMENTATION_CLASS_UID.into()),
                implementation_version_name: Some(IMPLEMENTATION_VERSION_NAME.into()),
                async_ops_window,
                user_identity_rq: config.user_identity.clone(),
                ..UserInfo::default()
            },
        }
        .encode(&mut requestor.out);
        requestor.flush()?;
        let pdu_type = requestor.read_pdu()?;
        let ac = match Pdu::parse(pdu_type, &requestor.buffer) {
            Ok(Pdu::AssociateAc(ac)) => ac,
            Ok(Pdu::AssociateRj(rj)) => {
                let _ = requestor.stream.tcp().shutdown(Shutdown::Both);
                return Err(Error::AssociationRejected {
                    result: rj.result,
                    source: rj.source,
                    reason: rj.reason,
                });
            }
            Ok(Pdu::Abort(a)) => return Err(Error::AssociationAborted(abort_words(&a))),
            Ok(_) => {
                return Err(requestor.violation(
                    abort::UNEXPECTED_PDU,
                    "expected A-ASSOCIATE-AC or -RJ".into(),
                ))
            }
            Err(e) => return Err(requestor.violation(e.abort_reason(), e.to_string())),
        };
        for (proposal, item) in proposals.iter().zip(context_items(proposals)) {
            let answer = ac.presentation_contexts.iter().find(|c| c.id == item.id);
            // Accepted with a syntax we did not propose: unusable, so left out.
            if answer.is_some_and(|c| {
                c.result == context_result::ACCEPTANCE
                    && c.transfer_syntax == proposal.transfer_syntax
            }) {
                requestor.accepted.push((item.id, proposal.clone()));
            }
        }
        // PDU length = 6 (PDV item header) + fragment; 0 means no limit (PS3.8 §D.1).
        requestor.fragment_len = match ac.user_info.max_length.unwrap_or(0) {
            0 => UNLIMITED_PEER_FRAGMENT,
            max if max <= 6 => {
                return Err(requestor.violation(
                    abort::INVALID_PARAMETER,
                    format!("peer's maximum PDU length {max} cannot carry any data"),
                ))
            }
            max => (max as usize - 6).min(UNLIMITED_PEER_FRAGMENT),
        };
        // The acceptor answers with the number of operations we may invoke (PS3.7 §D.3.3.3);
        // no item means synchronous operation, 0 means no limit.
        requestor.window = match (async_ops_window, ac.user_info.async_ops_window) {
            (Some((proposed, _)), Some((0, _))) => usize::from(proposed),
            (Some((proposed, _)), Some((granted, _))) => usize::from(granted.min(proposed)),
            _ => 1,
        };
        if requestor.accepted.is_empty() {
            let mut proposed: Vec<_> = proposals
                .iter()
                .take(3)
                .map(|p| format!("{} in {}", p.abstract_syntax, p.transfer_syntax))
                .collect();
            if proposals.len() > 3 {
                proposed.push(format!("{} more", proposals.len() - 3));
            }
            let _ = requestor.release();
            return Err(Error::NoPresentationContext(format!(
                "the peer accepted none of the proposed presentation contexts ({})",
                proposed.join(", ")
            )));
        }
        Ok(requestor)
    }

    /// The accepted context for this SOP class in this transfer syntax.
    pub fn context_for(&self, abstract_syntax: &str, transfer_syntax: &str) -> Option<u8> {
        self.accepted
            .iter()
            .find(|(_, p)| {
                p.abstract_syntax == abstract_syntax && p.transfer_syntax == transfer_syntax
            })
            .map(|(id, _)| *id)
    }

    /// A fresh message ID (PS3.7 §9.3.1: unique among outstanding requests).
    pub fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// Queue a request command set as P-DATA-TF PDUs of the peer's size; sent by the next
    /// [`Requestor::flush`] or data set write, so a small instance leaves in one write.
    pub fn queue_command(&mut self, context_id: u8, command: &Command) {
        let mut encoded = Vec::with_capacity(256);
        command.encode(&mut encoded);
        pdu::encode_command_pdus(&mut self.out, context_id, self.fragment_len, &encoded);
    }

    /// Send `length` data set bytes read from `source` as P-DATA-TF PDUs of the peer's
    /// maximum size, after whatever is queued; the PDUs are read into the one output buffer
    /// and leave [`WRITE_BATCH`] or more at a time, the last with the rest. The outer error is
    /// the association's; the inner one is the source's (e.g. a file that shrank): the message
    /// cannot be completed then, so the caller must abort the association.
    pub fn send_data_set(
        &mut self,
        context_id: u8,
        source: &mut impl Read,
        length: u64,
    ) -> Result<io::Result<()>, Error> {
        let mut remaining = length;
        loop {
            let n =
                usize::try_from(remaining).map_or(self.fragment_len, |r| r.min(self.fragment_len));
            let start = self.out.len();
            self.out.extend_from_slice(&[0; 12]);
            self.out.reserve(n);
            // read_to_end fills the spare capacity without zeroing it first.
            let read = source.by_ref().take(n as u64).read_to_end(&mut self.out);
            if self.out.len() - start - 12 != n || read.is_err() {
                self.out.clear();
                return Ok(Err(read.err().unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than when opened",
                    )
                })));
            }
            remaining -= n as u64;
            let last = remaining == 0;
            let header = pdu::pdata_header(context_id, false, last, n as u32);
            self.out[start..start + 12].copy_from_slice(&header);
            if last || self.out.len() >= WRITE_BATCH {
                self.flush()?;
            }
            if last {
                return Ok(Ok(()));
            }
        }
    }

    /// Write what is queued.
    pub fn flush(&mut self) -> Result<(), Error> {
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        result.map_err(|e| self.lost(e))
    }

    /// Wait for the next response to one of our requests.
    pub fn reply(&mut self) -> Result<Reply, Error> {
        loop {
            if let Some(reply) = self.replies.pop_front() {
                return Ok(reply);
            }
            match self.read_pdu()? {
                pdu::P_DATA_TF => self.take_pdvs()?,
                pdu::ABORT => return Err(self.peer_abort()),
                other => {
                    return Err(self.violation(
                        abort::UNEXPECTED_PDU,
                        format!("unexpected PDU type {other:#04x} while waiting for a response"),
                    ))
                }
            }
        }
    }

    fn take_pdvs(&mut self) -> Result<(), Error> {
        let mut failure = None;
        for pdv in pdu::pdvs(&self.buffer) {
            let pdv = match pdv {
                Ok(pdv) => pdv,
                Err(e) => {
                    failure = Some((e.abort_reason(), e.to_string()));
                    break;
                }
            };
            if !pdv.is_command {
                failure = Some((
                    abort::UNEXPECTED_PARAMETER,
                    "a data set fragment in a response to C-STORE or C-ECHO".into(),
                ));
                break;
            }
            if self.command.len() + pdv.data.len() > MAX_COMMAND_SET {
                failure = Some((
                    abort::INVALID_PARAMETER,
                    "response command set too large".into(),
                ));
                break;
            }
            self.command.extend_from_slice(pdv.data);
            if pdv.is_last {
                match Response::parse(&self.command) {
                    Ok(r) if r.command_field & dimse::RESPONSE_BIT != 0 => {
                        self.replies.push_back(Reply {
                            message_id: r.message_id_being_responded_to,
                            status: r.status,
                            error_comment: r.error_comment.map(str::to_owned),
                        });
                    }
                    Ok(_) => {
                        failure = Some((
                            abort::UNEXPECTED_PARAMETER,
                            "a DIMSE request sent to the SCU".into(),
                        ));
                        break;
                    }
                    Err(e) => {
                        failure = Some((abort::INVALID_PARAMETER, format!("bad response: {e}")));
                        break;
                    }
                }
                self.command.clear();
            }
        }
        match failure {
            Some((reason, why)) => Err(self.violation(reason, why)),
            None => Ok(()),
        }
    }

    /// A response naming a message that is not outstanding: abort, the peer is confused.
    pub fn unexpected_reply(&mut self, message_id: u16) -> Error {
        self.violation(
            abort::UNEXPECTED_PARAMETER,
            format!("a response to message {message_id}, which is not outstanding"),
        )
    }

    /// A-RELEASE-RQ, then wait for the A-RELEASE-RP (PS3.8 §7.2).
    pub fn release(mut self) -> Result<(), Error> {
        pdu::encode_release_rq(&mut self.out);
        self.flush()?;
        let pdu_type = self.read_pdu()?;
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
        match pdu_type {
            pdu::RELEASE_RP => Ok(()),
            pdu::ABORT => Err(self.peer_abort()),
            other => Err(self.violation(
                abort::UNEXPECTED_PDU,
                format!("unexpected PDU type {other:#04x} in answer to A-RELEASE-RQ"),
            )),
        }
    }

    /// End the association at once (A-ABORT from the service user), e.g. when a file being
    /// sent shrinks so its message cannot be completed.
    pub fn abort(mut self) {
        Abort {
            source: abort::SOURCE_USER,
            reason: abort::NOT_SPECIFIED,
        }
        .encode(&mut self.out);
        let _ = self.stream.write_all(&self.out);
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }

    /// Read one PDU into the buffer and return its type; lengths are checked before a byte of
    /// the body is read, against what we announced for P-DATA-TF.
    fn read_pdu(&mut self) -> Result<u8, Error> {
        let mut header = [0u8; pdu::HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| self.lost(e))?;
        let (pdu_type, length) = pdu::parse_header(&header);
        let limit = match pdu_type {
            pdu::P_DATA_TF if self.our_max_pdu != 0 => self.our_max_pdu,
            pdu::ASSOCIATE_RQ..=pdu::ABORT => MAX_CONTROL_PDU,
            other => {
                return Err(self.violation(
                    abort::UNRECOGNIZED_PDU,
                    format!("unknown PDU type {other:#04x}"),
                ));
            }
        };
        if length > limit {
            return Err(self.violation(
                abort::INVALID_PARAMETER,
                format!("PDU of {length} bytes exceeds the maximum of {limit}"),
            ));
        }
        self.buffer.resize(length as usize, 0);
        self.stream
            .read_exact(&mut self.buffer)
            .map_err(|e| self.lost(e))?;
        Ok(pdu_type)
    }

    /// The peer broke the protocol: tell it with an A-ABORT and close.
    fn violation(&mut self, reason: u8, why: String) -> Error {
        self.out.clear();
        Abort {
            source: abort::SOURCE_PROVIDER,
            reason,
        }
        .encode(&mut self.out);
        let _ = self.stream.write_all(&self.out);
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
        Error::AssociationAborted(format!("protocol error by the peer: {why}"))
    }

    fn peer_abort(&mut self) -> Error {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
        match Pdu::parse(pdu::ABORT, &self.buffer) {
            Ok(Pdu::Abort(a)) => Error::AssociationAborted(abort_words(&a)),
            _ => Error::AssociationAborted("malformed A-ABORT from the peer".into()),
        }
    }

    /// The connection failed or timed out; a timeout still owes the peer an A-ABORT.
    fn lost(&mut self, e: io::Error) -> Error {
        if timed_out(&e) {
            let _ = self.violation(abort::NOT_SPECIFIED, String::new());
            return Error::AssociationAborted("no answer from the peer in time".into());
        }
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
        match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                Error::AssociationAborted("the peer closed the connection".into())
            }
            _ => Error::AssociationAborted(format!("connection lost: {e}")),
        }
    }
}
