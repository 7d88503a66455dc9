//! Just enough of a Part 10 file to send it (PS3.10 §7.1): the SOP Class/Instance UIDs and the
//! transfer syntax from the file meta group, and where the data set begins. The group is read
//! element by element with every length bounded, so a huge or hostile file costs a few reads.

use crate::vr;
use std::io::{self, Read};

/// Preamble and `DICM` prefix.
const PREFIX_LEN: u64 = 132;
/// Bound on the whole file meta group; real ones are a few hundred bytes.
const MAX_META: u64 = 64 * 1024;
/// Bound on one value we keep (a UID is at most 64 characters, PS3.5 §9.1).
const MAX_KEPT_VALUE: u32 = 1024;

/// What the sender needs from a Part 10 file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10Header {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    /// Offset of the first data set byte: everything from here on goes on the wire unchanged.
    pub data_set_offset: u64,
}

fn not_dicom(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Fill `buf` as far as the input allows; returns the bytes read (short only at end of input).
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn uid(value: &[u8], name: &str) -> io::Result<String> {
    let text = vr::trim_padding(value);
    if !text.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return Err(not_dicom(format!("file meta {name} is not a UID")));
    }
    Ok(String::from_utf8_lossy(text).into_owned())
}

impl Part10Header {
    /// Read the preamble, `DICM` and the group 0002 elements (always Explicit VR Little
    /// Endian) from the start of a file. Errors of kind `InvalidData` mean "not a Part 10 file
    /// we can send", with the reason.
    pub fn read(input: &mut impl Read) -> io::Result<Part10Header> {
        let mut prefix = [0u8; PREFIX_LEN as usize];
        if read_up_to(input, &mut prefix)? < prefix.len() || &prefix[128..] != b"DICM" {
            return Err(not_dicom(
                "not a DICOM Part 10 file (no DICM prefix after a 128-byte preamble)",
            ));
        }
        let (mut sop_class, mut sop_instance, mut transfer_syntax) = (None, None, None);
        let mut offset = PREFIX_LEN;
        loop {
            let mut header = [0u8; 8];
            let got = read_up_to(input, &mut header)?;
            // The group ends at the first element of another group, or at the end of the file
            // (an empty data set).
            if got < 2 || u16::from_le_bytes([header[0], header[1]]) != 0x0002 {
                break;
            }
            if got < 8 {
                return Err(not_dicom("file meta group truncated"));
            }
            let element = u16::from_le_bytes([header[2], header[3]]);
            let vr = [header[4], header[5]];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                return Err(not_dicom(
                    "file meta group is not Explicit VR Little Endian",
                ));
            }
            let (length, header_len) = if vr::has_long_length(&vr) == Some(true) {
                let mut long = [0u8; 4];
                if read_up_to(input, &mut long)? < 4 {
                    return Err(not_dicom("file meta group truncated"));
                }
                (u32::from_le_bytes(long), 12)
            } else {
                (u32::from(u16::from_le_bytes([header[6], header[7]])), 8)
            };
            offset += header_len + u64::from(length);
            if offset - PREFIX_LEN > MAX_META {
                return Err(not_dicom("file meta group larger than 64 KiB"));
            }
            let slot = match element {
                0x0002 => Some((&mut sop_class, "Media Storage SOP Class UID")),
                0x0003 => Some((&mut sop_instance, "Media Storage SOP Instance UID")),
                0x0010 => Some((&mut transfer_syntax, "Transfer Syntax UID")),
                _ => None,
            };
            match slot {
                Some((slot, name)) if length <= MAX_KEPT_VALUE => {
                    let mut value = vec![0u8; length as usize];
                    if read_up_to(input, &mut value)? < value.len() {
                        return Err(not_dicom("file meta group truncated"));
                    }
                    *slot = Some(uid(&value, name)?);
                }
                Some((_, name)) => return Err(not_dicom(format!("file meta {name} too long"))),
                None => {
                    let skipped = io::copy(&mut input.take(u64::from(length)), &mut io::sink())?;
                    if skipped < u64::from(length) {
                        return Err(not_dicom("file meta group truncated"));
                    }
                }
            }
        }
        let required = |value: Option<String>, name: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| not_dicom(format!("file meta lacks the {name}")))
        };
        Ok(Part10Header {
            sop_class_uid: required(sop_class, "Media Storage SOP Class UID")?,
            sop_instance_uid: required(sop_instance, "Media Storage SOP Instance UID")?,
            transfer_syntax_uid: required(transfer_syntax, "Transfer Syntax UID")?,
            data_set_offset: offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_meta::FileMeta;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn file(data_set: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FileMeta {
            sop_class_uid: CT,
            sop_instance_uid: "1.2.3.4.5",
            transfer_syntax_uid: "1.2.840.10008.1.2.1",
            source_ae_title: "SRC",
        }
        .encode(&mut out);
        out.extend_from_slice(data_set);
        out
    }

    fn read(bytes: &[u8]) -> io::Result<Part10Header> {
        Part10Header::read(&mut &bytes[..])
    }

    #[test]
    fn header_of_our_own_files() {
        let data_set = [0x08, 0x00, 0x16, 0x00, b'U', b'I', 2, 0, b'1', 0];
        let bytes = file(&data_set);
        let header = read(&bytes).unwrap();
        assert_eq!(header.sop_class_uid, CT);
        assert_eq!(header.sop_instance_uid, "1.2.3.4.5");
        assert_eq!(header.transfer_syntax_uid, "1.2.840.10008.1.2.1");
        assert_eq!(
            header.data_set_offset as usize,
            bytes.len() - data_set.len()
        );
        // An empty data set ends the group at the end of the file.
        let empty = file(&[]);
        assert_eq!(read(&empty).unwrap().data_set_offset as usize, empty.len());
    }

    #[test]
    fn long_and_unknown_elements_are_skipped() {
        let mut bytes = file(&[]);
        // (0002,0102) Private Information OB, 32-bit length, appended to the group.
        bytes.extend_from_slice(&[0x02, 0, 0x02, 0x01, b'O', b'B', 0, 0, 5, 0, 0, 0]);
        bytes.extend_from_slice(b"abcde");
        let end = bytes.len();
        bytes.extend_from_slice(&[0x08, 0x00, 0x05, 0x00]);
        assert_eq!(read(&bytes).unwrap().data_set_offset as usize, end);
    }

    #[test]
    fn what_is_not_a_part10_file() {
        let invalid = |bytes: &[u8]| {
            let e = read(bytes).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            e.to_string()
        };
        assert!(invalid(b"hello").contains("no DICM prefix"));
        assert!(invalid(&[0u8; 200]).contains("no DICM prefix"));
        let good = file(&[]);
        // Cut inside an element of the group.
        for cut in [136, 140, 150, good.len() - 3] {
            assert!(invalid(&good[..cut]).contains("truncated"), "cut at {cut}");
        }
        // Cut between elements: the rest of the group is missing.
        assert!(invalid(&good[..144]).contains("lacks the Media Storage SOP Class UID"));
        // Implicit VR in the meta group.
        let mut implicit = good[..132].to_vec();
        implicit.extend_from_slice(&[2, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert!(invalid(&implicit).contains("not Explicit VR"));
        // A huge announced length is refused without reading (or allocating) it.
        let mut huge = good[..132].to_vec();
        huge.extend_from_slice(&[2, 0, 2, 1, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(invalid(&huge).contains("larger than 64 KiB"));
        let mut long_uid = good[..132].to_vec();
        long_uid.extend_from_slice(&[2, 0, 0x10, 0, b'U', b'I', 0x00, 0x20]);
        long_uid.extend(std::iter::repeat_n(b'1', 0x2000));
        assert!(invalid(&long_uid).contains("Transfer Syntax UID too long"));
        let mut not_uid = good[..132].to_vec();
        not_uid.extend_from_slice(&[2, 0, 0x10, 0, b'U', b'I', 4, 0, b'a', b'b', b'c', 0]);
        assert!(invalid(&not_uid).contains("Transfer Syntax UID is not a UID"));
    }
}
