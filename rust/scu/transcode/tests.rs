use std::io::Write;

use flate2::write::DeflateEncoder;
use flate2::Compression;

use super::*;

/// Data sets built once per byte order: the same elements, values given as little endian
/// numbers and swapped by their VR's unit for big endian.
struct Enc {
    big: bool,
}

impl Enc {
    fn u16(&self, v: u16) -> [u8; 2] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u32(&self, v: u32) -> [u8; 4] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn tag(&self, tag: (u16, u16)) -> Vec<u8> {
        [self.u16(tag.0), self.u16(tag.1)].concat()
    }

    fn explicit(&self, tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        self.explicit_len(tag, vr, value.len() as u32, value)
    }

    fn explicit_len(&self, tag: (u16, u16), vr: &[u8; 2], length: u32, value: &[u8]) -> Vec<u8> {
        let mut out = self.tag(tag);
        out.extend_from_slice(vr);
        if vr::has_long_length(vr) == Some(true) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&self.u32(length));
        } else {
            out.extend_from_slice(&self.u16(length as u16));
        }
        let mut value = value.to_vec();
        if self.big {
            for number in value.chunks_exact_mut(swap_unit(vr)) {
                number.reverse();
            }
        }
        out.extend_from_slice(&value);
        out
    }

    /// An item or delimiter (no VR), then its contents.
    fn item(&self, element: u16, length: u32, contents: &[u8]) -> Vec<u8> {
        [
            &self.tag((0xFFFE, element))[..],
            &self.u32(length),
            contents,
        ]
        .concat()
    }

    /// Every kind of value and container, nested.
    fn sample(&self) -> Vec<u8> {
        let item_value = [
            self.explicit((0x0008, 0x1150), b"UI", b"1.2\0"),
            self.explicit((0x0028, 0x0010), b"US", &512u16.to_le_bytes()),
            self.explicit((0x0011, 0x1001), b"OB", &[1, 2]),
        ]
        .concat();
        let item = self.item(ITEM, item_value.len() as u32, &item_value);
        let nested = self.explicit((0x0018, 0x9346), b"FD", &1.5f64.to_le_bytes());
        let nested_sequence = [
            self.explicit_len((0x0040, 0xA730), b"SQ", UNDEFINED, &[]),
            self.item(ITEM, UNDEFINED, &nested),
            self.item(ITEM_DELIMITATION, 0, &[]),
            self.item(SEQUENCE_DELIMITATION, 0, &[]),
        ]
        .concat();
        let undefined_item = [
            self.item(ITEM, UNDEFINED, &[]),
            self.explicit((0x0008, 0x0100), b"SH", b"AB"),
            nested_sequence,
            self.item(ITEM_DELIMITATION, 0, &[]),
        ]
        .concat();
        let items = [item, undefined_item].concat();
        // PS3.5 §6.2.2: UN of undefined length holds Implicit VR Little Endian in any syntax.
        let un_contents = [
            implicit((0xFFFE, ITEM), UNDEFINED, &[]),
            implicit((0x0009, 0x1010), 2, b"XY"),
            implicit((0xFFFE, ITEM_DELIMITATION), 0, &[]),
            implicit((0xFFFE, SEQUENCE_DELIMITATION), 0, &[]),
        ]
        .concat();
        let at = [0x0010u16.to_le_bytes(), 0x0020u16.to_le_bytes()].concat();
        [
            self.explicit((0x0008, 0x0016), b"UI", b"1.2.3\0"),
            self.explicit((0x0008, 0x1140), b"SQ", &items),
            self.explicit_len((0x0009, 0x1010), b"UN", UNDEFINED, &un_contents),
            self.explicit((0x0018, 0x1190), b"DS", b"1.5 "),
            self.explicit((0x0020, 0x9165), b"AT", &at),
            self.explicit(
                (0x0028, 0x0030),
                b"FL",
                &[0.5f32.to_le_bytes(), 2f32.to_le_bytes()].concat(),
            ),
            self.explicit((0x0028, 0x9001), b"UL", &70_000u32.to_le_bytes()),
            self.explicit((0x0028, 0x1052), b"SS", &(-1024i16).to_le_bytes()),
            self.explicit((0x0066, 0x0040), b"OL", &7u32.to_le_bytes()),
            self.explicit((0x0072, 0x0082), b"SV", &(-5i64).to_le_bytes()),
            self.explicit((0x7FE0, 0x0010), b"OW", &[1, 0, 2, 0, 3, 0]),
        ]
        .concat()
    }
}

const LE: Enc = Enc { big: false };
const BE: Enc = Enc { big: true };

fn implicit(tag: (u16, u16), length: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Convert with tiny reads, which exercise every resumption point, and check the length a
/// whole pass gives; `length` None converts up to the end of the input.
fn convert_with(
    data_set: &[u8],
    length: Option<u64>,
    big_endian: bool,
    to: &str,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut reader = Transcoder::new(data_set, length, big_endian, to);
    let mut chunk = [0u8; 3];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    let mut whole = Vec::new();
    Transcoder::new(data_set, length, big_endian, to).read_to_end(&mut whole)?;
    assert_eq!(whole, out);
    Ok(out)
}

fn to_implicit(data_set: &[u8]) -> io::Result<Vec<u8>> {
    convert_with(
        data_set,
        Some(data_set.len() as u64),
        false,
        IMPLICIT_VR_LITTLE_ENDIAN,
    )
}

#[test]
fn headers_lose_their_vr_and_sequences_get_delimiters() {
    let item_value = [
        LE.explicit((0x0008, 0x1150), b"UI", b"1.2\0"),
        LE.explicit((0x0011, 0x1001), b"OB", &[1, 2]),
    ]
    .concat();
    let item = LE.item(ITEM, item_value.len() as u32, &item_value);
    let undefined_item = [
        LE.item(
            ITEM,
            UNDEFINED,
            &LE.explicit((0x0008, 0x0100), b"SH", b"AB"),
        ),
        LE.item(ITEM_DELIMITATION, 0, &[]),
    ]
    .concat();
    let items = [item, undefined_item].concat();
    let data_set = [
        LE.explicit((0x0008, 0x0016), b"UI", b"1.2.3\0"),
        LE.explicit((0x0008, 0x1140), b"SQ", &items),
        LE.explicit((0x7FE0, 0x0010), b"OW", &[9; 6]),
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
    assert_eq!(to_implicit(&data_set).unwrap(), expected);
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
    let data_set = [
        LE.explicit_len((0x0009, 0x1010), b"UN", UNDEFINED, &contents),
        LE.explicit((0x0010, 0x0020), b"LO", b"ID"),
    ]
    .concat();
    let expected = [
        implicit((0x0009, 0x1010), UNDEFINED, &[]),
        contents,
        implicit((0x0010, 0x0020), 2, b"ID"),
    ]
    .concat();
    assert_eq!(to_implicit(&data_set).unwrap(), expected);
}

#[test]
fn big_endian_becomes_the_same_data_set_in_little_endian() {
    let (big, little) = (BE.sample(), LE.sample());
    assert_ne!(big, little);
    let length = Some(big.len() as u64);
    let explicit = convert_with(&big, length, true, EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
    assert_eq!(explicit, little);
    // To implicit VR, both byte orders give the same bytes.
    let implicit = convert_with(&big, length, true, IMPLICIT_VR_LITTLE_ENDIAN).unwrap();
    assert_eq!(implicit, to_implicit(&little).unwrap());
    // Little endian to explicit little endian changes nothing.
    assert_eq!(
        convert_with(&little, None, false, EXPLICIT_VR_LITTLE_ENDIAN).unwrap(),
        little
    );
}

fn deflated(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// `convert` of a data set stored in a file after other bytes.
fn convert_file(name: &str, data_set: &[u8], from: &str, to: &str) -> io::Result<Vec<u8>> {
    let path = std::env::temp_dir().join(format!(
        "dicom-inlet-transcode-{name}-{}",
        std::process::id()
    ));
    std::fs::write(&path, [b"prefix".as_slice(), data_set].concat()).unwrap();
    let mut file = File::open(&path).unwrap();
    file.seek(SeekFrom::Start(6)).unwrap();
    let result = convert(file, data_set.len() as u64, from, to).and_then(|(mut reader, length)| {
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        assert_eq!(out.len() as u64, length);
        Ok(out)
    });
    std::fs::remove_file(&path).unwrap();
    result
}

#[test]
fn deflated_is_inflated_while_it_streams() {
    let little = LE.sample();
    let mut compressed = deflated(&little);
    // The even-length pad byte after the stream (PS3.5 §A.5) is no data.
    if compressed.len() % 2 == 1 {
        compressed.push(0);
    }
    let from = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    assert_eq!(
        convert_file("dfl", &compressed, from, EXPLICIT_VR_LITTLE_ENDIAN).unwrap(),
        little
    );
    assert_eq!(
        convert_file("dfl-implicit", &compressed, from, IMPLICIT_VR_LITTLE_ENDIAN).unwrap(),
        to_implicit(&little).unwrap()
    );
    let big = BE.sample();
    assert_eq!(
        convert_file(
            "be",
            &big,
            EXPLICIT_VR_BIG_ENDIAN,
            EXPLICIT_VR_LITTLE_ENDIAN
        )
        .unwrap(),
        little
    );
    let why = |e: io::Error| {
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        e.to_string()
    };
    let cut = &compressed[..compressed.len() / 2];
    let e = convert_file("cut", cut, from, EXPLICIT_VR_LITTLE_ENDIAN).unwrap_err();
    assert!(why(e).contains("deflated data set is truncated"));
    let e = convert_file("junk", &[0xFF; 16], from, EXPLICIT_VR_LITTLE_ENDIAN).unwrap_err();
    assert!(why(e).contains("deflated data set is corrupt"));
    let e = convert_file(
        "jpeg",
        &little,
        "1.2.840.10008.1.2.4.50",
        EXPLICIT_VR_LITTLE_ENDIAN,
    )
    .unwrap_err();
    assert!(why(e).contains("cannot convert transfer syntax 1.2.840.10008.1.2.4.50"));
}

#[test]
fn what_cannot_be_converted() {
    let refused = |data_set: &[u8]| {
        let e = to_implicit(data_set).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        e.to_string()
    };
    let pixels = LE.explicit_len((0x7FE0, 0x0010), b"OB", UNDEFINED, &[]);
    assert!(refused(&pixels).contains("encapsulated pixel data"));
    let cut = LE.explicit((0x0010, 0x0020), b"LO", b"IDENT");
    assert!(refused(&cut[..cut.len() - 1]).contains("past the end"));
    assert!(refused(&cut[..5]).contains("truncated"));
    let open = LE.explicit_len((0x0008, 0x1140), b"SQ", UNDEFINED, &[]);
    assert!(refused(&open).contains("ends inside a sequence"));
    let stray = implicit((0xFFFE, 0xE0DD), 0, &[]);
    assert!(refused(&stray).contains("closes nothing"));
    let item_at_top = LE.item(ITEM, 0, &[]);
    assert!(refused(&item_at_top).contains("an item outside a sequence"));
    // An item directly inside an item, hidden in items of defined length.
    let inner = LE.item(ITEM, 0, &[]);
    let outer = LE.item(ITEM, inner.len() as u32, &inner);
    let nested = LE.explicit((0x0008, 0x1140), b"SQ", &outer);
    assert!(refused(&nested).contains("an item outside a sequence"));
    let element_in_sequence = LE.explicit(
        (0x0008, 0x1140),
        b"SQ",
        &LE.explicit((0x0008, 0x0100), b"SH", b"AB"),
    );
    assert!(refused(&element_in_sequence).contains("an element outside an item"));
    let wrong_delimiter = [
        LE.explicit_len((0x0008, 0x1140), b"SQ", UNDEFINED, &[]),
        LE.item(ITEM_DELIMITATION, 0, &[]),
    ]
    .concat();
    assert!(refused(&wrong_delimiter).contains("closes nothing"));
    let unknown = LE.explicit((0x0010, 0x0020), b"XX", b"ID");
    assert!(refused(&unknown).contains("unknown VR"));
    // An item claiming more than its sequence holds.
    let item = implicit(
        (0xFFFE, 0xE000),
        10,
        &LE.explicit((0x0008, 0x0100), b"SH", b"AB"),
    );
    let mut sequence = LE.explicit((0x0008, 0x1140), b"SQ", &item);
    sequence[8..12].copy_from_slice(&2u32.to_le_bytes());
    let why = refused(&sequence);
    assert!(
        why.contains("runs past the end of its sequence or item"),
        "{why}"
    );
    // A big endian number cut in half cannot be swapped.
    let odd = BE.explicit_len((0x0028, 0x0010), b"US", 3, &[0, 2, 0]);
    let e = convert_with(
        &odd,
        Some(odd.len() as u64),
        true,
        EXPLICIT_VR_LITTLE_ENDIAN,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("VR US whose length 3 is not a multiple of 2"),
        "{e}"
    );
}
