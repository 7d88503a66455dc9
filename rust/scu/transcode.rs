//! Explicit VR Little Endian to Implicit VR Little Endian, streamed: the fallback when a peer
//! accepts a SOP class only in the default transfer syntax every peer supports (PS3.5 §10.1).
//! Values are copied unchanged (both syntaxes are little endian); only element headers change
//! (PS3.5 §7.1.2 to §7.1.3). Dropping VRs shrinks what a sequence or item holds, so those of
//! defined length become undefined length, closed by delimitation items (PS3.5 §7.5).

use std::io::{self, Read};

use crate::vr;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: u16 = 0xE000;
const ITEM_DELIMITATION: u16 = 0xE00D;
const SEQUENCE_DELIMITATION: u16 = 0xE0DD;
/// Deepest nesting of sequences and items we follow; real data sets stay far below.
const MAX_DEPTH: usize = 128;

/// A sequence or item being converted.
struct Frame {
    /// Input offset where it ends, when of defined length (its delimiter is emitted there).
    end: Option<u64>,
    /// Delimitation item closing it in the output, for those of defined length.
    delimiter: u16,
    /// Contents are already implicit VR: a sequence of VR UN and undefined length
    /// (PS3.5 §6.2.2), copied as it is.
    implicit: bool,
}

/// Reads an Explicit VR Little Endian data set of `length` bytes from `input` and yields
/// it in Implicit VR Little Endian. Errors of kind `InvalidData` say why it cannot be converted.
pub struct ToImplicit<R> {
    input: R,
    /// Input bytes consumed, and the input's length.
    position: u64,
    length: u64,
    /// Converted headers and delimiters not yet read out.
    pending: Vec<u8>,
    pending_at: usize,
    /// Value bytes to copy unchanged before the next header.
    raw: u64,
    frames: Vec<Frame>,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot convert to Implicit VR Little Endian: {why}"),
    )
}

fn delimiter(element: u16) -> [u8; 8] {
    let mut item = [0u8; 8];
    item[..2].copy_from_slice(&0xFFFEu16.to_le_bytes());
    item[2..4].copy_from_slice(&element.to_le_bytes());
    item
}

impl<R: Read> ToImplicit<R> {
    pub fn new(input: R, length: u64) -> ToImplicit<R> {
        ToImplicit {
            input,
            position: 0,
            length,
            pending: Vec::with_capacity(64),
            pending_at: 0,
            raw: 0,
            frames: Vec::new(),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.position + buf.len() as u64 > self.length {
            return Err(invalid("data set truncated"));
        }
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => invalid("data set truncated"),
            _ => e,
        })?;
        self.position += buf.len() as u64;
        Ok(())
    }

    fn push(&mut self, end: Option<u32>, delimiter: u16, implicit: bool) -> io::Result<()> {
        if self.frames.len() == MAX_DEPTH {
            return Err(invalid("sequences nested too deeply"));
        }
        let end = end.map(|length| self.position + u64::from(length));
        if end.is_some_and(|end| end > self.length) {
            return Err(invalid(
                "a sequence or item runs past the end of the data set",
            ));
        }
        self.frames.push(Frame {
            end,
            delimiter,
            implicit,
        });
        Ok(())
    }

    /// Convert the next element header (closing the containers that end before it) into
    /// `pending`; false at the end of the data set.
    fn next_header(&mut self) -> io::Result<bool> {
        while let Some(frame) = self.frames.last() {
            match frame.end {
                Some(end) if end == self.position => {
                    self.pending.extend_from_slice(&delimiter(frame.delimiter));
                    self.frames.pop();
                }
                Some(end) if end < self.position => {
                    return Err(invalid(
                        "an element runs past the end of its sequence or item",
                    ))
                }
                _ => break,
            }
        }
        if !self.pending.is_empty() {
            return Ok(true);
        }
        if self.position == self.length {
            if self.frames.is_empty() {
                return Ok(false);
            }
            return Err(invalid("data set ends inside a sequence"));
        }
        let mut head = [0u8; 8];
        self.take(&mut head)?;
        let group = u16::from_le_bytes([head[0], head[1]]);
        let element = u16::from_le_bytes([head[2], head[3]]);
        let implicit = self.frames.last().is_some_and(|f| f.implicit);
        // Items and delimiters have no VR in either syntax (PS3.5 §7.5).
        if implicit || group == 0xFFFE {
            let length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            self.pending.extend_from_slice(&head[..4]);
            match (group, element, length) {
                (0xFFFE, ITEM_DELIMITATION | SEQUENCE_DELIMITATION, _) => {
                    if self.frames.last().is_none_or(|f| f.end.is_some()) {
                        return Err(invalid("a delimitation item closes nothing"));
                    }
                    self.frames.pop();
                }
                (0xFFFE, ITEM, UNDEFINED) => self.push(None, ITEM_DELIMITATION, implicit)?,
                (0xFFFE, ITEM, length) if !implicit => {
                    self.push(Some(length), ITEM_DELIMITATION, false)?;
                    self.pending.extend_from_slice(&UNDEFINED.to_le_bytes());
                    return Ok(true);
                }
                (0xFFFE, ITEM, _) => {}
                (0xFFFE, ..) => return Err(invalid("unknown item tag")),
                // Inside implicit VR contents, undefined length means a sequence.
                (_, _, UNDEFINED) => self.push(None, SEQUENCE_DELIMITATION, true)?,
                _ => {}
            }
            self.pending.extend_from_slice(&head[4..]);
            if length != UNDEFINED && !(group == 0xFFFE && element != ITEM) {
                self.raw = u64::from(length);
            }
            return Ok(true);
        }
        let vr = [head[4], head[5]];
        let length = if vr::has_long_length(&vr) == Some(true) {
            let mut long = [0u8; 4];
            self.take(&mut long)?;
            u32::from_le_bytes(long)
        } else {
            u32::from(u16::from_le_bytes([head[6], head[7]]))
        };
        self.pending.extend_from_slice(&head[..4]);
        match (&vr, length) {
            (b"SQ", UNDEFINED) => self.push(None, SEQUENCE_DELIMITATION, false)?,
            (b"SQ", _) => self.push(Some(length), SEQUENCE_DELIMITATION, false)?,
            (b"UN", UNDEFINED) => self.push(None, SEQUENCE_DELIMITATION, true)?,
            (_, UNDEFINED) => {
                return Err(invalid(
                    "an element of undefined length that is no sequence (encapsulated pixel data)",
                ))
            }
            _ => self.raw = u64::from(length),
        }
        let length = if &vr == b"SQ" { UNDEFINED } else { length };
        self.pending.extend_from_slice(&length.to_le_bytes());
        Ok(true)
    }
}

impl<R: Read> Read for ToImplicit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pending_at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pending_at);
                buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
                self.pending_at += n;
                return Ok(n);
            }
            if self.raw > 0 {
                if self.position + self.raw > self.length {
                    return Err(invalid("a value runs past the end of the data set"));
                }
                let n = usize::try_from(self.raw).map_or(buf.len(), |raw| raw.min(buf.len()));
                let got = self.input.read(&mut buf[..n])?;
                if got == 0 && n > 0 {
                    return Err(invalid("data set truncated"));
                }
                self.raw -= got as u64;
                self.position += got as u64;
                return Ok(got);
            }
            self.pending.clear();
            self.pending_at = 0;
            if !self.next_header()? {
                return Ok(0);
            }
        }
    }
}

/// The converted length of an Explicit VR Little Endian data set (a first pass over it).
pub fn converted_length(input: impl Read, length: u64) -> io::Result<u64> {
    io::copy(&mut ToImplicit::new(input, length), &mut io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if vr::has_long_length(vr) == Some(true) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn implicit(tag: (u16, u16), length: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn convert(data_set: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Tiny reads exercise every resumption point.
        let mut reader = ToImplicit::new(data_set, data_set.len() as u64);
        let mut chunk = [0u8; 3];
        loop {
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(
            converted_length(data_set, data_set.len() as u64)?,
            out.len() as u64
        );
        Ok(out)
    }

    #[test]
    fn headers_lose_their_vr_and_sequences_get_delimiters() {
        let item_value = [
            explicit((0x0008, 0x1150), b"UI", b"1.2\0"),
            explicit((0x0011, 0x1001), b"OB", &[1, 2]),
        ]
        .concat();
        let item = [
            &[0xFE, 0xFF, 0x00, 0xE0][..],
            &(item_value.len() as u32).to_le_bytes(),
            &item_value,
        ]
        .concat();
        let undefined_item = [
            &[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF][..],
            &explicit((0x0008, 0x0100), b"SH", b"AB"),
            &[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0],
        ]
        .concat();
        let items = [item, undefined_item].concat();
        let data_set = [
            explicit((0x0008, 0x0016), b"UI", b"1.2.3\0"),
            explicit((0x0008, 0x1140), b"SQ", &items),
            explicit((0x7FE0, 0x0010), b"OW", &[9; 6]),
        ]
        .concat();
        let expected = [
            implicit((0x0008, 0x0016), 6, b"1.2.3\0"),
            implicit((0x0008, 0x1140), UNDEFINED, &[]),
            implicit((0xFFFE, 0xE000), UNDEFINED, &[]),
            implicit((0x0008, 0x1150), 4, b"1.2\0"),
            implicit((0x0011, 0x1001), 2, &[1, 2]),
            implicit((0xFFFE, 0xE00D), 0, &[]),
            implicit((0xFFFE, 0xE000), UNDEFINED, &[]),
            implicit((0x0008, 0x0100), 2, b"AB"),
            implicit((0xFFFE, 0xE00D), 0, &[]),
            implicit((0xFFFE, 0xE0DD), 0, &[]),
            implicit((0x7FE0, 0x0010), 6, &[9; 6]),
        ]
        .concat();
        assert_eq!(convert(&data_set).unwrap(), expected);
    }

    #[test]
    fn un_of_undefined_length_is_copied_as_implicit() {
        // PS3.5 §6.2.2: its contents are already Implicit VR Little Endian.
        let contents = [
            implicit((0xFFFE, 0xE000), UNDEFINED, &[]),
            implicit((0x0009, 0x1010), 2, b"XY"),
            implicit((0x0009, 0x1020), UNDEFINED, &[]),
            implicit((0xFFFE, 0xE000), 0, &[]),
            implicit((0xFFFE, 0xE0DD), 0, &[]),
            implicit((0xFFFE, 0xE00D), 0, &[]),
            implicit((0xFFFE, 0xE0DD), 0, &[]),
        ]
        .concat();
        let mut data_set = vec![
            0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        data_set.extend_from_slice(&contents);
        data_set.extend(explicit((0x0010, 0x0020), b"LO", b"ID"));
        let expected = [
            implicit((0x0009, 0x1010), UNDEFINED, &[]),
            contents,
            implicit((0x0010, 0x0020), 2, b"ID"),
        ]
        .concat();
        assert_eq!(convert(&data_set).unwrap(), expected);
    }

    #[test]
    fn what_cannot_be_converted() {
        let refused = |data_set: &[u8]| {
            let e = convert(data_set).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            e.to_string()
        };
        let pixels = [
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        assert!(refused(&pixels).contains("encapsulated pixel data"));
        let cut = explicit((0x0010, 0x0020), b"LO", b"IDENT");
        assert!(refused(&cut[..cut.len() - 1]).contains("past the end"));
        assert!(refused(&cut[..5]).contains("truncated"));
        let open = implicit((0x0008, 0x1140), 0, &[]);
        let open = [&open[..4], b"SQ", &[0, 0, 0xFF, 0xFF, 0xFF, 0xFF]].concat();
        assert!(refused(&open).contains("ends inside a sequence"));
        let stray = implicit((0xFFFE, 0xE0DD), 0, &[]);
        assert!(refused(&stray).contains("closes nothing"));
        // An item claiming more than its sequence holds.
        let item = implicit(
            (0xFFFE, 0xE000),
            10,
            &explicit((0x0008, 0x0100), b"SH", b"AB"),
        );
        let mut sequence = explicit((0x0008, 0x1140), b"SQ", &item);
        sequence[8..12].copy_from_slice(&2u32.to_le_bytes());
        let why = refused(&sequence);
        assert!(
            why.contains("runs past the end of its sequence or item"),
            "{why}"
        );
    }
}
