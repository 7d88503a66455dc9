//! The Part 10 header (PS3.10 §7.1): preamble, `DICM`, and the group 0002 file meta
//! information, always Explicit VR Little Endian.

/// Our implementation class UID (a UUID-derived `2.25` root, PS3.5 §B.2) and version name.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.314654631492247223724462440524699863783";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("DCMINLET_", env!("CARGO_PKG_VERSION"));

/// What the file meta records about one received instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub transfer_syntax_uid: &'a str,
    pub source_ae_title: &'a str,
}

fn put(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
    let padded = value.len() + value.len() % 2;
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        // OB has a 2-byte reserved field and a 32-bit length (PS3.5 §7.1.2).
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(padded as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(padded as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

impl FileMeta<'_> {
    /// Append preamble, magic and file meta group; the data set follows unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 128]);
        out.extend_from_slice(b"DICM");
        let length_at = out.len() + 8;
        put(out, 0x0000, b"UL", &[0; 4], 0);
        let start = out.len();
        put(out, 0x0001, b"OB", &[0, 1], 0);
        put(out, 0x0002, b"UI", self.sop_class_uid.as_bytes(), 0);
        put(out, 0x0003, b"UI", self.sop_instance_uid.as_bytes(), 0);
        put(out, 0x0010, b"UI", self.transfer_syntax_uid.as_bytes(), 0);
        put(out, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.as_bytes(), 0);
        put(
            out,
            0x0013,
            b"SH",
            IMPLEMENTATION_VERSION_NAME.as_bytes(),
            b' ',
        );
        if !self.source_ae_title.is_empty() {
            put(out, 0x0016, b"AE", self.source_ae_title.as_bytes(), b' ');
        }
        let group_length = (out.len() - start) as u32;
        out[length_at..length_at + 4].copy_from_slice(&group_length.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut out = Vec::new();
        FileMeta {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid: "1.2.3",
            transfer_syntax_uid: "1.2.840.10008.1.2.1",
            source_ae_title: "STORESCU",
        }
        .encode(&mut out);
        assert!(out[..128].iter().all(|&b| b == 0));
        assert_eq!(&out[128..132], b"DICM");
        assert_eq!(&out[132..138], &[2, 0, 0, 0, b'U', b'L']);
        let group_length = u32::from_le_bytes(out[140..144].try_into().unwrap()) as usize;
        assert_eq!(144 + group_length, out.len());
        // Odd-length UID "1.2.3" is NUL padded; the version name fits SH's 16 characters.
        let needle = b"1.2.3\0";
        assert!(out.windows(needle.len()).any(|w| w == needle));
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
        assert!(out.ends_with(b"STORESCU"));
    }
}
