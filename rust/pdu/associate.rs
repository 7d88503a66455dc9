//! A-ASSOCIATE-RQ and -AC (PS3.8 §9.3.2, §9.3.3): the fixed part, the presentation context
//! items and the user information sub-items (PS3.7 Annex D.3.3), parsed and encoded.

use super::{
    exact, fit, patch, put_pdu, trim_padding, PduError, Reader, ASSOCIATE_AC, ASSOCIATE_RQ,
};

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

/// What A-ASSOCIATE-RQ and -AC share; `C` is the presentation context item flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Associate<C> {
    /// Bit 0 set means version 1; a receiver tests only that bit (PS3.8 Table 9-11).
    pub protocol_version: u16,
    pub called_ae: [u8; 16],
    pub calling_ae: [u8; 16],
    pub application_context: String,
    pub presentation_contexts: Vec<C>,
    pub user_info: UserInfo,
}

/// A-ASSOCIATE-RQ (PS3.8 §9.3.2).
pub type AssociateRq = Associate<PresentationContextRq>;

/// A-ASSOCIATE-AC (PS3.8 §9.3.3); the AE fields echo the RQ and are not significant.
pub type AssociateAc = Associate<PresentationContextAc>;

/// A presentation context item: the RQ and AC flavours differ in type and content.
pub trait ContextItem: Sized {
    /// The PDU that carries this flavour, and the item type within it.
    const PDU_TYPE: u8;
    const ITEM_TYPE: u8;
    fn parse(value: &[u8]) -> Result<Self, PduError>;
    /// The item's value, without the item header.
    fn encode_value(&self, out: &mut Vec<u8>);
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

/// Parse the 68-byte fixed part and the items (PS3.8 Table 9-11 / 9-17). Items of unknown type,
/// including the other PDU's presentation context flavour, are skipped so that additions by
/// newer peers do not break the association.
impl<C: ContextItem> Associate<C> {
    pub(super) fn parse(body: &[u8]) -> Result<Self, PduError> {
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
                (t, v) if t == C::ITEM_TYPE => presentation_contexts.push(C::parse(v)?),
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

    /// The 68-byte fixed part (PS3.8 Table 9-11), the application context item, the
    /// presentation context items, then the user information item.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_pdu(out, C::PDU_TYPE, |out| {
            out.extend_from_slice(&self.protocol_version.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&self.called_ae);
            out.extend_from_slice(&self.calling_ae);
            out.extend_from_slice(&[0; 32]);
            put_bytes_item(
                out,
                ITEM_APPLICATION_CONTEXT,
                self.application_context.as_bytes(),
            );
            for pc in &self.presentation_contexts {
                put_item(out, C::ITEM_TYPE, |o| pc.encode_value(o));
            }
            self.user_info.encode(out);
        });
    }
}

impl ContextItem for PresentationContextRq {
    const PDU_TYPE: u8 = ASSOCIATE_RQ;
    const ITEM_TYPE: u8 = ITEM_PC_RQ;

    fn encode_value(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&[self.id, 0, 0, 0]);
        put_bytes_item(o, SUB_ABSTRACT_SYNTAX, self.abstract_syntax.as_bytes());
        for ts in &self.transfer_syntaxes {
            put_bytes_item(o, SUB_TRANSFER_SYNTAX, ts.as_bytes());
        }
    }

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

impl ContextItem for PresentationContextAc {
    const PDU_TYPE: u8 = ASSOCIATE_AC;
    const ITEM_TYPE: u8 = ITEM_PC_AC;

    fn encode_value(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&[self.id, 0, self.result, 0]);
        // Always present, even for a rejected context (PS3.8 Table 9-18).
        put_bytes_item(o, SUB_TRANSFER_SYNTAX, self.transfer_syntax.as_bytes());
    }

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
                    // Padding only names nothing: taken as absent, which is also what an
                    // empty name re-encodes to (found by the `pdu` fuzz target).
                    if !name.is_empty() {
                        set_once(&mut info.implementation_version_name, name)?;
                    }
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

// Encoding: lengths are patched in and oversize values cut, as described in `pdu/mod.rs`.

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

#[cfg(test)]
pub(super) mod tests;
