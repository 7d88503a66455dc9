//! Push scanner that pulls the filing attributes out of a data set while it streams to disk.
//!
//! The receiver hands over every PDV fragment as it arrives (any split point); the scanner keeps
//! only a 12-byte header buffer, a fixed sequence stack and the captured values, so the data set
//! itself is never buffered. Top-level elements are in ascending tag order (PS3.5 §7.1), so the
//! scan stops once it has passed (0020,000E) and `feed` becomes a no-op for the rest (pixel data).
//!
//! The state machine is here; a deflated data set first goes through `inflate`.

use std::fmt;

use crate::vr;
use inflate::Inflater;

mod inflate;

/// Longest prefix of a value kept; the rest is skipped, never buffered.
pub const MAX_VALUE_LEN: usize = 16 * 1024;

/// Deepest sequence nesting accepted; real data sets stay far below this.
const MAX_DEPTH: usize = 64;
/// Undefined Length (PS3.5 §7.1.1).
const UNDEFINED: u32 = 0xFFFF_FFFF;

// Item and delimiters (PS3.5 §7.5): never have a VR, in any transfer syntax.
const ITEM: u32 = 0xFFFE_E000;
const ITEM_DELIMITER: u32 = 0xFFFE_E00D;
const SEQUENCE_DELIMITER: u32 = 0xFFFE_E0DD;

const SOP_CLASS_UID: u32 = 0x0008_0016;
const SOP_INSTANCE_UID: u32 = 0x0008_0018;
const STUDY_DATE: u32 = 0x0008_0020;
const ACCESSION_NUMBER: u32 = 0x0008_0050;
const MODALITY: u32 = 0x0008_0060;
const PATIENT_ID: u32 = 0x0010_0020;
const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
const SERIES_INSTANCE_UID: u32 = 0x0020_000E;

/// How a data set is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
    pub deflated: bool,
}

impl Encoding {
    /// Encoding of a transfer syntax UID's data set: 1.2.840.10008.1.2 implicit LE;
    /// 1.2.840.10008.1.2.2 explicit BE; 1.2.840.10008.1.2.1.99 and the JPIP Referenced Deflate
    /// syntaxes (1.2.840.10008.1.2.4.95, .205) deflated explicit LE (raw deflate, RFC 1951, no
    /// zlib header, PS3.5 §A.5, §A.7, §A.12); everything else (1.2.840.10008.1.2.1, the
    /// encapsulated JPEG/JPEG-LS/J2K/HTJ2K/RLE/MPEG/HEVC families…) explicit LE.
    pub fn for_transfer_syntax(uid: &str) -> Encoding {
        // Peers sometimes leave the even-length padding on the UID.
        let uid = uid.trim_end_matches(['\0', ' ']);
        let (explicit_vr, big_endian, deflated) = match uid {
            "1.2.840.10008.1.2" => (false, false, false),
            "1.2.840.10008.1.2.2" => (true, true, false),
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" | "1.2.840.10008.1.2.4.205" => {
                (true, false, true)
            }
            _ => (true, false, false),
        };
        Encoding {
            explicit_vr,
            big_endian,
            deflated,
        }
    }
}

/// One captured top-level element as encoded: its tag, its VR (explicit VR syntaxes only) and
/// its whole value, padding included, for a consumer that decodes it as a DICOM library would
/// (the callbacks' data set, which then needs no read of the file for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub tag: u32,
    pub vr: Option<[u8; 2]>,
    pub value: Vec<u8>,
}

/// The attributes needed to file an instance, and those the journal indexes it by, padding
/// removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortAttributes {
    pub sop_class_uid: Option<Vec<u8>>,
    pub sop_instance_uid: Option<Vec<u8>>,
    pub study_date: Option<Vec<u8>>,
    pub accession_number: Option<Vec<u8>>,
    pub modality: Option<Vec<u8>>,
    pub patient_id: Option<Vec<u8>>,
    pub study_instance_uid: Option<Vec<u8>>,
    pub series_instance_uid: Option<Vec<u8>>,
    /// The same attributes as encoded, whole values only (none longer than
    /// [`MAX_VALUE_LEN`]); empty unless asked for with [`Scanner::keeping_elements`].
    pub elements: Vec<Element>,
}

/// Why a data set could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    Truncated,
    Malformed(&'static str),
    TooDeep,
    Deflate(String),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Truncated => f.write_str("data set truncated"),
            ScanError::Malformed(why) => write!(f, "malformed data set: {why}"),
            ScanError::TooDeep => write!(f, "sequences nested deeper than {MAX_DEPTH}"),
            ScanError::Deflate(why) => write!(f, "deflated data set: {why}"),
        }
    }
}

impl std::error::Error for ScanError {}

/// Push parser for one data set.
pub struct Scanner {
    parser: Parser,
    inflater: Option<Inflater>,
    error: Option<ScanError>,
}

impl Scanner {
    pub fn new(encoding: Encoding) -> Scanner {
        let syntax = Syntax {
            explicit_vr: encoding.explicit_vr,
            big_endian: encoding.big_endian,
        };
        Scanner {
            parser: Parser::new(syntax),
            inflater: encoding.deflated.then(Inflater::new),
            error: None,
        }
    }

    /// Also keep each captured element as encoded ([`SortAttributes::elements`]): a copy of a
    /// few short values, made only when someone reads them.
    pub fn keeping_elements(mut self, keep: bool) -> Scanner {
        self.parser.keep = keep;
        self
    }

    /// Consume the next bytes of the data set. Returns Err on a data set that cannot be parsed;
    /// after Err or once done, further calls return Ok(()) and do nothing.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ScanError> {
        if self.parser.done || self.error.is_some() {
            return Ok(());
        }
        let result = match &mut self.inflater {
            None => self.parser.feed(data),
            Some(inflater) => inflater.feed(&mut self.parser, data),
        };
        if let Err(e) = &result {
            self.error = Some(e.clone());
        }
        result
    }

    /// True once every attribute that can still appear has been passed.
    pub fn is_done(&self) -> bool {
        self.parser.done
    }

    /// End of data set: the attributes found. Err if the data ended in the middle of an element
    /// header or of a value/sequence that the scan was still inside before being done
    /// (truncated data set), or an earlier feed failed.
    pub fn finish(self) -> Result<SortAttributes, ScanError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.parser.done {
            // A deflate stream must reach its final block; stopping short means lost bytes.
            let stream_cut = self.inflater.as_ref().is_some_and(|i| !i.ended);
            if stream_cut || !self.parser.at_boundary() {
                return Err(ScanError::Truncated);
            }
        }
        Ok(self.parser.attrs)
    }
}

/// Byte order and VR form of the elements at one nesting level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Syntax {
    explicit_vr: bool,
    big_endian: bool,
}

/// UN content with undefined length is Implicit VR Little Endian whatever the transfer
/// syntax (PS3.5 §6.2.2).
const IMPLICIT_LE: Syntax = Syntax {
    explicit_vr: false,
    big_endian: false,
};

/// One open undefined-length sequence (or encapsulated pixel data, PS3.5 §A.4).
#[derive(Debug, Clone, Copy)]
struct Level {
    syntax: Syntax,
    /// Inside an undefined-length item (elements expected) rather than between items.
    in_item: bool,
}

/// Which of the captured attributes a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    SopClass,
    SopInstance,
    StudyDate,
    Accession,
    Modality,
    PatientId,
    Study,
    Series,
}

impl Slot {
    fn for_tag(tag: u32) -> Option<Slot> {
        match tag {
            SOP_CLASS_UID => Some(Slot::SopClass),
            SOP_INSTANCE_UID => Some(Slot::SopInstance),
            STUDY_DATE => Some(Slot::StudyDate),
            ACCESSION_NUMBER => Some(Slot::Accession),
            MODALITY => Some(Slot::Modality),
            PATIENT_ID => Some(Slot::PatientId),
            STUDY_INSTANCE_UID => Some(Slot::Study),
            SERIES_INSTANCE_UID => Some(Slot::Series),
            _ => None,
        }
    }
}

impl SortAttributes {
    fn slot_mut(&mut self, slot: Slot) -> &mut Option<Vec<u8>> {
        match slot {
            Slot::SopClass => &mut self.sop_class_uid,
            Slot::SopInstance => &mut self.sop_instance_uid,
            Slot::StudyDate => &mut self.study_date,
            Slot::Accession => &mut self.accession_number,
            Slot::Modality => &mut self.modality,
            Slot::PatientId => &mut self.patient_id,
            Slot::Study => &mut self.study_instance_uid,
            Slot::Series => &mut self.series_instance_uid,
        }
    }
}

/// What the next bytes are.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// An element, item or delimiter header (partly in `Parser::header`).
    Header,
    /// This many value bytes to pass over.
    Skip(u32),
    /// This many value bytes left of a top-level attribute being captured.
    Capture(Slot, u32),
}

/// The element-level state machine over plain (inflated) data set bytes.
struct Parser {
    top: Syntax,
    levels: [Level; MAX_DEPTH],
    depth: usize,
    step: Step,
    header: [u8; 12],
    header_len: usize,
    done: bool,
    attrs: SortAttributes,
    /// Keep captured elements as encoded too; the one being captured: tag, VR, length.
    keep: bool,
    capturing: (u32, Option<[u8; 2]>, u32),
}

impl Parser {
    fn new(top: Syntax) -> Parser {
        Parser {
            top,
            levels: [Level {
                syntax: top,
                in_item: false,
            }; MAX_DEPTH],
            depth: 0,
            step: Step::Header,
            header: [0; 12],
            header_len: 0,
            done: false,
            attrs: SortAttributes::default(),
            keep: false,
            capturing: (0, None, 0),
        }
    }

    /// Between two top-level elements: the data set may legitimately end here.
    fn at_boundary(&self) -> bool {
        self.depth == 0 && self.header_len == 0 && matches!(self.step, Step::Header)
    }

    fn syntax(&self) -> Syntax {
        match self.depth.checked_sub(1) {
            None => self.top,
            Some(i) => self.levels[i].syntax,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        while !data.is_empty() && !self.done {
            match self.step {
                Step::Header => {
                    // The header size is known only piecewise: tag, then VR, then length form.
                    loop {
                        let need = self.header_need()?;
                        if self.header_len == need {
                            break;
                        }
                        if data.is_empty() {
                            return Ok(());
                        }
                        let take = (need - self.header_len).min(data.len());
                        self.header[self.header_len..self.header_len + take]
                            .copy_from_slice(&data[..take]);
                        self.header_len += take;
                        data = &data[take..];
                    }
                    self.on_header()?;
                }
                Step::Skip(left) => {
                    let take = data.len().min(left as usize);
                    data = &data[take..];
                    self.skip(left - take as u32);
                }
                Step::Capture(slot, left) => {
                    let take = data.len().min(left as usize);
                    let value = self.attrs.slot_mut(slot).get_or_insert_with(Vec::new);
                    let room = MAX_VALUE_LEN.saturating_sub(value.len());
                    value.extend_from_slice(&data[..take.min(room)]);
                    data = &data[take..];
                    match left - take as u32 {
                        0 => self.end_capture(slot),
                        rest => self.step = Step::Capture(slot, rest),
                    }
                }
            }
        }
        Ok(())
    }

    /// Total header length as far as the bytes collected so far tell (PS3.5 §7.1.1–7.1.3).
    fn header_need(&self) -> Result<usize, ScanError> {
        if self.header_len < 4 {
            return Ok(4);
        }
        let syntax = self.syntax();
        if !syntax.explicit_vr || is_item_tag(self.tag(syntax)) {
            return Ok(8);
        }
        if self.header_len < 6 {
            return Ok(6);
        }
        match vr::has_long_length(&[self.header[4], self.header[5]]) {
            Some(true) => Ok(12),
            Some(false) => Ok(8),
            None => Err(ScanError::Malformed("invalid VR")),
        }
    }

    fn tag(&self, syntax: Syntax) -> u32 {
        (u32::from(self.u16_at(0, syntax)) << 16) | u32::from(self.u16_at(2, syntax))
    }

    fn u16_at(&self, at: usize, syntax: Syntax) -> u16 {
        let bytes = [self.header[at], self.header[at + 1]];
        if syntax.big_endian {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    }

    fn u32_at(&self, at: usize, syntax: Syntax) -> u32 {
        let bytes = [
            self.header[at],
            self.header[at + 1],
            self.header[at + 2],
            self.header[at + 3],
        ];
        if syntax.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    }

    fn on_header(&mut self) -> Result<(), ScanError> {
        let syntax = self.syntax();
        let tag = self.tag(syntax);
        let explicit = syntax.explicit_vr && !is_item_tag(tag);
        let len = match (explicit, self.header_len) {
            (false, _) => self.u32_at(4, syntax),
            (true, 12) => self.u32_at(8, syntax),
            (true, _) => u32::from(self.u16_at(6, syntax)),
        };
        let vr = [self.header[4], self.header[5]];
        self.header_len = 0;

        if is_item_tag(tag) {
            return self.on_item_tag(tag, len);
        }
        match self.depth.checked_sub(1) {
            Some(i) if !self.levels[i].in_item => {
                return Err(ScanError::Malformed("element outside an item"));
            }
            Some(_) => {}
            None => {
                // Ascending order: nothing wanted can follow a larger top-level tag.
                if tag > SERIES_INSTANCE_UID {
                    self.done = true;
                    return Ok(());
                }
                if let (Some(slot), false) = (Slot::for_tag(tag), len == UNDEFINED) {
                    *self.attrs.slot_mut(slot) = Some(Vec::new());
                    self.capturing = (tag, explicit.then_some(vr), len);
                    match len {
                        0 => self.end_capture(slot),
                        _ => self.step = Step::Capture(slot, len),
                    }
                    return Ok(());
                }
            }
        }
        if len != UNDEFINED {
            self.skip(len);
            return Ok(());
        }
        // Undefined length opens a sequence of items (PS3.5 §7.5.1); in explicit VR only SQ,
        // UN (§6.2.2) and encapsulated OB/OW pixel data (§A.4) may have it.
        let child = match (explicit, &vr) {
            (false, _) | (true, b"SQ" | b"OB" | b"OW") => syntax,
            (true, b"UN") => IMPLICIT_LE,
            (true, _) => return Err(ScanError::Malformed("undefined length on a plain value")),
        };
        if self.depth == MAX_DEPTH {
            return Err(ScanError::TooDeep);
        }
        self.levels[self.depth] = Level {
            syntax: child,
            in_item: false,
        };
        self.depth += 1;
        Ok(())
    }

    /// Items and delimiters (PS3.5 §7.5). Delimiter lengths should be zero; a nonzero one
    /// carries no data, so it is ignored rather than rejected.
    fn on_item_tag(&mut self, tag: u32, len: u32) -> Result<(), ScanError> {
        let Some(i) = self.depth.checked_sub(1) else {
            return Err(ScanError::Malformed("item or delimiter at top level"));
        };
        match (self.levels[i].in_item, tag) {
            // Defined-length items are passed over whole: their content cannot be top level.
            (false, ITEM) if len != UNDEFINED => self.skip(len),
            (false, ITEM) => self.levels[i].in_item = true,
            (false, SEQUENCE_DELIMITER) => self.depth = i,
            (true, ITEM_DELIMITER) => self.levels[i].in_item = false,
            _ => return Err(ScanError::Malformed("misplaced item or delimiter")),
        }
        Ok(())
    }

    fn skip(&mut self, len: u32) {
        self.step = match len {
            0 => Step::Header,
            _ => Step::Skip(len),
        };
    }

    fn end_capture(&mut self, slot: Slot) {
        self.step = Step::Header;
        let keep = self.keep;
        let (tag, vr, len) = self.capturing;
        let whole = self
            .attrs
            .slot_mut(slot)
            .as_ref()
            .filter(|v| v.len() == len as usize);
        if let Some(value) = whole.filter(|_| keep).cloned() {
            self.attrs.elements.push(Element { tag, vr, value });
        }
        if let Some(value) = self.attrs.slot_mut(slot) {
            // LO, SH and CS also allow insignificant leading spaces.
            value.truncate(vr::trim_padding(value).len());
            if matches!(slot, Slot::PatientId | Slot::Accession | Slot::Modality) {
                let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
                value.drain(..start);
            }
        }
        // (0020,000E) is the last attribute wanted: passing it ends the scan.
        if slot == Slot::Series {
            self.done = true;
        }
    }
}

fn is_item_tag(tag: u32) -> bool {
    matches!(tag, ITEM | ITEM_DELIMITER | SEQUENCE_DELIMITER)
}

#[cfg(test)]
mod tests;
