//! Converting a native data set to another native transfer syntax while it streams: the
//! fallback for a peer that accepts a SOP class neither in a file's own transfer syntax nor in
//! the one it is proposed in next, down to the default syntax every peer supports (PS3.5
//! §10.1).
//!
//! From Explicit VR Little Endian, Explicit VR Big Endian or Deflated Explicit VR Little Endian
//! (inflated as it is read, PS3.5 §A.5) to Explicit or Implicit VR Little Endian. Values are
//! kept: big endian ones are byte-swapped in units of their VR's number size (PS3.5 §7.3), the
//! others copied. Headers are re-encoded (PS3.5 §7.1.2, §7.1.3). Dropping VRs shrinks what a
//! sequence or item holds, so to implicit VR those of defined length become undefined length,
//! closed by delimitation items (PS3.5 §7.5); to explicit VR every length stays as it was.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use flate2::read::DeflateDecoder;

use crate::scan::Encoding;
use crate::transfer_syntax::{
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
};
use crate::vr;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: u16 = 0xE000;
const ITEM_DELIMITATION: u16 = 0xE00D;
const SEQUENCE_DELIMITATION: u16 = 0xE0DD;
/// Deepest nesting of sequences and items we follow; real data sets stay far below.
const MAX_DEPTH: usize = 128;

/// The transfer syntaxes a data set in `transfer_syntax` can be converted to, in our order of
/// preference: the uncompressed little endian ones that keep the most (explicit VR first).
pub fn fallbacks(transfer_syntax: &str) -> &'static [&'static str] {
    match transfer_syntax {
        EXPLICIT_VR_LITTLE_ENDIAN => &[IMPLICIT_VR_LITTLE_ENDIAN],
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN | EXPLICIT_VR_BIG_ENDIAN => {
            &[EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
        }
        _ => &[],
    }
}

/// The data set that `file` holds from its current position, `length` bytes in `from`, as a
/// reader yielding it in `to` (one of `fallbacks(from)`), and its converted length. The length
/// takes a first pass over the data (the last fragment's flag depends on it), which also
/// refuses what cannot be converted before a byte is sent. Errors of kind `InvalidData` say
/// why it cannot be converted.
pub fn convert(
    mut file: File,
    length: u64,
    from: &str,
    to: &str,
) -> io::Result<(Box<dyn Read>, u64)> {
    if !fallbacks(from).contains(&to) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot convert transfer syntax {from} to {to}"),
        ));
    }
    let start = file.stream_position()?;
    let converted = io::copy(
        &mut transcoder(&mut file, length, from, to),
        &mut io::sink(),
    )?;
    file.seek(SeekFrom::Start(start))?;
    Ok((Box::new(transcoder(file, length, from, to)), converted))
}

/// The converting reader over `length` bytes of `input` (the fuzz target's entry too).
pub(crate) fn transcoder<'a>(
    input: impl Read + 'a,
    length: u64,
    from: &str,
    to: &str,
) -> Transcoder<Box<dyn Read + 'a>> {
    let encoding = Encoding::for_transfer_syntax(from);
    let input = io::BufReader::with_capacity(64 * 1024, input.take(length));
    if encoding.deflated {
        // Raw deflate (RFC 1951, PS3.5 §A.5); the inflated length is known only at its end.
        let inflated = Inflated(DeflateDecoder::new(input));
        Transcoder::new(Box::new(inflated), None, false, to)
    } else {
        Transcoder::new(Box::new(input), Some(length), encoding.big_endian, to)
    }
}

/// The inflater, its errors saying that the deflated data set is at fault.
struct Inflated<R>(DeflateDecoder<R>);

impl<R: io::BufRead> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the deflated data set is corrupt: {e}"),
            ),
            io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::InvalidData,
                "the deflated data set is truncated",
            ),
            _ => e,
        })
    }
}

/// Bytes in the unit a big endian value of this VR is swapped by (PS3.5 §7.3): its numbers'
/// size; AT is a pair of 16-bit numbers. Text, OB and UN (whose structure is unknown) are bytes.
fn swap_unit(vr: &[u8; 2]) -> usize {
    match vr {
        b"AT" | b"OW" | b"SS" | b"US" => 2,
        b"FL" | b"OF" | b"OL" | b"SL" | b"UL" => 4,
        b"FD" | b"OD" | b"OV" | b"SV" | b"UV" => 8,
        _ => 1,
    }
}

/// A sequence or item being converted.
struct Frame {
    /// Input offset where it ends, when of defined length.
    end: Option<u64>,
    /// Delimitation item closing it in implicit VR output, for those of defined length.
    delimiter: u16,
    /// Contents are already Implicit VR Little Endian: a sequence of VR UN and undefined
    /// length (PS3.5 §6.2.2), copied as it is.
    implicit: bool,
}

/// Reads an explicit VR data set (little or big endian) from `input` and yields it in
/// Explicit or Implicit VR Little Endian.
pub struct Transcoder<R> {
    input: R,
    big_endian: bool,
    to_implicit: bool,
    /// The target's name, for errors.
    target: &'static str,
    /// Input bytes consumed, and the input's length when known (else it ends at end of input).
    position: u64,
    length: Option<u64>,
    /// Converted headers, delimiters and swapped units not yet read out.
    pending: Vec<u8>,
    pending_at: usize,
    /// Value bytes to copy before the next header, and the unit they are swapped by.
    raw: u64,
    unit: usize,
    frames: Vec<Frame>,
}

fn u16_in(bytes: [u8; 2], big_endian: bool) -> u16 {
    match big_endian {
        true => u16::from_be_bytes(bytes),
        false => u16::from_le_bytes(bytes),
    }
}

fn u32_in(bytes: [u8; 4], big_endian: bool) -> u32 {
    match big_endian {
        true => u32::from_be_bytes(bytes),
        false => u32::from_le_bytes(bytes),
    }
}

fn delimiter(element: u16) -> [u8; 8] {
    let mut item = [0u8; 8];
    item[..2].copy_from_slice(&0xFFFEu16.to_le_bytes());
    item[2..4].copy_from_slice(&element.to_le_bytes());
    item
}

impl<R: Read> Transcoder<R> {
    pub fn new(input: R, length: Option<u64>, big_endian: bool, to: &str) -> Transcoder<R> {
        let to_implicit = to == IMPLICIT_VR_LITTLE_ENDIAN;
        Transcoder {
            input,
            big_endian,
            to_implicit,
            target: if to_implicit {
                "Implicit VR Little Endian"
            } else {
                "Explicit VR Little Endian"
            },
            position: 0,
            length,
            pending: Vec::with_capacity(64),
            pending_at: 0,
            raw: 0,
            unit: 1,
            frames: Vec::new(),
        }
    }

    fn invalid(&self, why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot convert to {}: {why}", self.target),
        )
    }

    /// Read as much of `buf` as the data set still holds; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.length {
            Some(length) => buf
                .len()
                .min(usize::try_from(length - self.position).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let mut filled = 0;
        while filled < want {
            match self.input.read(&mut buf[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.position += filled as u64;
        Ok(filled)
    }

    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(self.invalid("data set truncated"));
        }
        Ok(())
    }

    fn push(&mut self, end: Option<u32>, delimiter: u16, implicit: bool) -> io::Result<()> {
        if self.frames.len() == MAX_DEPTH {
            return Err(self.invalid("sequences nested too deeply"));
        }
        let end = end.map(|length| self.position + u64::from(length));
        if end.is_some_and(|end| self.length.is_some_and(|length| end > length)) {
            return Err(self.invalid("a sequence or item runs past the end of the data set"));
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
                    if self.to_implicit {
                        self.pending.extend_from_slice(&delimiter(frame.delimiter));
                    }
                    self.frames.pop();
                }
                Some(end) if end < self.position => {
                    return Err(self.invalid("an element runs past the end of its sequence or item"))
                }
                _ => break,
            }
        }
        if !self.pending.is_empty() {
            return Ok(true);
        }
        let mut head = [0u8; 8];
        match self.fill(&mut head)? {
            0 if self.frames.is_empty() => return Ok(false),
            0 => return Err(self.invalid("data set ends inside a sequence")),
            8 => {}
            _ => return Err(self.invalid("data set truncated")),
        }
        let implicit = self.frames.last().is_some_and(|f| f.implicit);
        // Implicit VR contents of a UN sequence are little endian whatever the syntax.
        let big = self.big_endian && !implicit;
        let group = u16_in([head[0], head[1]], big);
        let element = u16_in([head[2], head[3]], big);
        self.pending.extend_from_slice(&group.to_le_bytes());
        self.pending.extend_from_slice(&element.to_le_bytes());
        self.unit = 1;
        // Items only in sequences, elements only in items or at the top, each delimiter
        // closing its kind (PS3.5 §7.5), as the SCP's scanner requires: it reads the items
        // converted to undefined length that it would have passed over whole.
        let within = self.frames.last().map(|f| (f.delimiter, f.end.is_none()));
        let misplaced = match (group, element, within) {
            (0xFFFE, ITEM, Some((SEQUENCE_DELIMITATION, _))) => None,
            (0xFFFE, ITEM, _) => Some("an item outside a sequence"),
            (0xFFFE, SEQUENCE_DELIMITATION, Some((SEQUENCE_DELIMITATION, true))) => None,
            (0xFFFE, ITEM_DELIMITATION, Some((ITEM_DELIMITATION, true))) => None,
            (0xFFFE, ITEM_DELIMITATION | SEQUENCE_DELIMITATION, _) => {
                Some("a delimitation item closes nothing")
            }
            (0xFFFE, ..) => Some("unknown item tag"),
            (_, _, None | Some((ITEM_DELIMITATION, _))) => None,
            _ => Some("an element outside an item"),
        };
        if let Some(why) = misplaced {
            return Err(self.invalid(why));
        }
        // Items and delimiters have no VR in any syntax (PS3.5 §7.5).
        if implicit || group == 0xFFFE {
            let length = u32_in([head[4], head[5], head[6], head[7]], big);
            match (group, element, length) {
                (0xFFFE, ITEM_DELIMITATION | SEQUENCE_DELIMITATION, _) => {
                    self.frames.pop();
                }
                (0xFFFE, ITEM, UNDEFINED) => self.push(None, ITEM_DELIMITATION, implicit)?,
                (0xFFFE, ITEM, length) if !implicit => {
                    self.push(Some(length), ITEM_DELIMITATION, false)?;
                    let length = if self.to_implicit { UNDEFINED } else { length };
                    self.pending.extend_from_slice(&length.to_le_bytes());
                    return Ok(true);
                }
                // A defined-length item of implicit VR contents is copied as it is.
                (0xFFFE, ..) => {}
                // Inside implicit VR contents, undefined length means a sequence.
                (_, _, UNDEFINED) => self.push(None, SEQUENCE_DELIMITATION, true)?,
                _ => {}
            }
            self.pending.extend_from_slice(&length.to_le_bytes());
            if length != UNDEFINED && !(group == 0xFFFE && element != ITEM) {
                self.raw = u64::from(length);
            }
            return Ok(true);
        }
        let vr = [head[4], head[5]];
        let Some(long) = vr::has_long_length(&vr) else {
            return Err(self.invalid("an element with an unknown VR"));
        };
        let length = if long {
            let mut bytes = [0u8; 4];
            self.take(&mut bytes)?;
            u32_in(bytes, big)
        } else {
            u32::from(u16_in([head[6], head[7]], big))
        };
        if self.to_implicit {
            let length = if &vr == b"SQ" { UNDEFINED } else { length };
            self.pending.extend_from_slice(&length.to_le_bytes());
        } else if long {
            self.pending.extend_from_slice(&[vr[0], vr[1], 0, 0]);
            self.pending.extend_from_slice(&length.to_le_bytes());
        } else {
            self.pending.extend_from_slice(&vr);
            self.pending
                .extend_from_slice(&(length as u16).to_le_bytes());
        }
        match (&vr, length) {
            (b"SQ", UNDEFINED) => self.push(None, SEQUENCE_DELIMITATION, false)?,
            (b"SQ", _) => self.push(Some(length), SEQUENCE_DELIMITATION, false)?,
            (b"UN", UNDEFINED) => self.push(None, SEQUENCE_DELIMITATION, true)?,
            (_, UNDEFINED) => {
                return Err(self.invalid(
                    "an element of undefined length that is no sequence (encapsulated pixel data)",
                ))
            }
            _ => {
                let unit = if big { swap_unit(&vr) } else { 1 };
                if !(length as usize).is_multiple_of(unit) {
                    let vr = String::from_utf8_lossy(&vr);
                    return Err(self.invalid(&format!(
                        "a value of VR {vr} whose length {length} is not a multiple of {unit}"
                    )));
                }
                self.raw = u64::from(length);
                self.unit = unit;
            }
        }
        Ok(true)
    }

    /// Value bytes into `buf`, swapped when big endian; at least one byte.
    fn value(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self
            .length
            .is_some_and(|length| self.position + self.raw > length)
        {
            return Err(self.invalid("a value runs past the end of the data set"));
        }
        let n = usize::try_from(self.raw).map_or(buf.len(), |raw| raw.min(buf.len()));
        if self.unit == 1 {
            let got = self.fill(&mut buf[..n])?;
            if got == 0 {
                return Err(self.invalid("data set truncated"));
            }
            self.raw -= got as u64;
            return Ok(got);
        }
        let unit = self.unit;
        let whole = n - n % unit;
        if whole == 0 {
            // `buf` is smaller than one unit: it goes out through `pending`.
            let mut one = [0u8; 8];
            self.take(&mut one[..unit])?;
            one[..unit].reverse();
            self.raw -= unit as u64;
            self.pending.clear();
            self.pending.extend_from_slice(&one[..unit]);
            self.pending_at = 0;
            return Ok(0);
        }
        self.take(&mut buf[..whole])?;
        for number in buf[..whole].chunks_exact_mut(unit) {
            number.reverse();
        }
        self.raw -= whole as u64;
        Ok(whole)
    }
}

impl<R: Read> Read for Transcoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pending_at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pending_at);
                buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
                self.pending_at += n;
                return Ok(n);
            }
            if self.raw > 0 {
                match self.value(buf)? {
                    0 => continue,
                    n => return Ok(n),
                }
            }
            self.pending.clear();
            self.pending_at = 0;
            if !self.next_header()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests;
