//! DIMSE command sets (PS3.7 §9.3, §E): group 0000 elements, always Implicit VR Little Endian.

use crate::vr::trim_padding;
use std::fmt;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_CANCEL_RQ: u16 = 0x0FFF;
/// A response's command field is its request's with bit 15 set (PS3.7 §E.1).
pub const RESPONSE_BIT: u16 = 0x8000;
/// Bound on a reassembled command set; real ones are a few hundred bytes.
pub const MAX_COMMAND_SET: usize = 64 * 1024;
/// CommandDataSetType value meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;

/// DIMSE statuses a Storage SCP answers with (PS3.4 §B.2.3, PS3.7 annex C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// "Duplicate SOP Instance" (PS3.7 §C.5.7): a general failure status that says what is
    /// wrong, where A7xx (out of resources) would invite a retry that cannot succeed.
    pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

const TAG_AFFECTED_SOP_CLASS_UID: u32 = 0x0000_0002;
const TAG_COMMAND_FIELD: u32 = 0x0000_0100;
const TAG_MESSAGE_ID: u32 = 0x0000_0110;
const TAG_MESSAGE_ID_BEING_RESPONDED_TO: u32 = 0x0000_0120;
const TAG_PRIORITY: u32 = 0x0000_0700;
const TAG_COMMAND_DATA_SET_TYPE: u32 = 0x0000_0800;
const TAG_STATUS: u32 = 0x0000_0900;
const TAG_ERROR_COMMENT: u32 = 0x0000_0902;
const TAG_AFFECTED_SOP_INSTANCE_UID: u32 = 0x0000_1000;

/// The parts of a request command set a Storage SCP acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub has_data_set: bool,
    /// Needed to answer; kept so a response to e.g. an echo can echo it back.
    pub status: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimseError {
    Truncated,
    /// An element outside group 0000 inside a command set.
    NotCommandGroup(u32),
    /// A required element is absent or has the wrong length.
    BadElement(&'static str),
}

impl fmt::Display for DimseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DimseError::Truncated => f.write_str("command set truncated"),
            DimseError::NotCommandGroup(tag) => {
                write!(
                    f,
                    "element ({:04X},{:04X}) in a command set",
                    tag >> 16,
                    tag & 0xFFFF
                )
            }
            DimseError::BadElement(name) => write!(f, "command set lacks a valid {name}"),
        }
    }
}

impl std::error::Error for DimseError {}

fn uid_value(value: &[u8]) -> String {
    String::from_utf8_lossy(trim_padding(value)).into_owned()
}

fn us_value(value: &[u8], name: &'static str) -> Result<u16, DimseError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(DimseError::BadElement(name)),
    }
}

/// The elements of a command set as (tag, value), each length checked against the bytes
/// present; an element outside group 0000 ends the walk with an error.
fn elements(mut bytes: &[u8]) -> impl Iterator<Item = Result<(u32, &[u8]), DimseError>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let element = (|| {
            let header: &[u8; 8] = bytes
                .get(..8)
                .and_then(|h| h.try_into().ok())
                .ok_or(DimseError::Truncated)?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let tag =
                (u32::from(group) << 16) | u32::from(u16::from_le_bytes([header[2], header[3]]));
            let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0 {
                return Err(DimseError::NotCommandGroup(tag));
            }
            let value = bytes
                .get(8..8usize.saturating_add(length))
                .ok_or(DimseError::Truncated)?;
            bytes = &bytes[8 + length..];
            Ok((tag, value))
        })();
        if element.is_err() {
            bytes = &[];
        }
        Some(element)
    })
}

impl Command {
    /// Parse a complete command set; unknown group 0000 elements are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Command, DimseError> {
        let mut command = Command::default();
        let mut command_field = None;
        let mut data_set_type = None;
        for element in elements(bytes) {
            let (tag, value) = element?;
            match tag {
                TAG_AFFECTED_SOP_CLASS_UID => {
                    command.affected_sop_class_uid = Some(uid_value(value))
                }
                TAG_AFFECTED_SOP_INSTANCE_UID => {
                    command.affected_sop_instance_uid = Some(uid_value(value))
                }
                TAG_COMMAND_FIELD => command_field = Some(us_value(value, "CommandField")?),
                TAG_MESSAGE_ID => command.message_id = Some(us_value(value, "MessageID")?),
                TAG_COMMAND_DATA_SET_TYPE => {
                    data_set_type = Some(us_value(value, "CommandDataSetType")?)
                }
                TAG_STATUS => command.status = Some(us_value(value, "Status")?),
                _ => {}
            }
        }
        command.command_field = command_field.ok_or(DimseError::BadElement("CommandField"))?;
        command.has_data_set =
            data_set_type.ok_or(DimseError::BadElement("CommandDataSetType"))? != NO_DATA_SET;
        Ok(command)
    }
}

/// A response command set (C-ECHO-RSP, C-STORE-RSP or a failure answer to another request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub command_field: u16,
    pub message_id_being_responded_to: u16,
    pub affected_sop_class_uid: Option<&'a str>,
    pub affected_sop_instance_uid: Option<&'a str>,
    pub status: u16,
    pub error_comment: Option<&'a str>,
}

fn put_element(out: &mut Vec<u8>, tag: u32, value: &[u8], pad: u8) {
    let padded_len = value.len() + value.len() % 2;
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(&(padded_len as u32).to_le_bytes());
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

/// Append a command set: (0000,0000) CommandGroupLength, then what `elements` writes.
fn encode_group(out: &mut Vec<u8>, elements: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    put_element(out, 0, &[0; 4], 0);
    let body = out.len();
    elements(out);
    let group_length = (out.len() - body) as u32;
    out[start + 8..start + 12].copy_from_slice(&group_length.to_le_bytes());
}

fn put_uid(out: &mut Vec<u8>, tag: u32, uid: Option<&str>) {
    if let Some(uid) = uid {
        put_element(out, tag, uid.as_bytes(), 0);
    }
}

fn put_us(out: &mut Vec<u8>, tag: u32, value: u16) {
    put_element(out, tag, &value.to_le_bytes(), 0);
}

impl Command {
    /// Append the encoded request command set, as an SCU sends it (elements in tag order).
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_group(out, |out| {
            put_uid(
                out,
                TAG_AFFECTED_SOP_CLASS_UID,
                self.affected_sop_class_uid.as_deref(),
            );
            put_us(out, TAG_COMMAND_FIELD, self.command_field);
            put_us(out, TAG_MESSAGE_ID, self.message_id.unwrap_or(0));
            if self.command_field == C_STORE_RQ {
                // Priority is mandatory in a C-STORE-RQ (PS3.7 §9.3.1.1); 0 is MEDIUM.
                put_us(out, TAG_PRIORITY, 0);
            }
            // Any value but 0x0101 announces a data set; 0x0000 is what peers send.
            put_us(
                out,
                TAG_COMMAND_DATA_SET_TYPE,
                if self.has_data_set { 0 } else { NO_DATA_SET },
            );
            if let Some(status) = self.status {
                put_us(out, TAG_STATUS, status);
            }
            put_uid(
                out,
                TAG_AFFECTED_SOP_INSTANCE_UID,
                self.affected_sop_instance_uid.as_deref(),
            );
        });
    }
}

/// A text value without its padding, if it is valid UTF-8.
fn text_value(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(trim_padding(value)).ok()
}

impl<'a> Response<'a> {
    /// Parse a response command set that announces no data set (C-STORE-RSP, C-ECHO-RSP),
    /// borrowing its text values; unknown group 0000 elements are skipped.
    pub fn parse(bytes: &'a [u8]) -> Result<Response<'a>, DimseError> {
        let (mut command_field, mut responded_to, mut status, mut data_set_type) =
            (None, None, None, None);
        let mut response = Response {
            command_field: 0,
            message_id_being_responded_to: 0,
            affected_sop_class_uid: None,
            affected_sop_instance_uid: None,
            status: 0,
            error_comment: None,
        };
        for element in elements(bytes) {
            let (tag, value) = element?;
            match tag {
                TAG_AFFECTED_SOP_CLASS_UID => response.affected_sop_class_uid = text_value(value),
                TAG_AFFECTED_SOP_INSTANCE_UID => {
                    response.affected_sop_instance_uid = text_value(value)
                }
                TAG_COMMAND_FIELD => command_field = Some(us_value(value, "CommandField")?),
                TAG_MESSAGE_ID_BEING_RESPONDED_TO => {
                    responded_to = Some(us_value(value, "MessageIDBeingRespondedTo")?)
                }
                TAG_COMMAND_DATA_SET_TYPE => {
                    data_set_type = Some(us_value(value, "CommandDataSetType")?)
                }
                TAG_STATUS => status = Some(us_value(value, "Status")?),
                TAG_ERROR_COMMENT => response.error_comment = text_value(value),
                _ => {}
            }
        }
        response.command_field = command_field.ok_or(DimseError::BadElement("CommandField"))?;
        response.message_id_being_responded_to =
            responded_to.ok_or(DimseError::BadElement("MessageIDBeingRespondedTo"))?;
        response.status = status.ok_or(DimseError::BadElement("Status"))?;
        if data_set_type != Some(NO_DATA_SET) {
            return Err(DimseError::BadElement("CommandDataSetType"));
        }
        Ok(response)
    }
}

impl Response<'_> {
    /// Append the encoded response command set (elements in tag order).
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_group(out, |out| {
            put_uid(out, TAG_AFFECTED_SOP_CLASS_UID, self.affected_sop_class_uid);
            put_us(out, TAG_COMMAND_FIELD, self.command_field);
            put_us(
                out,
                TAG_MESSAGE_ID_BEING_RESPONDED_TO,
                self.message_id_being_responded_to,
            );
            put_us(out, TAG_COMMAND_DATA_SET_TYPE, NO_DATA_SET);
            put_us(out, TAG_STATUS, self.status);
            if let Some(comment) = self.error_comment {
                // ErrorComment is LO: at most 64 characters.
                let end = comment
                    .char_indices()
                    .nth(64)
                    .map_or(comment.len(), |(i, _)| i);
                put_element(out, TAG_ERROR_COMMENT, &comment.as_bytes()[..end], b' ');
            }
            put_uid(
                out,
                TAG_AFFECTED_SOP_INSTANCE_UID,
                self.affected_sop_instance_uid,
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_rq() -> Command {
        Command {
            command_field: C_STORE_RQ,
            message_id: Some(7),
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            affected_sop_instance_uid: Some("1.2.3.45".into()),
            has_data_set: true,
            status: None,
        }
    }

    #[test]
    fn request_round_trip() {
        let mut out = Vec::new();
        store_rq().encode(&mut out);
        assert_eq!(Command::parse(&out).unwrap(), store_rq());
        let echo = Command {
            command_field: C_ECHO_RQ,
            message_id: Some(1),
            affected_sop_class_uid: Some("1.2.840.10008.1.1".into()),
            ..Command::default()
        };
        out.clear();
        echo.encode(&mut out);
        assert_eq!(Command::parse(&out).unwrap(), echo);
    }

    #[test]
    fn response_encodes_group_length_and_padding() {
        let mut out = Vec::new();
        Response {
            command_field: C_STORE_RQ | RESPONSE_BIT,
            message_id_being_responded_to: 7,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2"),
            affected_sop_instance_uid: Some("1.2.3"),
            status: status::CANNOT_UNDERSTAND,
            error_comment: Some("missing StudyInstanceUID"),
        }
        .encode(&mut out);
        let group_length = u32::from_le_bytes(out[8..12].try_into().unwrap()) as usize;
        assert_eq!(group_length, out.len() - 12);
        assert!(out.len() % 2 == 0);
        let parsed = Command::parse(&out).unwrap();
        assert_eq!(parsed.command_field, 0x8001);
        assert_eq!(parsed.status, Some(0xC000));
        assert_eq!(parsed.affected_sop_instance_uid.as_deref(), Some("1.2.3"));
        assert!(!parsed.has_data_set);
    }

    #[test]
    fn response_round_trip_and_store_priority() {
        let sent = Response {
            command_field: C_STORE_RQ | RESPONSE_BIT,
            message_id_being_responded_to: 9,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2"),
            affected_sop_instance_uid: Some("1.2.345"),
            status: status::CANNOT_UNDERSTAND,
            error_comment: Some("odd"),
        };
        let mut out = Vec::new();
        sent.encode(&mut out);
        assert_eq!(Response::parse(&out), Ok(sent));
        // A C-STORE-RQ carries Priority MEDIUM (0000,0700) = 0; a C-ECHO-RQ none.
        out.clear();
        store_rq().encode(&mut out);
        let priority = [0x00, 0x00, 0x00, 0x07, 2, 0, 0, 0, 0, 0];
        assert!(out.windows(10).any(|w| w == priority));
        // Requests are not responses: no MessageIDBeingRespondedTo, no Status.
        assert_eq!(
            Response::parse(&out),
            Err(DimseError::BadElement("MessageIDBeingRespondedTo"))
        );
    }

    #[test]
    fn response_announcing_a_data_set_is_refused() {
        let mut out = Vec::new();
        encode_group(&mut out, |out| {
            put_us(out, TAG_COMMAND_FIELD, 0x8001);
            put_us(out, TAG_MESSAGE_ID_BEING_RESPONDED_TO, 1);
            put_us(out, TAG_COMMAND_DATA_SET_TYPE, 0);
            put_us(out, TAG_STATUS, 0);
        });
        assert_eq!(
            Response::parse(&out),
            Err(DimseError::BadElement("CommandDataSetType"))
        );
        assert_eq!(Response::parse(&out[..7]), Err(DimseError::Truncated));
    }

    #[test]
    fn long_error_comment_is_cut_to_lo_length() {
        let mut out = Vec::new();
        let comment = "x".repeat(200);
        Response {
            command_field: 0x8001,
            message_id_being_responded_to: 1,
            affected_sop_class_uid: None,
            affected_sop_instance_uid: None,
            status: 0xC000,
            error_comment: Some(&comment),
        }
        .encode(&mut out);
        assert!(out.len() < 12 + 5 * 10 + 8 + 64 + 1);
    }

    #[test]
    fn malformed_command_sets_are_rejected() {
        let mut out = Vec::new();
        store_rq().encode(&mut out);
        for cut in 1..out.len() {
            // A prefix may end on an element boundary and still hold the required elements.
            let _ = Command::parse(&out[..cut]);
        }
        assert_eq!(
            Command::parse(&out[..out.len() - 3]),
            Err(DimseError::Truncated)
        );
        assert_eq!(
            Command::parse(&out[..12]),
            Err(DimseError::BadElement("CommandField"))
        );
        let mut foreign = out.clone();
        foreign.extend_from_slice(&[0x08, 0, 0x16, 0, 0, 0, 0, 0]);
        assert_eq!(
            Command::parse(&foreign),
            Err(DimseError::NotCommandGroup(0x0008_0016))
        );
        let mut huge = out.clone();
        huge.extend_from_slice(&[0, 0, 0x99, 0x99, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(Command::parse(&huge), Err(DimseError::Truncated));
        let mut odd_us = Vec::new();
        put_element(&mut odd_us, TAG_COMMAND_FIELD, &[1, 0, 0, 0], 0);
        assert_eq!(
            Command::parse(&odd_us),
            Err(DimseError::BadElement("CommandField"))
        );
    }
}
