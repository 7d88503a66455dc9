//! Push scanner that pulls the filing attributes out of a data set while it streams to disk.
//!
//! The receiver hands over every PDV fragment as it arrives (any split point); the scanner keeps
//! only a 12-byte header buffer, a fixed sequence stack and the captured values, so the data set
//! itself is never buffered. Top-level elements are in ascending tag order (PS3.5 §7.1), so the
//! scan stops once it has passed (0020,000E) and `feed` becomes a no-op for the rest (pixel data).

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

/// Longest prefix of a value kept; the rest is skipped, never buffered.
pub const MAX_VALUE_LEN: usize = 16 * 1024;

/// Deepest sequence nesting accepted; real data sets stay far below this.
const MAX_DEPTH: usize = 64;
/// Inflate output chunk, allocated once per deflated scanner.
const INFLATE_CHUNK: usize = 16 * 1024;
/// Undefined Length (PS3.5 §7.1.1).
const UNDEFINED: u32 = 0xFFFF_FFFF;

// Item and delimiters (PS3.5 §7.5): never have a VR, in any transfer syntax.
const ITEM: u32 = 0xFFFE_E000;
const ITEM_DELIMITER: u32 = 0xFFFE_E00D;
const SEQUENCE_DELIMITER: u32 = 0xFFFE_E0DD;

const SOP_CLASS_UID: u32 = 0x0008_0016;
const SOP_INSTANCE_UID: u32 = 0x0008_0018;
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

/// The attributes needed to file an instance, padding removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortAttributes {
    pub sop_class_uid: Option<Vec<u8>>,
    pub sop_instance_uid: Option<Vec<u8>>,
    pub patient_id: Option<Vec<u8>>,
    pub study_instance_uid: Option<Vec<u8>>,
    pub series_instance_uid: Option<Vec<u8>>,
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

/// Incremental raw inflate in front of the parser (PS3.5 §A.5). Output goes through a fixed
/// chunk and inflation stops once the parser is done, so memory is bounded whatever the ratio.
struct Inflater {
    stream: Decompress,
    chunk: Box<[u8]>,
    ended: bool,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            stream: Decompress::new(false),
            chunk: vec![0; INFLATE_CHUNK].into_boxed_slice(),
            ended: false,
        }
    }

    fn feed(&mut self, parser: &mut Parser, mut input: &[u8]) -> Result<(), ScanError> {
        // Bytes after the end of the stream (the even-length pad byte of §A.5) are ignored.
        while !self.ended && !parser.done {
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            let status = self
                .stream
                .decompress(input, &mut self.chunk, FlushDecompress::None)
                .map_err(|e| ScanError::Deflate(e.to_string()))?;
            let consumed = (self.stream.total_in() - in_before) as usize;
            let produced = (self.stream.total_out() - out_before) as usize;
            input = input.get(consumed..).unwrap_or_default();
            parser.feed(self.chunk.get(..produced).unwrap_or_default())?;
            self.ended = status == Status::StreamEnd;
            // A chunk left unfilled means the inflater holds nothing more for the input so far;
            // no progress at all means it needs more input.
            if (input.is_empty() && produced < self.chunk.len()) || (consumed == 0 && produced == 0)
            {
                break;
            }
        }
        Ok(())
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
    PatientId,
    Study,
    Series,
}

impl Slot {
    fn for_tag(tag: u32) -> Option<Slot> {
        match tag {
            SOP_CLASS_UID => Some(Slot::SopClass),
            SOP_INSTANCE_UID => Some(Slot::SopInstance),
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
        match vr_has_long_length(&[self.header[4], self.header[5]]) {
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
        if let Some(value) = self.attrs.slot_mut(slot) {
            // UI is padded with NUL, text VRs with spaces (PS3.5 §6.2); LO also allows
            // insignificant leading spaces.
            let end = value
                .iter()
                .rposition(|&b| b != 0 && b != b' ')
                .map_or(0, |i| i + 1);
            value.truncate(end);
            if slot == Slot::PatientId {
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

/// Whether an explicit VR uses the 12-byte header with a 32-bit length (PS3.5 Table 7.1-1);
/// None for anything that is not a VR of PS3.5 §6.2, whose header size would be unknowable.
fn vr_has_long_length(vr: &[u8; 2]) -> Option<bool> {
    match vr {
        b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR"
        | b"UT" | b"UV" => Some(true),
        b"AE" | b"AS" | b"AT" | b"CS" | b"DA" | b"DS" | b"DT" | b"FD" | b"FL" | b"IS" | b"LO"
        | b"LT" | b"PN" | b"SH" | b"SL" | b"SS" | b"ST" | b"TM" | b"UI" | b"UL" | b"US" => {
            Some(false)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::DeflateEncoder;
    use flate2::Compression;
    use std::io::Write;

    const IMPLICIT_LE_TS: &str = "1.2.840.10008.1.2";
    const EXPLICIT_LE_TS: &str = "1.2.840.10008.1.2.1";
    const EXPLICIT_BE_TS: &str = "1.2.840.10008.1.2.2";
    const DEFLATED_TS: &str = "1.2.840.10008.1.2.1.99";

    /// Minimal data set encoder for one transfer syntax.
    struct W {
        syntax: Syntax,
        out: Vec<u8>,
    }

    impl W {
        fn new(ts: &str) -> W {
            let e = Encoding::for_transfer_syntax(ts);
            W {
                syntax: Syntax {
                    explicit_vr: e.explicit_vr,
                    big_endian: e.big_endian,
                },
                out: Vec::new(),
            }
        }

        fn u16(&mut self, v: u16) -> &mut W {
            let b = if self.syntax.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.raw(&b)
        }

        fn u32(&mut self, v: u32) -> &mut W {
            let b = if self.syntax.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.raw(&b)
        }

        fn raw(&mut self, bytes: &[u8]) -> &mut W {
            self.out.extend_from_slice(bytes);
            self
        }

        fn tag(&mut self, tag: u32) -> &mut W {
            self.u16((tag >> 16) as u16).u16(tag as u16)
        }

        /// Element header; the explicit VR form follows the VR.
        fn head(&mut self, tag: u32, vr: &[u8; 2], len: u32) -> &mut W {
            self.tag(tag);
            if !self.syntax.explicit_vr {
                return self.u32(len);
            }
            self.raw(vr);
            if vr_has_long_length(vr) == Some(true) {
                self.u16(0).u32(len)
            } else {
                self.u16(len as u16)
            }
        }

        fn elem(&mut self, tag: u32, vr: &[u8; 2], value: &[u8]) -> &mut W {
            self.head(tag, vr, value.len() as u32).raw(value)
        }

        /// Item or delimiter: tag and 32-bit length, no VR.
        fn item(&mut self, tag: u32, len: u32) -> &mut W {
            self.tag(tag).u32(len)
        }
    }

    /// A data set exercising every skipping path before the wanted attributes, then pixel data.
    fn sample(ts: &str) -> Vec<u8> {
        let mut w = W::new(ts);
        w.elem(0x0008_0005, b"CS", b"ISO_IR 100");
        // Undefined-length SQ: an undefined-length item with decoys (one in a nested SQ),
        // then a defined-length item whose bytes look like delimiters.
        w.head(0x0008_0006, b"SQ", UNDEFINED)
            .item(ITEM, UNDEFINED)
            .elem(SOP_INSTANCE_UID, b"UI", b"9.9.9.9\0")
            .head(0x0040_A730, b"SQ", UNDEFINED)
            .item(ITEM, UNDEFINED)
            .elem(SERIES_INSTANCE_UID, b"UI", b"8.8\0")
            .item(ITEM_DELIMITER, 0)
            .item(SEQUENCE_DELIMITER, 0)
            .item(ITEM_DELIMITER, 0)
            .item(ITEM, 8)
            .raw(&[0xFE, 0xFF, 0xDD, 0xE0, 0xFE, 0xFF, 0x0D, 0xE0])
            .item(SEQUENCE_DELIMITER, 0);
        // Defined-length SQ holding an undefined-length SQ: skipped without parsing.
        let mut item = W::new(ts);
        item.elem(SOP_CLASS_UID, b"UI", b"7.7\0")
            .head(0x0008_1140, b"SQ", UNDEFINED)
            .item(SEQUENCE_DELIMITER, 0);
        let mut seq = W::new(ts);
        seq.item(ITEM, item.out.len() as u32).raw(&item.out);
        w.head(0x0008_0012, b"SQ", seq.out.len() as u32)
            .raw(&seq.out);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0")
            .elem(SOP_INSTANCE_UID, b"UI", b"1.2.3.4.5\0")
            .elem(0x0008_0020, b"DA", b"20240101")
            .elem(0x0009_0010, b"LO", b"PRIVATE ");
        // UN with undefined length: its content is implicit VR LE in every syntax.
        let mut un = W::new(IMPLICIT_LE_TS);
        un.item(ITEM, UNDEFINED)
            .elem(PATIENT_ID, b"LO", b"DECOY ")
            .item(ITEM_DELIMITER, 0)
            .item(SEQUENCE_DELIMITER, 0);
        w.head(0x0009_1010, b"UN", UNDEFINED).raw(&un.out);
        w.elem(0x0010_0010, b"PN", b"Doe^John")
            .elem(PATIENT_ID, b"LO", b"  PID42 ")
            .elem(0x0019_0010, b"LO", b"VENDOR");
        // Encapsulated-style OB: offset table plus fragments that look like headers.
        w.head(0x0019_1010, b"OB", UNDEFINED)
            .item(ITEM, 0)
            .item(ITEM, 8)
            .raw(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF])
            .item(ITEM, 4)
            .raw(&[0xFE, 0xFF, 0xDD, 0xE0])
            .item(SEQUENCE_DELIMITER, 0);
        w.elem(STUDY_INSTANCE_UID, b"UI", b"1.2.3.6\0")
            .elem(SERIES_INSTANCE_UID, b"UI", b"1.2.3.7 ")
            .elem(0x0020_0010, b"SH", b"STUDY1")
            .elem(0x0028_0010, b"US", &[0, 2])
            .elem(0x7FE0_0010, b"OW", &[0xAB; 64]);
        w.out
    }

    fn sample_attrs() -> SortAttributes {
        SortAttributes {
            sop_class_uid: Some(b"1.2.840.10008.5.1.4.1.1.2".to_vec()),
            sop_instance_uid: Some(b"1.2.3.4.5".to_vec()),
            patient_id: Some(b"PID42".to_vec()),
            study_instance_uid: Some(b"1.2.3.6".to_vec()),
            series_instance_uid: Some(b"1.2.3.7".to_vec()),
        }
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Deterministic split sizes (LCG), 1..=97 bytes.
    struct Lcg(u64);

    impl Lcg {
        fn next_len(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            1 + (self.0 >> 33) as usize % 97
        }
    }

    fn scan_split(
        ts: &str,
        data: &[u8],
        mut next_len: impl FnMut() -> usize,
    ) -> Result<SortAttributes, ScanError> {
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(ts));
        let mut rest = data;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(next_len().min(rest.len()));
            // Errors are also reported by finish, which is what is compared.
            let _ = scanner.feed(chunk);
            rest = tail;
        }
        scanner.finish()
    }

    fn scan(ts: &str, data: &[u8]) -> Result<SortAttributes, ScanError> {
        scan_split(ts, data, || usize::MAX)
    }

    /// Scans in one piece, byte by byte and at random split points; all must agree.
    fn scan_all_ways(ts: &str, data: &[u8]) -> Result<SortAttributes, ScanError> {
        let whole = scan(ts, data);
        assert_eq!(scan_split(ts, data, || 1), whole, "byte by byte");
        for seed in 0..8 {
            let mut lcg = Lcg(seed);
            assert_eq!(
                scan_split(ts, data, || lcg.next_len()),
                whole,
                "seed {seed}"
            );
        }
        whole
    }

    #[test]
    fn encoding_for_transfer_syntax() {
        let e = |explicit_vr, big_endian, deflated| Encoding {
            explicit_vr,
            big_endian,
            deflated,
        };
        assert_eq!(
            Encoding::for_transfer_syntax(IMPLICIT_LE_TS),
            e(false, false, false)
        );
        assert_eq!(
            Encoding::for_transfer_syntax("1.2.840.10008.1.2\0"),
            e(false, false, false)
        );
        assert_eq!(
            Encoding::for_transfer_syntax(EXPLICIT_LE_TS),
            e(true, false, false)
        );
        assert_eq!(
            Encoding::for_transfer_syntax(EXPLICIT_BE_TS),
            e(true, true, false)
        );
        for ts in [
            DEFLATED_TS,
            "1.2.840.10008.1.2.4.95",
            "1.2.840.10008.1.2.4.205",
        ] {
            assert_eq!(Encoding::for_transfer_syntax(ts), e(true, false, true));
        }
        for ts in [
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.201",
        ] {
            assert_eq!(Encoding::for_transfer_syntax(ts), e(true, false, false));
        }
    }

    #[test]
    fn sample_in_each_syntax() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            assert_eq!(scan_all_ways(ts, &sample(ts)), Ok(sample_attrs()), "{ts}");
        }
    }

    #[test]
    fn sample_deflated() {
        let compressed = deflate(&sample(EXPLICIT_LE_TS));
        assert_eq!(scan_all_ways(DEFLATED_TS, &compressed), Ok(sample_attrs()));
        // The even-length pad byte after the stream (PS3.5 §A.5) is ignored.
        let mut padded = compressed;
        padded.push(0);
        assert_eq!(scan_all_ways(DEFLATED_TS, &padded), Ok(sample_attrs()));
    }

    #[test]
    fn deflated_inflates_only_until_done() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SERIES_INSTANCE_UID, b"UI", b"1.2\0")
            .head(0x7FE0_0010, b"OW", 16 << 20)
            .raw(&vec![0; 16 << 20]);
        let compressed = deflate(&w.out);
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(DEFLATED_TS));
        for chunk in compressed.chunks(256 * 1024) {
            scanner.feed(chunk).unwrap();
        }
        assert!(scanner.is_done());
        let inflated = scanner.inflater.as_ref().unwrap().stream.total_out();
        assert!(inflated <= 2 * INFLATE_CHUNK as u64, "inflated {inflated}");
        let attrs = scanner.finish().unwrap();
        assert_eq!(attrs.series_instance_uid, Some(b"1.2".to_vec()));
    }

    #[test]
    fn deflated_output_larger_than_chunk_before_done() {
        // The inflater decodes into its own 32 KiB window first; with this size the last feed
        // leaves more than one chunk pending, and all of it must be drained within that feed.
        let mut w = W::new(EXPLICIT_LE_TS);
        w.head(0x0009_1010, b"OB", 20_000).raw(&[0; 20_000]).elem(
            SERIES_INSTANCE_UID,
            b"UI",
            b"1.2\0",
        );
        let attrs = scan_all_ways(DEFLATED_TS, &deflate(&w.out)).unwrap();
        assert_eq!(attrs.series_instance_uid, Some(b"1.2".to_vec()));
    }

    #[test]
    fn deflated_stream_cut_is_truncated() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0");
        let compressed = deflate(&w.out);
        assert_eq!(
            scan(DEFLATED_TS, &compressed[..compressed.len() - 1]),
            Err(ScanError::Truncated)
        );
        assert_eq!(scan(DEFLATED_TS, &[]), Err(ScanError::Truncated));
        // Final block with the reserved block type.
        assert!(matches!(
            scan(DEFLATED_TS, &[0xFF; 8]),
            Err(ScanError::Deflate(_))
        ));
    }

    #[test]
    fn deflated_stream_ending_before_done() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0");
        let mut compressed = deflate(&w.out);
        compressed.push(0);
        let attrs = scan_all_ways(DEFLATED_TS, &compressed).unwrap();
        assert_eq!(attrs.sop_class_uid, Some(b"1.2".to_vec()));
        // The stream is complete but the data set inside it stops mid-element.
        let cut = deflate(&w.out[..w.out.len() - 2]);
        assert_eq!(scan_all_ways(DEFLATED_TS, &cut), Err(ScanError::Truncated));
    }

    #[test]
    fn missing_and_empty_attributes() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let mut w = W::new(ts);
            w.elem(SOP_CLASS_UID, b"UI", b"1.2\0")
                .elem(PATIENT_ID, b"LO", b"")
                .elem(STUDY_INSTANCE_UID, b"UI", b"    ")
                .elem(0x0028_0010, b"US", &[0, 1]);
            let attrs = scan_all_ways(ts, &w.out).unwrap();
            assert_eq!(
                attrs,
                SortAttributes {
                    sop_class_uid: Some(b"1.2".to_vec()),
                    patient_id: Some(Vec::new()),
                    study_instance_uid: Some(Vec::new()),
                    ..SortAttributes::default()
                },
                "{ts}"
            );
        }
        assert_eq!(
            scan_all_ways(EXPLICIT_LE_TS, &[]),
            Ok(SortAttributes::default())
        );
    }

    #[test]
    fn padding_removed() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SOP_CLASS_UID, b"UI", b" 1.2\0\0")
            .elem(PATIENT_ID, b"LO", b"   A B \0")
            .elem(SERIES_INSTANCE_UID, b"UI", b"3.4 \0");
        let attrs = scan_all_ways(EXPLICIT_LE_TS, &w.out).unwrap();
        // Leading spaces are significant except in PatientID (LO).
        assert_eq!(attrs.sop_class_uid, Some(b" 1.2".to_vec()));
        assert_eq!(attrs.patient_id, Some(b"A B".to_vec()));
        assert_eq!(attrs.series_instance_uid, Some(b"3.4".to_vec()));
    }

    #[test]
    fn nested_attributes_ignored() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let mut w = W::new(ts);
            w.head(0x0008_0006, b"SQ", UNDEFINED)
                .item(ITEM, UNDEFINED)
                .elem(SOP_INSTANCE_UID, b"UI", b"9.9\0")
                .item(ITEM_DELIMITER, 0)
                .item(SEQUENCE_DELIMITER, 0)
                .elem(SOP_CLASS_UID, b"UI", b"1.2\0");
            let attrs = scan_all_ways(ts, &w.out).unwrap();
            assert_eq!(attrs.sop_class_uid, Some(b"1.2".to_vec()), "{ts}");
            assert_eq!(attrs.sop_instance_uid, None, "{ts}");
        }
    }

    #[test]
    fn done_after_series_and_later_feeds_ignored() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let data = sample(ts);
            let series = W::new(ts)
                .elem(SERIES_INSTANCE_UID, b"UI", b"1.2.3.7 ")
                .out
                .clone();
            let end = data
                .windows(series.len())
                .position(|w| w == series)
                .unwrap()
                + series.len();
            let mut scanner = Scanner::new(Encoding::for_transfer_syntax(ts));
            scanner.feed(&data[..end - 1]).unwrap();
            assert!(!scanner.is_done());
            scanner.feed(&data[end - 1..end]).unwrap();
            assert!(scanner.is_done());
            scanner.feed(&[0xFF; 100]).unwrap();
            scanner.feed(b"garbage").unwrap();
            assert_eq!(scanner.finish(), Ok(sample_attrs()));
        }
        // A larger top-level tag also ends the scan, even without (0020,000E).
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0")
            .elem(0x0028_0010, b"US", &[0, 1]);
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(EXPLICIT_LE_TS));
        scanner.feed(&w.out).unwrap();
        assert!(scanner.is_done());
        scanner.feed(&[0xFF; 3]).unwrap();
        assert_eq!(
            scanner.finish().unwrap().sop_class_uid,
            Some(b"1.2".to_vec())
        );
    }

    #[test]
    fn truncated_inputs() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let mut w = W::new(ts);
            w.elem(SOP_CLASS_UID, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
            let boundary = w.out.len();
            w.elem(PATIENT_ID, b"LO", b"PATIENT1");
            // Cut at the element boundary: fine, with what was found.
            let found = scan_all_ways(ts, &w.out[..boundary]).unwrap();
            assert_eq!(
                found.sop_class_uid,
                Some(b"1.2.840.10008.5.1.4.1.1.2".to_vec())
            );
            // Cut in a header, in a captured value.
            for cut in [boundary + 3, boundary + 7, boundary + 10, 5, 20] {
                assert_eq!(
                    scan_all_ways(ts, &w.out[..cut]),
                    Err(ScanError::Truncated),
                    "{ts} cut {cut}"
                );
            }
            // Cut in a skipped value and inside an open sequence.
            let mut skipped = W::new(ts);
            skipped.head(0x0008_0005, b"OB", 10).raw(&[0; 4]);
            assert_eq!(scan_all_ways(ts, &skipped.out), Err(ScanError::Truncated));
            let mut open = W::new(ts);
            open.head(0x0008_0006, b"SQ", UNDEFINED)
                .item(ITEM, UNDEFINED)
                .elem(0x0008_0100, b"SH", b"CODE")
                .item(ITEM_DELIMITER, 0);
            assert_eq!(scan_all_ways(ts, &open.out), Err(ScanError::Truncated));
        }
    }

    #[test]
    fn every_prefix_is_ok_or_truncated() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let data = sample(ts);
            for cut in 0..=data.len() {
                match scan(ts, &data[..cut]) {
                    Ok(_) | Err(ScanError::Truncated) => {}
                    other => panic!("{ts} cut {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn long_value_capped() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let mut w = W::new(ts);
            w.elem(PATIENT_ID, b"LO", &vec![b'A'; 20 * 1024]).elem(
                STUDY_INSTANCE_UID,
                b"UI",
                b"1.2\0",
            );
            let attrs = scan_all_ways(ts, &w.out).unwrap();
            assert_eq!(attrs.patient_id, Some(vec![b'A'; MAX_VALUE_LEN]), "{ts}");
            assert_eq!(attrs.study_instance_uid, Some(b"1.2".to_vec()), "{ts}");
        }
    }

    fn nested(ts: &str, depth: usize) -> Vec<u8> {
        let mut w = W::new(ts);
        for _ in 0..depth {
            w.head(0x0008_0006, b"SQ", UNDEFINED).item(ITEM, UNDEFINED);
        }
        for _ in 0..depth {
            w.item(ITEM_DELIMITER, 0).item(SEQUENCE_DELIMITER, 0);
        }
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0");
        w.out
    }

    #[test]
    fn nesting_depth_limit() {
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            let attrs = scan_all_ways(ts, &nested(ts, MAX_DEPTH)).unwrap();
            assert_eq!(attrs.sop_class_uid, Some(b"1.2".to_vec()));
            assert_eq!(
                scan_all_ways(ts, &nested(ts, MAX_DEPTH + 1)),
                Err(ScanError::TooDeep)
            );
        }
    }

    #[test]
    fn malformed_inputs() {
        let cases: [(&str, Vec<u8>); 6] = [
            (
                EXPLICIT_LE_TS,
                W::new(EXPLICIT_LE_TS)
                    .elem(0x0008_0005, b"cs", b"AB")
                    .out
                    .clone(),
            ),
            (
                EXPLICIT_BE_TS,
                W::new(EXPLICIT_BE_TS)
                    .elem(0x0008_0005, b"\0\0", b"")
                    .out
                    .clone(),
            ),
            (
                EXPLICIT_LE_TS,
                W::new(EXPLICIT_LE_TS).item(ITEM, 0).out.clone(),
            ),
            (
                IMPLICIT_LE_TS,
                W::new(IMPLICIT_LE_TS)
                    .item(SEQUENCE_DELIMITER, 0)
                    .out
                    .clone(),
            ),
            (
                EXPLICIT_LE_TS,
                W::new(EXPLICIT_LE_TS)
                    .head(0x0008_0005, b"UT", UNDEFINED)
                    .out
                    .clone(),
            ),
            (
                EXPLICIT_LE_TS,
                W::new(EXPLICIT_LE_TS)
                    .head(0x0008_0006, b"SQ", UNDEFINED)
                    .elem(0x0008_0100, b"SH", b"CODE")
                    .out
                    .clone(),
            ),
        ];
        for (i, (ts, data)) in cases.iter().enumerate() {
            assert!(
                matches!(scan_all_ways(ts, data), Err(ScanError::Malformed(_))),
                "case {i}"
            );
        }
        // After an error, feeds are no-ops and finish reports the error.
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(EXPLICIT_LE_TS));
        assert!(scanner.feed(&cases[0].1).is_err());
        assert_eq!(scanner.feed(&sample(EXPLICIT_LE_TS)), Ok(()));
        assert!(!scanner.is_done());
        assert_eq!(scanner.finish(), Err(ScanError::Malformed("invalid VR")));
    }

    #[test]
    fn errors_display() {
        let errors = [
            ScanError::Truncated,
            ScanError::Malformed("x"),
            ScanError::TooDeep,
            ScanError::Deflate("y".into()),
        ];
        for e in errors {
            let boxed: Box<dyn std::error::Error> = Box::new(e);
            assert!(!boxed.to_string().is_empty());
        }
    }

    /// Every truncation and single-byte mutation of a small data set: no panic, and the
    /// outcome never depends on how the bytes were split.
    #[test]
    fn mutations_never_panic() {
        let mut inputs = Vec::new();
        for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
            inputs.push((ts, sample(ts)));
        }
        inputs.push((DEFLATED_TS, deflate(&sample(EXPLICIT_LE_TS))));
        for (ts, data) in &inputs {
            for cut in 0..data.len() {
                let _ = scan_split(ts, &data[..cut], || 3);
            }
            for i in 0..data.len() {
                let b = data[i];
                for v in [0x00, 0xFF, 0xFE, 0xE0, 0xDD, b ^ 0x01, b ^ 0x80] {
                    let mut mutated = data.clone();
                    mutated[i] = v;
                    let whole = scan(ts, &mutated);
                    let mut lcg = Lcg(i as u64);
                    assert_eq!(
                        scan_split(ts, &mutated, || lcg.next_len()),
                        whole,
                        "{ts} byte {i} = {v:#x}"
                    );
                }
            }
        }
    }
}
