//! DICOM Upper Layer PDUs (PS3.8 §9.3): the types, and parsing from / encoding to byte slices.
//!
//! Pure data: no sockets, files or Python. Every byte parsed here comes from an unauthenticated
//! peer, so every length is checked against the bytes actually present before anything is read or
//! allocated, and nothing may panic; the restriction lints below make clippy enforce that.
#![forbid(unsafe_code)]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::fmt;

/// `type u8 | reserved u8 | length u32 BE`, common to every PDU (PS3.8 §9.3.1).
pub const HEADER_LEN: usize = 6;
/// The only application context name defined by DICOM (PS3.7 Annex A.2.1).
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// PDU type codes (PS3.8 §9.3.2 to §9.3.8).
pub const ASSOCIATE_RQ: u8 = 0x01;
pub const ASSOCIATE_AC: u8 = 0x02;
pub const ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const RELEASE_RQ: u8 = 0x05;
pub const RELEASE_RP: u8 = 0x06;
pub const ABORT: u8 = 0x07;

// Item and sub-item types of the A-ASSOCIATE variable field (PS3.8 §9.3.2, §9.3.3, Annex D).
const ITEM_APPLICATION_CONTEXT: u8 = 0x10;
const ITEM_PC_RQ: u8 = 0x20;
const ITEM_PC_AC: u8 = 0x21;
const SUB_ABSTRACT_SYNTAX: u8 = 0x30;
const SUB_TRANSFER_SYNTAX: u8 = 0x40;
const ITEM_USER_INFO: u8 = 0x50;
const UI_MAX_LENGTH: u8 = 0x51;
const UI_IMPLEMENTATION_CLASS: u8 = 0x52;
const UI_ASYNC_WINDOW: u8 = 0x53;
const UI_ROLE_SELECTION: u8 = 0x54;
const UI_IMPLEMENTATION_VERSION: u8 = 0x55;
const UI_EXTENDED_NEGOTIATION: u8 = 0x56;
const UI_COMMON_EXTENDED_NEGOTIATION: u8 = 0x57;
const UI_USER_IDENTITY_RQ: u8 = 0x58;
const UI_USER_IDENTITY_AC: u8 = 0x59;

/// PDV message control header bits (PS3.8 Annex E.2).
const PDV_COMMAND: u8 = 0x01;
const PDV_LAST: u8 = 0x02;
/// Largest fragment whose PDU length (fragment + 6) still fits the u32 length field.
const MAX_FRAGMENT: u32 = u32::MAX - 6;

/// Parse the 6-byte header: (pdu_type, body_length). Does not validate the type.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> (u8, u32) {
    let [pdu_type, _, a, b, c, d] = *header;
    (pdu_type, u32::from_be_bytes([a, b, c, d]))
}

/// A-ASSOCIATE-RQ (PS3.8 §9.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateRq {
    /// Bit 0 set means version 1; a receiver tests only that bit (PS3.8 Table 9-11).
    pub protocol_version: u16,
    pub called_ae: [u8; 16],
    pub calling_ae: [u8; 16],
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContextRq>,
    pub user_info: UserInfo,
}

/// A-ASSOCIATE-AC (PS3.8 §9.3.3); the AE fields echo the RQ and are not significant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateAc {
    pub protocol_version: u16,
    pub called_ae: [u8; 16],
    pub calling_ae: [u8; 16],
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContextAc>,
    pub user_info: UserInfo,
}

/// Presentation context item of an RQ (PS3.8 §9.3.2.2). `id` is as received, even or zero
/// included: the association layer answers bad ids per context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentationContextRq {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

/// Presentation context item of an AC (PS3.8 §9.3.3.2). `transfer_syntax` is empty when a
/// rejected context carried none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentationContextAc {
    pub id: u8,
    pub result: u8,
    pub transfer_syntax: String,
}

/// User information item (PS3.8 §9.3.2.3, Annex D); absent sub-items are `None` / empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub max_length: Option<u32>,
    pub implementation_class_uid: Option<String>,
    /// (max operations invoked, max operations performed).
    pub async_ops_window: Option<(u16, u16)>,
    pub role_selections: Vec<RoleSelection>,
    pub implementation_version_name: Option<String>,
    /// SOP class UID and its opaque service-class-application-information.
    pub extended_negotiation: Vec<(String, Vec<u8>)>,
    /// Raw sub-item values, kept opaque.
    pub common_extended_negotiation: Vec<Vec<u8>>,
    pub user_identity_rq: Option<UserIdentityRq>,
    /// Server response of the AC sub-item.
    pub user_identity_ac: Option<Vec<u8>>,
}

/// SCP/SCU role selection sub-item (PS3.7 Annex D.3.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSelection {
    pub sop_class_uid: String,
    pub scu_role: u8,
    pub scp_role: u8,
}

/// User identity negotiation sub-item, RQ form (PS3.7 Annex D.3.3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentityRq {
    pub identity_type: u8,
    pub positive_response_requested: bool,
    pub primary: Vec<u8>,
    pub secondary: Vec<u8>,
}

/// A-ASSOCIATE-RJ (PS3.8 §9.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateRj {
    pub result: u8,
    pub source: u8,
    pub reason: u8,
}

/// A-ABORT (PS3.8 §9.3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub source: u8,
    pub reason: u8,
}

/// One presentation data value item of a P-DATA-TF, borrowing the PDU body (zero copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pdv<'a> {
    pub context_id: u8,
    pub is_command: bool,
    pub is_last: bool,
    pub data: &'a [u8],
}

/// A parsed PDU. P-DATA borrows the body; parse PDVs lazily with [`pdvs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu<'a> {
    AssociateRq(AssociateRq),
    AssociateAc(AssociateAc),
    AssociateRj(AssociateRj),
    PData(&'a [u8]),
    ReleaseRq,
    ReleaseRp,
    Abort(Abort),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PduError {
    /// Unknown PDU type code (A-ABORT reason 1: unrecognized PDU).
    UnrecognizedPdu(u8),
    /// A length disagrees with the bytes present, an item runs past its parent, a fixed-size
    /// PDU or value has the wrong size, or a required item is missing or repeated (reason 6).
    Malformed(&'static str),
    /// A parameter value that is not allowed, e.g. a non-ASCII UID (reason 6).
    InvalidValue(&'static str),
}

impl PduError {
    /// The A-ABORT reason (source 2, service provider) for this error, PS3.8 §9.3.8.
    /// Reason 2 ("unexpected PDU") is not used: it means a well-formed PDU arriving in the wrong
    /// state, which only the association state machine can tell.
    pub fn abort_reason(&self) -> u8 {
        match self {
            PduError::UnrecognizedPdu(_) => 1,
            PduError::Malformed(_) | PduError::InvalidValue(_) => 6,
        }
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PduError::UnrecognizedPdu(t) => write!(f, "unrecognized PDU type 0x{t:02X}"),
            PduError::Malformed(what) => write!(f, "malformed PDU: {what}"),
            PduError::InvalidValue(what) => write!(f, "invalid PDU parameter value: {what}"),
        }
    }
}

impl std::error::Error for PduError {}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Cursor over untrusted bytes: every read is bounds-checked and fails with `Malformed(what)`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PduError> {
        let err = PduError::Malformed(what);
        let (head, tail) = self.0.split_at_checked(n).ok_or(err)?;
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PduError> {
        let err = PduError::Malformed(what);
        let (head, tail) = self.0.split_first_chunk::<N>().ok_or(err)?;
        self.0 = tail;
        Ok(*head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PduError> {
        self.array(what).map(u16::from_be_bytes)
    }

    /// `u16 length | bytes`, the shape of the inner fields of sub-items 0x54, 0x56, 0x58, 0x59.
    fn u16_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], PduError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// An item or sub-item: `type u8 | reserved u8 | length u16 BE | value` (PS3.8 §9.3.2.x).
    fn item(&mut self) -> Result<(u8, &'a [u8]), PduError> {
        let [item_type, _, hi, lo] = self.array("item header truncated")?;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value = self.take(len, "item length runs past its parent")?;
        Ok((item_type, value))
    }

    /// Require that nothing is left, so inner lengths must account for the whole value.
    fn finish(&self, what: &'static str) -> Result<(), PduError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(PduError::Malformed(what))
        }
    }
}

/// Drop trailing NUL/space padding: the standard writes item UIDs unpadded, but real peers pad
/// them to even length as in data sets.
fn trim_padding(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., 0 | b' '] = bytes {
        bytes = rest;
    }
    bytes
}

fn ascii(bytes: &[u8], what: &'static str) -> Result<String, PduError> {
    if bytes.is_ascii() {
        Ok(bytes.iter().copied().map(char::from).collect())
    } else {
        Err(PduError::InvalidValue(what))
    }
}

fn uid(value: &[u8], what: &'static str) -> Result<String, PduError> {
    ascii(trim_padding(value), what)
}

/// Store an item or sub-item that may appear at most once; a repeat is ambiguous, so refused.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), PduError> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(PduError::Malformed("item that may appear once is repeated")),
    }
}

fn exact<const N: usize>(value: &[u8], what: &'static str) -> Result<[u8; N], PduError> {
    <[u8; N]>::try_from(value).map_err(|_| PduError::Malformed(what))
}

/// What A-ASSOCIATE-RQ and -AC share; `T` is the presentation context item flavour.
struct Associate<T> {
    protocol_version: u16,
    called_ae: [u8; 16],
    calling_ae: [u8; 16],
    application_context: String,
    presentation_contexts: Vec<T>,
    user_info: UserInfo,
}

/// Parse the 68-byte fixed part and the items (PS3.8 Table 9-11 / 9-17). Items of unknown type,
/// including the other PDU's presentation context flavour, are skipped so that additions by
/// newer peers do not break the association.
fn parse_associate<T>(
    body: &[u8],
    pc_item: u8,
    parse_pc: fn(&[u8]) -> Result<T, PduError>,
) -> Result<Associate<T>, PduError> {
    const FIXED: &str = "A-ASSOCIATE fixed part shorter than 68 bytes";
    let mut r = Reader(body);
    let protocol_version = r.u16(FIXED)?;
    r.take(2, FIXED)?;
    let called_ae = r.array(FIXED)?;
    let calling_ae = r.array(FIXED)?;
    r.take(32, FIXED)?;

    let mut application_context = None;
    let mut presentation_contexts = Vec::new();
    let mut user_info = None;
    while !r.0.is_empty() {
        match r.item()? {
            (ITEM_APPLICATION_CONTEXT, v) => {
                let name = uid(v, "application context name not ASCII")?;
                set_once(&mut application_context, name)?;
            }
            (t, v) if t == pc_item => presentation_contexts.push(parse_pc(v)?),
            (ITEM_USER_INFO, v) => {
                set_once(&mut user_info, UserInfo::parse(v)?)?;
            }
            _ => {}
        }
    }
    Ok(Associate {
        protocol_version,
        called_ae,
        calling_ae,
        application_context: application_context
            .ok_or(PduError::Malformed("no application context item"))?,
        presentation_contexts,
        // Mandatory per the standard, but its absence leaves nothing ambiguous: all defaults.
        user_info: user_info.unwrap_or_default(),
    })
}

impl PresentationContextRq {
    fn parse(value: &[u8]) -> Result<Self, PduError> {
        let mut r = Reader(value);
        let [id, _, _, _] = r.array("presentation context item shorter than 4 bytes")?;
        let mut abstract_syntax = None;
        let mut transfer_syntaxes = Vec::new();
        while !r.0.is_empty() {
            match r.item()? {
                (SUB_ABSTRACT_SYNTAX, v) => {
                    let uid = uid(v, "abstract syntax UID not ASCII")?;
                    set_once(&mut abstract_syntax, uid)?;
                }
                (SUB_TRANSFER_SYNTAX, v) => {
                    transfer_syntaxes.push(uid(v, "transfer syntax UID not ASCII")?)
                }
                _ => {}
            }
        }
        let abstract_syntax = abstract_syntax.ok_or(PduError::Malformed(
            "presentation context without abstract syntax",
        ))?;
        if abstract_syntax.is_empty() {
            return Err(PduError::InvalidValue("empty abstract syntax UID"));
        }
        if transfer_syntaxes.is_empty() {
            return Err(PduError::Malformed(
                "presentation context without transfer syntax",
            ));
        }
        Ok(Self {
            id,
            abstract_syntax,
            transfer_syntaxes,
        })
    }
}

impl PresentationContextAc {
    fn parse(value: &[u8]) -> Result<Self, PduError> {
        let mut r = Reader(value);
        let [id, _, result, _] = r.array("presentation context item shorter than 4 bytes")?;
        let mut transfer_syntax = None;
        while !r.0.is_empty() {
            if let (SUB_TRANSFER_SYNTAX, v) = r.item()? {
                let uid = uid(v, "transfer syntax UID not ASCII")?;
                set_once(&mut transfer_syntax, uid)?;
            }
        }
        // The transfer syntax of a rejected context is not significant (PS3.8 Table 9-18),
        // so some peers leave it out.
        let transfer_syntax = match transfer_syntax {
            Some(ts) => ts,
            None if result != 0 => String::new(),
            None => {
                return Err(PduError::Malformed(
                    "accepted presentation context without transfer syntax",
                ))
            }
        };
        Ok(Self {
            id,
            result,
            transfer_syntax,
        })
    }
}

impl UserInfo {
    /// Sub-items per PS3.7 Annex D.3.3 and PS3.8 Annex D.1; unknown ones are skipped.
    fn parse(value: &[u8]) -> Result<Self, PduError> {
        let mut info = UserInfo::default();
        let mut r = Reader(value);
        while !r.0.is_empty() {
            let (sub_type, v) = r.item()?;
            let mut s = Reader(v);
            match sub_type {
                UI_MAX_LENGTH => {
                    let n = u32::from_be_bytes(exact(v, "maximum length is not 4 bytes")?);
                    set_once(&mut info.max_length, n)?;
                }
                UI_IMPLEMENTATION_CLASS => {
                    let uid = uid(v, "implementation class UID not ASCII")?;
                    set_once(&mut info.implementation_class_uid, uid)?;
                }
                UI_ASYNC_WINDOW => {
                    let [a, b, c, d] = exact(v, "asynchronous window is not 4 bytes")?;
                    let window = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
                    set_once(&mut info.async_ops_window, window)?;
                }
                UI_ROLE_SELECTION => {
                    const BAD: &str = "role selection sub-item lengths inconsistent";
                    let sop_class_uid = uid(s.u16_prefixed(BAD)?, "role selection UID not ASCII")?;
                    let [scu_role, scp_role] = s.array(BAD)?;
                    s.finish(BAD)?;
                    info.role_selections.push(RoleSelection {
                        sop_class_uid,
                        scu_role,
                        scp_role,
                    });
                }
                UI_IMPLEMENTATION_VERSION => {
                    if v.is_empty() || v.len() > 16 {
                        return Err(PduError::InvalidValue(
                            "implementation version name not 1 to 16 bytes",
                        ));
                    }
                    let name = ascii(trim_padding(v), "implementation version name not ASCII")?;
                    set_once(&mut info.implementation_version_name, name)?;
                }
                UI_EXTENDED_NEGOTIATION => {
                    const BAD: &str = "extended negotiation UID length past the sub-item";
                    let uid = uid(s.u16_prefixed(BAD)?, "extended negotiation UID not ASCII")?;
                    info.extended_negotiation.push((uid, s.0.to_vec()));
                }
                UI_COMMON_EXTENDED_NEGOTIATION => info.common_extended_negotiation.push(v.to_vec()),
                UI_USER_IDENTITY_RQ => {
                    const BAD: &str = "user identity sub-item lengths inconsistent";
                    let [identity_type, flag] = s.array(BAD)?;
                    let primary = s.u16_prefixed(BAD)?.to_vec();
                    let secondary = s.u16_prefixed(BAD)?.to_vec();
                    s.finish(BAD)?;
                    let identity = UserIdentityRq {
                        identity_type,
                        positive_response_requested: flag != 0,
                        primary,
                        secondary,
                    };
                    set_once(&mut info.user_identity_rq, identity)?;
                }
                UI_USER_IDENTITY_AC => {
                    const BAD: &str = "user identity response lengths inconsistent";
                    let response = s.u16_prefixed(BAD)?.to_vec();
                    s.finish(BAD)?;
                    set_once(&mut info.user_identity_ac, response)?;
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

impl<'a> Pdu<'a> {
    /// Parse a PDU body given its type from the header. `body` is exactly `length` bytes.
    /// P-DATA-TF is not inspected here; its PDVs are parsed lazily by [`pdvs`].
    pub fn parse(pdu_type: u8, body: &'a [u8]) -> Result<Pdu<'a>, PduError> {
        match pdu_type {
            ASSOCIATE_RQ => {
                let a = parse_associate(body, ITEM_PC_RQ, PresentationContextRq::parse)?;
                Ok(Pdu::AssociateRq(AssociateRq {
                    protocol_version: a.protocol_version,
                    called_ae: a.called_ae,
                    calling_ae: a.calling_ae,
                    application_context: a.application_context,
                    presentation_contexts: a.presentation_contexts,
                    user_info: a.user_info,
                }))
            }
            ASSOCIATE_AC => {
                let a = parse_associate(body, ITEM_PC_AC, PresentationContextAc::parse)?;
                Ok(Pdu::AssociateAc(AssociateAc {
                    protocol_version: a.protocol_version,
                    called_ae: a.called_ae,
                    calling_ae: a.calling_ae,
                    application_context: a.application_context,
                    presentation_contexts: a.presentation_contexts,
                    user_info: a.user_info,
                }))
            }
            ASSOCIATE_RJ => {
                let [_, result, source, reason] = exact(body, "A-ASSOCIATE-RJ is not 4 bytes")?;
                Ok(Pdu::AssociateRj(AssociateRj {
                    result,
                    source,
                    reason,
                }))
            }
            P_DATA_TF => Ok(Pdu::PData(body)),
            // The remaining bodies are exactly 4 bytes (PS3.8 §9.3.6 to §9.3.8).
            RELEASE_RQ => exact::<4>(body, "A-RELEASE-RQ is not 4 bytes").map(|_| Pdu::ReleaseRq),
            RELEASE_RP => exact::<4>(body, "A-RELEASE-RP is not 4 bytes").map(|_| Pdu::ReleaseRp),
            ABORT => {
                let [_, _, source, reason] = exact(body, "A-ABORT is not 4 bytes")?;
                Ok(Pdu::Abort(Abort { source, reason }))
            }
            other => Err(PduError::UnrecognizedPdu(other)),
        }
    }
}

/// Iterator over the PDVs of a P-DATA-TF body, see [`pdvs`].
#[derive(Debug, Clone)]
pub struct Pdvs<'a> {
    rest: &'a [u8],
    seen_one: bool,
    done: bool,
}

/// Iterate over the PDVs of a P-DATA-TF body. Yields Err once and then stops on a malformed item
/// (item length < 2, item running past the body). An empty body (no PDV) is an error.
pub fn pdvs(body: &[u8]) -> Pdvs<'_> {
    Pdvs {
        rest: body,
        seen_one: false,
        done: false,
    }
}

/// One PDV item: `u32 length | context id | control | fragment` (PS3.8 §9.3.5.1, Annex E.2).
fn next_pdv<'a>(r: &mut Reader<'a>) -> Result<Pdv<'a>, PduError> {
    let len = u32::from_be_bytes(r.array("PDV item length truncated")?);
    let len = usize::try_from(len).map_err(|_| PduError::Malformed("PDV runs past the PDU"))?;
    let item = r.take(len, "PDV runs past the PDU")?;
    // The length covers context id and control header, so less than 2 cannot be a PDV.
    let [context_id, control, data @ ..] = item else {
        return Err(PduError::Malformed("PDV item length below 2"));
    };
    // Reserved control bits (2-7) are tolerated: only bits 0 and 1 carry meaning.
    Ok(Pdv {
        context_id: *context_id,
        is_command: control & PDV_COMMAND != 0,
        is_last: control & PDV_LAST != 0,
        data,
    })
}

impl<'a> Iterator for Pdvs<'a> {
    type Item = Result<Pdv<'a>, PduError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.rest.is_empty() {
            self.done = true;
            // PS3.8 §9.3.5: the variable field holds one or more PDV items.
            return (!self.seen_one).then_some(Err(PduError::Malformed("P-DATA-TF without PDV")));
        }
        let mut r = Reader(self.rest);
        let pdv = next_pdv(&mut r);
        self.rest = r.0;
        self.seen_one = true;
        self.done = pdv.is_err();
        Some(pdv)
    }
}

impl std::iter::FusedIterator for Pdvs<'_> {}

// ---------------------------------------------------------------------------------------------
// Encoding. Lengths are computed from the content written, then patched into place. A value too
// long for its length field is cut so the framing stays self-consistent (the association layer
// keeps UIDs at 64 bytes and PDUs at the negotiated size, so this never happens in practice).

fn patch(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// Cut what follows `body_start` to `max` bytes and return its length.
fn fit(out: &mut Vec<u8>, body_start: usize, max: usize) -> usize {
    let len = out.len().saturating_sub(body_start).min(max);
    out.truncate(body_start.saturating_add(len));
    len
}

/// `type | 00 | u32 length | body` (PS3.8 §9.3.1).
fn put_pdu(out: &mut Vec<u8>, pdu_type: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[pdu_type, 0, 0, 0, 0, 0]);
    body(out);
    let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    let len = fit(out, start.saturating_add(HEADER_LEN), max);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    patch(out, start.saturating_add(2), &len.to_be_bytes());
}

/// `type | 00 | u16 length | value` (PS3.8 §9.3.2.x).
fn put_item(out: &mut Vec<u8>, item_type: u8, value: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[item_type, 0, 0, 0]);
    value(out);
    let len = fit(out, start.saturating_add(4), usize::from(u16::MAX));
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    patch(out, start.saturating_add(2), &len.to_be_bytes());
}

/// An item whose value is raw bytes; UIDs go as is, since the standard does not pad them in items.
fn put_bytes_item(out: &mut Vec<u8>, item_type: u8, bytes: &[u8]) {
    put_item(out, item_type, |o| o.extend_from_slice(bytes));
}

fn put_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
}

/// A-ASSOCIATE-RQ/AC: the 68-byte fixed part (PS3.8 Table 9-11), the application context item,
/// the presentation context items written by `pcs`, then the user information item.
fn put_associate(
    out: &mut Vec<u8>,
    pdu_type: u8,
    fixed: (u16, &[u8; 16], &[u8; 16], &str),
    user_info: &UserInfo,
    pcs: impl FnOnce(&mut Vec<u8>),
) {
    let (version, called, calling, application_context) = fixed;
    put_pdu(out, pdu_type, |out| {
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(called);
        out.extend_from_slice(calling);
        out.extend_from_slice(&[0; 32]);
        put_bytes_item(
            out,
            ITEM_APPLICATION_CONTEXT,
            application_context.as_bytes(),
        );
        pcs(out);
        user_info.encode(out);
    });
}

impl AssociateRq {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let ctx = self.application_context.as_str();
        let fixed = (
            self.protocol_version,
            &self.called_ae,
            &self.calling_ae,
            ctx,
        );
        put_associate(out, ASSOCIATE_RQ, fixed, &self.user_info, |out| {
            for pc in &self.presentation_contexts {
                put_item(out, ITEM_PC_RQ, |o| {
                    o.extend_from_slice(&[pc.id, 0, 0, 0]);
                    put_bytes_item(o, SUB_ABSTRACT_SYNTAX, pc.abstract_syntax.as_bytes());
                    for ts in &pc.transfer_syntaxes {
                        put_bytes_item(o, SUB_TRANSFER_SYNTAX, ts.as_bytes());
                    }
                });
            }
        });
    }
}

impl AssociateAc {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let ctx = self.application_context.as_str();
        let fixed = (
            self.protocol_version,
            &self.called_ae,
            &self.calling_ae,
            ctx,
        );
        put_associate(out, ASSOCIATE_AC, fixed, &self.user_info, |out| {
            for pc in &self.presentation_contexts {
                put_item(out, ITEM_PC_AC, |o| {
                    o.extend_from_slice(&[pc.id, 0, pc.result, 0]);
                    // Always present, even for a rejected context (PS3.8 Table 9-18).
                    put_bytes_item(o, SUB_TRANSFER_SYNTAX, pc.transfer_syntax.as_bytes());
                });
            }
        });
    }
}

impl UserInfo {
    /// Always written, since the item is mandatory; sub-items in Annex D order.
    fn encode(&self, out: &mut Vec<u8>) {
        put_item(out, ITEM_USER_INFO, |o| {
            if let Some(n) = self.max_length {
                put_bytes_item(o, UI_MAX_LENGTH, &n.to_be_bytes());
            }
            if let Some(uid) = &self.implementation_class_uid {
                put_bytes_item(o, UI_IMPLEMENTATION_CLASS, uid.as_bytes());
            }
            if let Some((invoked, performed)) = self.async_ops_window {
                let [a, b] = invoked.to_be_bytes();
                let [c, d] = performed.to_be_bytes();
                put_bytes_item(o, UI_ASYNC_WINDOW, &[a, b, c, d]);
            }
            for role in &self.role_selections {
                put_item(o, UI_ROLE_SELECTION, |o| {
                    put_u16_prefixed(o, role.sop_class_uid.as_bytes());
                    o.extend_from_slice(&[role.scu_role, role.scp_role]);
                });
            }
            if let Some(name) = &self.implementation_version_name {
                put_bytes_item(o, UI_IMPLEMENTATION_VERSION, name.as_bytes());
            }
            for (uid, info) in &self.extended_negotiation {
                put_item(o, UI_EXTENDED_NEGOTIATION, |o| {
                    put_u16_prefixed(o, uid.as_bytes());
                    o.extend_from_slice(info);
                });
            }
            for value in &self.common_extended_negotiation {
                put_bytes_item(o, UI_COMMON_EXTENDED_NEGOTIATION, value);
            }
            if let Some(id) = &self.user_identity_rq {
                put_item(o, UI_USER_IDENTITY_RQ, |o| {
                    o.extend_from_slice(&[
                        id.identity_type,
                        u8::from(id.positive_response_requested),
                    ]);
                    put_u16_prefixed(o, &id.primary);
                    put_u16_prefixed(o, &id.secondary);
                });
            }
            if let Some(response) = &self.user_identity_ac {
                put_item(o, UI_USER_IDENTITY_AC, |o| put_u16_prefixed(o, response));
            }
        });
    }
}

impl AssociateRj {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_pdu(out, ASSOCIATE_RJ, |o| {
            o.extend_from_slice(&[0, self.result, self.source, self.reason]);
        });
    }
}

impl Abort {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_pdu(out, ABORT, |o| {
            o.extend_from_slice(&[0, 0, self.source, self.reason])
        });
    }
}

pub fn encode_release_rq(out: &mut Vec<u8>) {
    put_pdu(out, RELEASE_RQ, |o| o.extend_from_slice(&[0; 4]));
}

pub fn encode_release_rp(out: &mut Vec<u8>) {
    put_pdu(out, RELEASE_RP, |o| o.extend_from_slice(&[0; 4]));
}

/// Append a P-DATA-TF PDU holding one PDV with `data` as its fragment. A fragment over
/// `u32::MAX - 6` bytes cannot be framed and is cut (callers split at the peer's max length).
pub fn encode_pdata(
    out: &mut Vec<u8>,
    context_id: u8,
    is_command: bool,
    is_last: bool,
    data: &[u8],
) {
    let data = data.get(..MAX_FRAGMENT as usize).unwrap_or(data);
    let len = u32::try_from(data.len()).unwrap_or(MAX_FRAGMENT);
    out.reserve(data.len().saturating_add(12));
    out.extend_from_slice(&pdata_header(context_id, is_command, is_last, len));
    out.extend_from_slice(data);
}

/// Header of a P-DATA-TF with one PDV whose fragment is `fragment_len` bytes, so a caller can write
/// header and a borrowed fragment with one vectored write without copying the fragment.
/// `fragment_len` must not exceed `u32::MAX - 6`; larger values saturate the length fields.
pub fn pdata_header(
    context_id: u8,
    is_command: bool,
    is_last: bool,
    fragment_len: u32,
) -> [u8; 12] {
    // The PDV length counts context id and control header; the PDU length adds the 4-byte
    // PDV length field (PS3.8 §9.3.5).
    let [a, b, c, d] = fragment_len.saturating_add(6).to_be_bytes();
    let [e, f, g, h] = fragment_len.saturating_add(2).to_be_bytes();
    let control = if is_command { PDV_COMMAND } else { 0 } | if is_last { PDV_LAST } else { 0 };
    [P_DATA_TF, 0, a, b, c, d, e, f, g, h, context_id, control]
}

/// Trim an AE title field: leading/trailing spaces (and trailing NULs) are not significant
/// (PS3.8 §9.3.2). Returns None if the field is all spaces/empty or contains bytes outside
/// printable ASCII (0x20..=0x7E) or a backslash (the AE VR forbids it, PS3.5 §6.2).
pub fn ae_title(field: &[u8; 16]) -> Option<&str> {
    let mut title = trim_padding(field);
    while let [b' ', rest @ ..] = title {
        title = rest;
    }
    let printable = |b: &u8| (0x20..=0x7E).contains(b) && *b != b'\\';
    if title.is_empty() || !title.iter().all(printable) {
        return None;
    }
    std::str::from_utf8(title).ok()
}

/// Space-pad an AE title to the 16-byte field (truncating longer input).
pub fn ae_field(title: &str) -> [u8; 16] {
    let mut field = [b' '; 16];
    for (dst, src) in field.iter_mut().zip(title.bytes()) {
        *dst = src;
    }
    field
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    /// Split an encoded PDU, checking the header length matches what follows.
    fn split(bytes: &[u8]) -> (u8, &[u8]) {
        let (header, body) = bytes.split_first_chunk::<HEADER_LEN>().unwrap();
        let (pdu_type, len) = parse_header(header);
        assert_eq!(len as usize, body.len(), "header length vs body");
        (pdu_type, body)
    }

    fn parse(bytes: &[u8]) -> Result<Pdu<'_>, PduError> {
        let (pdu_type, body) = split(bytes);
        Pdu::parse(pdu_type, body)
    }

    /// Hand-built item, independent of the encoder under test.
    fn item(item_type: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![item_type, 0];
        v.extend_from_slice(&(value.len() as u16).to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    /// A-ASSOCIATE body: fixed part followed by `items`.
    fn assoc_body(items: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0, 1, 0, 0];
        v.extend_from_slice(b"STORESCP        ");
        v.extend_from_slice(b"STORESCU        ");
        v.extend_from_slice(&[0; 32]);
        for i in items {
            v.extend_from_slice(i);
        }
        v
    }

    fn app_ctx() -> Vec<u8> {
        item(0x10, APPLICATION_CONTEXT.as_bytes())
    }

    fn pc_rq(id: u8, subs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![id, 0, 0, 0];
        for s in subs {
            v.extend_from_slice(s);
        }
        item(0x20, &v)
    }

    fn echo_pc() -> Vec<u8> {
        pc_rq(
            1,
            &[
                item(0x30, b"1.2.840.10008.1.1"),
                item(0x40, b"1.2.840.10008.1.2"),
            ],
        )
    }

    fn user_info(subs: &[Vec<u8>]) -> Vec<u8> {
        item(0x50, &subs.concat())
    }

    fn sample_rq() -> AssociateRq {
        AssociateRq {
            protocol_version: 1,
            called_ae: ae_field("STORESCP"),
            calling_ae: ae_field("MODALITY_01"),
            application_context: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextRq {
                    id: 1,
                    abstract_syntax: "1.2.840.10008.1.1".into(),
                    transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
                },
                PresentationContextRq {
                    id: 3,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".into(),
                    transfer_syntaxes: vec![
                        "1.2.840.10008.1.2.1".into(),
                        "1.2.840.10008.1.2".into(),
                        "1.2.840.10008.1.2.4.90".into(),
                    ],
                },
            ],
            user_info: UserInfo {
                max_length: Some(16384),
                implementation_class_uid: Some("1.2.826.0.1.3680043.9.3811.2.1.0".into()),
                async_ops_window: Some((3, 1)),
                role_selections: vec![RoleSelection {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                    scu_role: 1,
                    scp_role: 0,
                }],
                implementation_version_name: Some("INLET_010".into()),
                extended_negotiation: vec![
                    ("1.2.840.10008.5.1.4.1.2.1.1".into(), vec![1, 0, 1]),
                    ("1.2.840.10008.5.1.4.1.1.4".into(), vec![]),
                ],
                common_extended_negotiation: vec![vec![0, 3, b'1', b'.', b'2', 0, 0, 0, 0]],
                user_identity_rq: Some(UserIdentityRq {
                    identity_type: 2,
                    positive_response_requested: true,
                    primary: b"alice".to_vec(),
                    secondary: b"s3cret".to_vec(),
                }),
                user_identity_ac: None,
            },
        }
    }

    fn sample_ac() -> AssociateAc {
        AssociateAc {
            protocol_version: 1,
            called_ae: ae_field("STORESCP"),
            calling_ae: ae_field("MODALITY_01"),
            application_context: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextAc {
                    id: 1,
                    result: 0,
                    transfer_syntax: "1.2.840.10008.1.2".into(),
                },
                PresentationContextAc {
                    id: 3,
                    result: 4,
                    transfer_syntax: String::new(),
                },
            ],
            user_info: UserInfo {
                max_length: Some(0),
                implementation_class_uid: Some("1.2.3.4".into()),
                implementation_version_name: Some("DICOM_INLET".into()),
                async_ops_window: Some((1, 1)),
                role_selections: vec![RoleSelection {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                    scu_role: 0,
                    scp_role: 1,
                }],
                user_identity_ac: Some(b"token".to_vec()),
                ..UserInfo::default()
            },
        }
    }

    fn several_pdvs_pdu() -> Vec<u8> {
        let body = [
            &[0, 0, 0, 6, 1, 0x03][..], // command, last, 4 bytes
            &[0xAA, 0xBB, 0xCC, 0xDD],
            &[0, 0, 0, 5, 1, 0x00], // data set, not last, 3 bytes
            &[1, 2, 3],
            &[0, 0, 0, 2, 3, 0xF2], // data set, last, empty; reserved bits set
        ]
        .concat();
        let mut pdu = vec![P_DATA_TF, 0];
        pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pdu.extend_from_slice(&body);
        pdu
    }

    #[test]
    fn header_is_type_and_big_endian_length() {
        assert_eq!(
            parse_header(&[0x04, 0xFF, 0x01, 0x02, 0x03, 0x04]),
            (4, 0x0102_0304)
        );
        assert_eq!(
            parse_header(&[0x42, 0, 0xFF, 0xFF, 0xFF, 0xFF]),
            (0x42, u32::MAX)
        );
    }

    #[test]
    fn associate_rq_round_trip() {
        let rq = sample_rq();
        let mut out = vec![0xEE]; // encode appends
        rq.encode(&mut out);
        assert_eq!(out[0], 0xEE);
        assert_eq!(parse(&out[1..]), Ok(Pdu::AssociateRq(rq)));
    }

    #[test]
    fn associate_rq_round_trip_minimal() {
        let mut rq = sample_rq();
        rq.user_info = UserInfo::default();
        rq.presentation_contexts.truncate(1);
        let mut out = Vec::new();
        rq.encode(&mut out);
        assert_eq!(parse(&out), Ok(Pdu::AssociateRq(rq)));
    }

    #[test]
    fn associate_ac_round_trip() {
        let ac = sample_ac();
        let mut out = Vec::new();
        ac.encode(&mut out);
        assert_eq!(out[0], ASSOCIATE_AC);
        assert_eq!(parse(&out), Ok(Pdu::AssociateAc(ac)));
    }

    #[test]
    fn user_identity_variants_round_trip() {
        for (primary, secondary, flag) in [(&b"bob"[..], &b""[..], false), (b"", b"", true)] {
            let mut rq = sample_rq();
            rq.user_info.user_identity_rq = Some(UserIdentityRq {
                identity_type: 1,
                positive_response_requested: flag,
                primary: primary.to_vec(),
                secondary: secondary.to_vec(),
            });
            rq.user_info.user_identity_ac = Some(Vec::new());
            let mut out = Vec::new();
            rq.encode(&mut out);
            assert_eq!(parse(&out), Ok(Pdu::AssociateRq(rq)));
        }
    }

    #[test]
    fn fixed_size_pdus_round_trip() {
        let mut out = Vec::new();
        AssociateRj {
            result: 1,
            source: 1,
            reason: 7,
        }
        .encode(&mut out);
        assert_eq!(out, [3, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
        let rj = AssociateRj {
            result: 1,
            source: 1,
            reason: 7,
        };
        assert_eq!(parse(&out), Ok(Pdu::AssociateRj(rj)));

        out.clear();
        Abort {
            source: 2,
            reason: 6,
        }
        .encode(&mut out);
        assert_eq!(out, [7, 0, 0, 0, 0, 4, 0, 0, 2, 6]);
        assert_eq!(
            parse(&out),
            Ok(Pdu::Abort(Abort {
                source: 2,
                reason: 6
            }))
        );

        out.clear();
        encode_release_rq(&mut out);
        assert_eq!(out, [5, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(parse(&out), Ok(Pdu::ReleaseRq));

        out.clear();
        encode_release_rp(&mut out);
        assert_eq!(out, [6, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(parse(&out), Ok(Pdu::ReleaseRp));
    }

    #[test]
    fn pdata_round_trip_and_header() {
        for (cmd, last) in [(false, false), (false, true), (true, false), (true, true)] {
            let data = [9u8, 8, 7, 6, 5];
            let mut out = Vec::new();
            encode_pdata(&mut out, 5, cmd, last, &data);
            assert_eq!(out[..12], pdata_header(5, cmd, last, 5));
            assert_eq!(&out[12..], &data);
            let Ok(Pdu::PData(body)) = parse(&out) else {
                panic!("not P-DATA")
            };
            let got: Vec<_> = pdvs(body).collect();
            let want = Pdv {
                context_id: 5,
                is_command: cmd,
                is_last: last,
                data: &data,
            };
            assert_eq!(got, vec![Ok(want)]);
        }
        // An empty fragment is still a PDV.
        let mut out = Vec::new();
        encode_pdata(&mut out, 1, false, true, &[]);
        assert_eq!(out, [4, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 2]);
    }

    #[test]
    fn several_pdvs_in_one_pdu() {
        let pdu = several_pdvs_pdu();
        let Ok(Pdu::PData(body)) = parse(&pdu) else {
            panic!("not P-DATA")
        };
        let got: Vec<_> = pdvs(body).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            [
                Pdv {
                    context_id: 1,
                    is_command: true,
                    is_last: true,
                    data: &[0xAA, 0xBB, 0xCC, 0xDD]
                },
                Pdv {
                    context_id: 1,
                    is_command: false,
                    is_last: false,
                    data: &[1, 2, 3]
                },
                Pdv {
                    context_id: 3,
                    is_command: false,
                    is_last: true,
                    data: &[]
                },
            ]
        );
    }

    #[test]
    fn parses_dcmtk_style_rq_with_padded_uids() {
        let parts: &[&[u8]] = &[
            &[0x01, 0x00, 0x00, 0x00, 0x00, 0xD1], // A-ASSOCIATE-RQ, 209 bytes
            &[0x00, 0x01, 0x00, 0x00],             // version 1, reserved
            b"ANY-SCP         ",
            b"ECHOSCU         ",
            &[0; 32],
            &[0x10, 0x00, 0x00, 0x16],
            b"1.2.840.10008.3.1.1.1\0",
            &[0x20, 0x00, 0x00, 0x30, 0x01, 0x00, 0x00, 0x00],
            &[0x30, 0x00, 0x00, 0x12],
            b"1.2.840.10008.1.1\0",
            &[0x40, 0x00, 0x00, 0x12],
            b"1.2.840.10008.1.2\0",
            &[0x50, 0x00, 0x00, 0x3B],
            &[0x51, 0x00, 0x00, 0x04, 0x00, 0x00, 0x40, 0x00],
            &[0x52, 0x00, 0x00, 0x1C],
            b"1.2.276.0.7230010.3.0.3.6.9\0",
            &[0x55, 0x00, 0x00, 0x0F],
            b"OFFIS_DCMTK_369",
        ];
        let bytes = parts.concat();
        let Ok(Pdu::AssociateRq(rq)) = parse(&bytes) else {
            panic!("not parsed")
        };
        assert_eq!(rq.protocol_version, 1);
        assert_eq!(ae_title(&rq.called_ae), Some("ANY-SCP"));
        assert_eq!(ae_title(&rq.calling_ae), Some("ECHOSCU"));
        assert_eq!(rq.application_context, APPLICATION_CONTEXT);
        assert_eq!(
            rq.presentation_contexts,
            [PresentationContextRq {
                id: 1,
                abstract_syntax: "1.2.840.10008.1.1".into(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
            }]
        );
        let want = UserInfo {
            max_length: Some(16384),
            implementation_class_uid: Some("1.2.276.0.7230010.3.0.3.6.9".into()),
            implementation_version_name: Some("OFFIS_DCMTK_369".into()),
            ..UserInfo::default()
        };
        assert_eq!(rq.user_info, want);
    }

    #[test]
    fn ac_rejected_context_may_lack_transfer_syntax() {
        let body = assoc_body(&[app_ctx(), item(0x21, &[7, 0, 3, 0]), user_info(&[])]);
        let Ok(Pdu::AssociateAc(ac)) = Pdu::parse(ASSOCIATE_AC, &body) else {
            panic!("not parsed")
        };
        let want = PresentationContextAc {
            id: 7,
            result: 3,
            transfer_syntax: String::new(),
        };
        assert_eq!(ac.presentation_contexts, [want]);

        let body = assoc_body(&[app_ctx(), item(0x21, &[7, 0, 0, 0]), user_info(&[])]);
        assert!(matches!(
            Pdu::parse(ASSOCIATE_AC, &body),
            Err(PduError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_items_are_skipped_and_odd_ids_exposed() {
        let pc_even = pc_rq(
            0,
            &[
                item(0x77, b"junk"),
                item(0x30, b"1.2.3 "),
                item(0x40, b"1.2.840.10008.1.2"),
            ],
        );
        let body = assoc_body(&[
            item(0x99, b"future item"),
            app_ctx(),
            item(0x21, &[1, 0, 0, 0]), // AC flavour inside an RQ
            pc_even,
            user_info(&[item(0x5F, b"?"), item(0x51, &[0, 0, 0x80, 0])]),
        ]);
        let Ok(Pdu::AssociateRq(rq)) = Pdu::parse(ASSOCIATE_RQ, &body) else {
            panic!("not parsed")
        };
        assert_eq!(rq.presentation_contexts.len(), 1);
        assert_eq!(rq.presentation_contexts[0].id, 0);
        assert_eq!(rq.presentation_contexts[0].abstract_syntax, "1.2.3");
        assert_eq!(rq.user_info.max_length, Some(0x8000));
        // The user information item is mandatory, but its absence is harmless.
        let Ok(Pdu::AssociateRq(rq)) =
            Pdu::parse(ASSOCIATE_RQ, &assoc_body(&[app_ctx(), echo_pc()]))
        else {
            panic!("not parsed")
        };
        assert_eq!(rq.user_info, UserInfo::default());
    }

    /// RQ body whose user information item holds just `sub`.
    fn with_ui(sub: Vec<u8>) -> Vec<u8> {
        assoc_body(&[app_ctx(), echo_pc(), user_info(&[sub])])
    }

    /// RQ body whose one presentation context holds `subs`.
    fn with_pc(subs: &[Vec<u8>]) -> Vec<u8> {
        assoc_body(&[app_ctx(), pc_rq(1, subs)])
    }

    fn assert_kind(name: &str, got: Result<Pdu<'_>, PduError>, want: &PduError) {
        let same = matches!(
            (&got, want),
            (Err(PduError::Malformed(_)), PduError::Malformed(_))
                | (Err(PduError::InvalidValue(_)), PduError::InvalidValue(_))
        );
        assert!(same, "{name}: got {got:?}, want {want:?}");
    }

    #[test]
    fn malformed_associate_rejected() {
        let (mal, inv) = (PduError::Malformed(""), PduError::InvalidValue(""));
        let ui = user_info(&[item(0x51, &[0, 0, 0x40, 0])]);
        let mut long_item = app_ctx();
        long_item[3] += 1; // one byte past the end of the PDU

        // Shapes shared by RQ and AC: fixed part, items, user information.
        #[rustfmt::skip]
        let shared = [
            ("truncated fixed part", assoc_body(&[])[..67].to_vec(), &mal),
            ("item past PDU", assoc_body(&[ui.clone(), long_item]), &mal),
            ("item header cut", [assoc_body(&[app_ctx()]), vec![0x50, 0, 0]].concat(), &mal),
            ("no app context", assoc_body(&[echo_pc(), ui.clone()]), &mal),
            ("two app contexts", assoc_body(&[app_ctx(), app_ctx(), ui.clone()]), &mal),
            ("non-ASCII app context", assoc_body(&[item(0x10, &[b'1', 0xFF])]), &inv),
            ("two user info items", assoc_body(&[app_ctx(), ui.clone(), ui]), &mal),
            ("sub-item past item", with_ui(vec![0x51, 0, 0, 5, 0, 0, 0, 0]), &mal),
            ("0x51 of 2 bytes", with_ui(item(0x51, &[0, 1])), &mal),
            ("0x51 of 5 bytes", with_ui(item(0x51, &[0; 5])), &mal),
            ("two 0x51", with_ui([item(0x51, &[0; 4]), item(0x51, &[0; 4])].concat()), &mal),
            ("non-ASCII 0x52", with_ui(item(0x52, b"1.2\x80")), &inv),
            ("0x53 of 3 bytes", with_ui(item(0x53, &[0; 3])), &mal),
            ("0x54 uid past item", with_ui(item(0x54, &[0, 9, b'1', 1, 0])), &mal),
            ("0x54 trailing byte", with_ui(item(0x54, &[0, 1, b'1', 1, 0, 0])), &mal),
            ("0x55 empty", with_ui(item(0x55, b"")), &inv),
            ("0x55 17 bytes", with_ui(item(0x55, &[b'A'; 17])), &inv),
            ("0x56 uid past item", with_ui(item(0x56, &[0, 5, b'1'])), &mal),
            ("0x58 primary past item", with_ui(item(0x58, &[1, 0, 0, 4, b'a', 0, 0])), &mal),
            ("0x58 no secondary", with_ui(item(0x58, &[1, 0, 0, 1, b'a'])), &mal),
            ("0x58 trailing bytes", with_ui(item(0x58, &[1, 0, 0, 0, 0, 0, 9])), &mal),
            ("0x59 short", with_ui(item(0x59, &[0, 3, 1])), &mal),
        ];
        for (name, body, want) in &shared {
            assert_kind(name, Pdu::parse(ASSOCIATE_RQ, body), want);
            assert_kind(name, Pdu::parse(ASSOCIATE_AC, body), want);
        }

        let (abs, ts) = (item(0x30, b"1.2.3"), item(0x40, b"1.2.840.10008.1.2"));
        let mut long_sub = abs.clone();
        long_sub[3] += 1; // abstract syntax one byte past its presentation context item
        #[rustfmt::skip]
        let rq_only = [
            ("pc sub-item past item", with_pc(&[ts.clone(), long_sub]), &mal),
            ("pc item too short", assoc_body(&[app_ctx(), item(0x20, &[1, 0])]), &mal),
            ("no abstract syntax", with_pc(std::slice::from_ref(&ts)), &mal),
            ("no transfer syntax", with_pc(std::slice::from_ref(&abs)), &mal),
            ("two abstract syntaxes", with_pc(&[abs.clone(), abs.clone(), ts.clone()]), &mal),
            ("empty abstract syntax", with_pc(&[item(0x30, b"\0\0"), ts.clone()]), &inv),
            ("non-ASCII abstract", with_pc(&[item(0x30, "1.\u{e9}".as_bytes()), ts]), &inv),
            ("non-ASCII transfer", with_pc(&[abs, item(0x40, &[b'1', 0xC3])]), &inv),
        ];
        for (name, body, want) in &rq_only {
            assert_kind(name, Pdu::parse(ASSOCIATE_RQ, body), want);
        }

        let ac_pc = [vec![1, 0, 0, 0], item(0x40, b"1"), item(0x40, b"2")].concat();
        let ac_body = assoc_body(&[app_ctx(), item(0x21, &ac_pc)]);
        let got = Pdu::parse(ASSOCIATE_AC, &ac_body);
        assert_kind("AC two transfer syntaxes", got, &mal);
    }

    #[test]
    fn malformed_pdvs_rejected_once() {
        for body in [
            &[][..],                         // no PDV at all
            &[0, 0, 0, 0],                   // length 0
            &[0, 0, 0, 1, 1],                // length 1
            &[0, 0, 0, 9, 1, 2, 3],          // longer than the body
            &[0, 0, 0],                      // length field cut
            &[0xFF, 0xFF, 0xFF, 0xFF, 1, 0], // huge length, nothing allocated
        ] {
            let got: Vec<_> = pdvs(body).collect();
            assert_eq!(got.len(), 1, "{body:?}");
            assert!(matches!(got[0], Err(PduError::Malformed(_))), "{body:?}");
        }
        // A good PDV then garbage: Ok, Err, then the iterator stays finished.
        let body = [0, 0, 0, 3, 1, 2, 0xAB, 0, 0];
        let mut it = pdvs(&body);
        assert!(matches!(
            it.next(),
            Some(Ok(Pdv {
                context_id: 1,
                is_last: true,
                ..
            }))
        ));
        assert!(matches!(it.next(), Some(Err(PduError::Malformed(_)))));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn fixed_size_bodies_and_unknown_types() {
        for t in [ASSOCIATE_RJ, RELEASE_RQ, RELEASE_RP, ABORT] {
            for len in [0, 3, 5, 68] {
                let body = vec![0; len];
                assert!(
                    matches!(Pdu::parse(t, &body), Err(PduError::Malformed(_))),
                    "{t} {len}"
                );
            }
        }
        for t in [0x00, 0x08, 0x10, 0xFF] {
            assert_eq!(Pdu::parse(t, &[0; 4]), Err(PduError::UnrecognizedPdu(t)));
        }
        // P-DATA is not inspected until its PDVs are iterated.
        assert_eq!(Pdu::parse(P_DATA_TF, &[]), Ok(Pdu::PData(&[])));
    }

    #[test]
    fn error_reasons_and_display() {
        assert_eq!(PduError::UnrecognizedPdu(8).abort_reason(), 1);
        assert_eq!(PduError::Malformed("x").abort_reason(), 6);
        assert_eq!(PduError::InvalidValue("x").abort_reason(), 6);
        assert_eq!(
            PduError::UnrecognizedPdu(0xAB).to_string(),
            "unrecognized PDU type 0xAB"
        );
        assert_eq!(PduError::Malformed("m").to_string(), "malformed PDU: m");
        let e: Box<dyn std::error::Error> = Box::new(PduError::InvalidValue("v"));
        assert_eq!(e.to_string(), "invalid PDU parameter value: v");
    }

    #[test]
    fn oversize_values_keep_framing_consistent() {
        let mut rq = sample_rq();
        rq.application_context = "1".repeat(70_000);
        let mut out = Vec::new();
        rq.encode(&mut out);
        let Ok(Pdu::AssociateRq(got)) = parse(&out) else {
            panic!("not parsed")
        };
        assert_eq!(got.application_context.len(), usize::from(u16::MAX));
        assert_eq!(got.presentation_contexts, rq.presentation_contexts);

        let mut rq = sample_rq();
        rq.user_info.user_identity_rq.as_mut().unwrap().primary = vec![b'p'; 70_000];
        let mut out = Vec::new();
        rq.encode(&mut out);
        assert!(parse(&out).is_err()); // the inner value cannot fit; framing still consistent

        assert_eq!(pdata_header(1, true, true, u32::MAX)[2..10], [0xFF; 8]);
    }

    /// Parse like the association layer would: declared length, then lazily the PDVs.
    fn exercise(bytes: &[u8]) {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return;
        };
        let (pdu_type, len) = parse_header(header);
        let body = rest.get(..len as usize).unwrap_or(rest);
        if let Ok(Pdu::PData(body)) = Pdu::parse(pdu_type, body) {
            assert!(pdvs(body).count() <= body.len() / 6 + 1);
        }
    }

    #[test]
    fn deterministic_fuzz_never_panics() {
        let mut samples = vec![several_pdvs_pdu()];
        let mut out = Vec::new();
        sample_rq().encode(&mut out);
        samples.push(std::mem::take(&mut out));
        sample_ac().encode(&mut out);
        samples.push(std::mem::take(&mut out));
        AssociateRj {
            result: 2,
            source: 3,
            reason: 1,
        }
        .encode(&mut out);
        samples.push(std::mem::take(&mut out));
        encode_release_rq(&mut out);
        samples.push(std::mem::take(&mut out));
        for bytes in &samples {
            for cut in 0..=bytes.len() {
                exercise(&bytes[..cut]);
                // Truncated body under an unchanged header: framing must still be checked.
                if let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() {
                    let _ = Pdu::parse(header[0], &body[..cut.min(body.len())]);
                }
            }
            let mut mutated = bytes.clone();
            for i in 0..bytes.len().min(200) {
                for value in 0..=255u8 {
                    mutated[i] = value;
                    exercise(&mutated);
                }
                mutated[i] = bytes[i];
            }
        }
    }

    #[test]
    fn ae_titles() {
        assert_eq!(ae_title(b"  STORESCP      "), Some("STORESCP"));
        assert_eq!(ae_title(b"A B\0\0\0\0\0\0\0\0\0\0\0\0\0"), Some("A B"));
        assert_eq!(ae_title(b"SIXTEEN_CHARS_AE"), Some("SIXTEEN_CHARS_AE"));
        assert_eq!(ae_title(b"                "), None);
        assert_eq!(ae_title(&[0; 16]), None);
        assert_eq!(ae_title(b"  \0             "), None); // NUL inside: not printable
        assert_eq!(ae_title(b"BAD\\AE          "), None);
        assert_eq!(ae_title(b"CAF\xC3\xA9           "), None);
        assert_eq!(ae_title(b"TAB\tAE          "), None);
        assert_eq!(ae_field("ECHOSCU"), *b"ECHOSCU         ");
        assert_eq!(ae_field("A_VERY_LONG_AE_TITLE"), *b"A_VERY_LONG_AE_T");
        assert_eq!(ae_field(""), [b' '; 16]);
        assert_eq!(ae_title(&ae_field("ROUND")), Some("ROUND"));
    }
}
