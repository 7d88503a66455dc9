//! Just enough of a Part 10 file to send it (PS3.10 §7.1): the transfer syntax from the file
//! meta group, where the data set begins, and the data set's own SOP Class/Instance UIDs,
//! scanned as the SCP scans them (the peer checks the request against those, PS3.4 §B.2.3).
//! The group is read element by element with every length bounded, and the data set only as
//! far as the scanner needs, so a huge or hostile file costs a few reads.

use crate::scan::{Encoding, Scanner};
use crate::vr;
use std::io::{self, Read};

/// Preamble and `DICM` prefix.
const PREFIX_LEN: u64 = 132;
/// Bound on the whole file meta group; real ones are a few hundred bytes.
const MAX_META: u64 = 64 * 1024;
/// Bound on one value we keep (a UID is at most 64 characters, PS3.5 §9.1).
const MAX_KEPT_VALUE: u32 = 1024;
/// Bytes of the data set read at a time while scanning it.
const SCAN_CHUNK: usize = 4096;

/// What the sender needs from a Part 10 file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10Header {
    /// The data set's SOP Class UID (0008,0016) and SOP Instance UID (0008,0018); the file
    /// meta's Media Storage SOP Class/Instance UIDs when the data set has none.
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    /// Offset of the first data set byte: everything from here on goes on the wire unchanged.
    pub data_set_offset: u64,
    /// How the file meta's Media Storage UIDs differ from the data set's, in words.
    pub meta_mismatch: Option<String>,
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
        return Err(not_dicom(format!("{name} is not a UID")));
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
        let mut header = [0u8; 8];
        let data_set_start = loop {
            let got = read_up_to(input, &mut header)?;
            // The group ends at the first element of another group, or at the end of the file
            // (an empty data set).
            if got < 2 || u16::from_le_bytes([header[0], header[1]]) != 0x0002 {
                break &header[..got];
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
                    *slot = Some(uid(&value, &format!("file meta {name}"))?);
                }
                Some((_, name)) => return Err(not_dicom(format!("file meta {name} too long"))),
                None => {
                    let skipped = io::copy(&mut input.take(u64::from(length)), &mut io::sink())?;
                    if skipped < u64::from(length) {
                        return Err(not_dicom("file meta group truncated"));
                    }
                }
            }
        };
        let required = |value: Option<String>, name: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| not_dicom(format!("file meta lacks the {name}")))
        };
        let meta_class = required(sop_class, "Media Storage SOP Class UID")?;
        let meta_instance = required(sop_instance, "Media Storage SOP Instance UID")?;
        let transfer_syntax_uid = required(transfer_syntax, "Transfer Syntax UID")?;
        let (class, instance) = data_set_uids(input, data_set_start, &transfer_syntax_uid)?;
        let mut mismatch = Vec::new();
        for (what, meta, own) in [
            ("Class", &meta_class, &class),
            ("Instance", &meta_instance, &instance),
        ] {
            if let Some(own) = own.as_ref().filter(|own| *own != meta) {
                mismatch.push(format!(
                    "the file meta's Media Storage SOP {what} UID {meta} differs from the \
                     data set's SOP {what} UID {own}"
                ));
            }
        }
        Ok(Part10Header {
            sop_class_uid: class.unwrap_or(meta_class),
            sop_instance_uid: instance.unwrap_or(meta_instance),
            transfer_syntax_uid,
            data_set_offset: offset,
            meta_mismatch: (!mismatch.is_empty()).then(|| mismatch.join("; ")),
        })
    }
}

/// The data set's SOP Class and Instance UIDs: `start` (bytes already read) and what follows
/// in `input`, scanned until the scanner has passed them.
fn data_set_uids(
    input: &mut impl Read,
    start: &[u8],
    transfer_syntax: &str,
) -> io::Result<(Option<String>, Option<String>)> {
    let unparsable = |e| not_dicom(format!("cannot parse the data set: {e}"));
    let mut scanner = Scanner::new(Encoding::for_transfer_syntax(transfer_syntax));
    scanner.feed(start).map_err(unparsable)?;
    let mut chunk = [0u8; SCAN_CHUNK];
    while !scanner.is_done() {
        let got = read_up_to(input, &mut chunk)?;
        if got == 0 {
            break;
        }
        scanner.feed(&chunk[..got]).map_err(unparsable)?;
    }
    let attrs = scanner.finish().map_err(unparsable)?;
    // An empty value is as good as none: the file meta's UID is used then.
    let text = |value: Option<Vec<u8>>, name| {
        value
            .filter(|v| !v.is_empty())
            .map(|v| uid(&v, name))
            .transpose()
    };
    Ok((
        text(attrs.sop_class_uid, "data set SOP Class UID")?,
        text(attrs.sop_instance_uid, "data set SOP Instance UID")?,
    ))
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

    /// An Explicit VR Little Endian UI element.
    fn ui(element: u16, value: &str) -> Vec<u8> {
        let mut value = value.as_bytes().to_vec();
        if value.len() % 2 == 1 {
            value.push(0);
        }
        let mut out = vec![0x08, 0x00];
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(b"UI");
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(&value);
        out
    }

    #[test]
    fn header_of_our_own_files() {
        let data_set = [ui(0x0016, CT), ui(0x0018, "1.2.3.4.5")].concat();
        let bytes = file(&data_set);
        let header = read(&bytes).unwrap();
        assert_eq!(header.sop_class_uid, CT);
        assert_eq!(header.sop_instance_uid, "1.2.3.4.5");
        assert_eq!(header.transfer_syntax_uid, "1.2.840.10008.1.2.1");
        assert_eq!(header.meta_mismatch, None);
        assert_eq!(
            header.data_set_offset as usize,
            bytes.len() - data_set.len()
        );
        // An empty data set ends the group at the end of the file; the file meta's UIDs stand.
        let empty = file(&[]);
        let header = read(&empty).unwrap();
        assert_eq!(header.data_set_offset as usize, empty.len());
        assert_eq!(header.sop_instance_uid, "1.2.3.4.5");
        assert_eq!(header.meta_mismatch, None);
    }

    #[test]
    fn the_data_set_uids_win_over_the_file_meta() {
        // As in pydicom's rtdose.dcm: the file meta names another instance.
        let data_set = [
            ui(0x0016, "1.2.840.10008.5.1.4.1.1.481.2"),
            ui(0x0018, "1.2.3.9"),
        ];
        let header = read(&file(&data_set.concat())).unwrap();
        assert_eq!(header.sop_class_uid, "1.2.840.10008.5.1.4.1.1.481.2");
        assert_eq!(header.sop_instance_uid, "1.2.3.9");
        assert_eq!(
            header.meta_mismatch.as_deref(),
            Some(
                "the file meta's Media Storage SOP Class UID 1.2.840.10008.5.1.4.1.1.2 differs \
                 from the data set's SOP Class UID 1.2.840.10008.5.1.4.1.1.481.2; the file \
                 meta's Media Storage SOP Instance UID 1.2.3.4.5 differs from the data set's \
                 SOP Instance UID 1.2.3.9"
            )
        );
        // Only the instance differs; an empty data set UID counts as none.
        let data_set = [ui(0x0016, ""), ui(0x0018, "1.2.3.9")].concat();
        let header = read(&file(&data_set)).unwrap();
        assert_eq!(header.sop_class_uid, CT);
        let why = header.meta_mismatch.unwrap();
        assert!(
            why.starts_with("the file meta's Media Storage SOP Instance UID"),
            "{why}"
        );
    }

    #[test]
    fn a_data_set_the_scanner_cannot_parse_is_not_sendable() {
        let invalid = |data_set: &[u8]| {
            let e = read(&file(data_set)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            e.to_string()
        };
        let uid = ui(0x0018, "1.2.3.9");
        assert_eq!(
            invalid(&uid[..uid.len() - 2]),
            "cannot parse the data set: data set truncated"
        );
        assert!(invalid(&[0x08, 0, 0x18, 0, b'X', b'X', 0, 0]).contains("invalid VR"));
        assert_eq!(
            invalid(&ui(0x0018, "1.2.abc")),
            "data set SOP Instance UID is not a UID"
        );
    }

    #[test]
    fn long_and_unknown_elements_are_skipped() {
        let mut bytes = file(&[]);
        // (0002,0102) Private Information OB, 32-bit length, appended to the group.
        bytes.extend_from_slice(&[0x02, 0, 0x02, 0x01, b'O', b'B', 0, 0, 5, 0, 0, 0]);
        bytes.extend_from_slice(b"abcde");
        let end = bytes.len();
        bytes.extend(ui(0x0018, "1.2.3.4.5"));
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
