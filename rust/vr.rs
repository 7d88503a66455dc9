//! Value representation facts that the data set scanner, the SCU's Part 10 reader and the
//! PDU/DIMSE codecs share (PS3.5 §6.2, §7.1).

/// A value without its padding: UI values are padded to even length with NUL, text values
/// with a space (PS3.5 §6.2), and real peers pad UIDs in PDU items either way.
pub fn trim_padding(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    &value[..end]
}

/// Whether an explicit VR uses the 12-byte header with a 32-bit length (PS3.5 Table 7.1-1);
/// None for anything that is not a VR of PS3.5 §6.2, whose header size would be unknowable.
pub fn has_long_length(vr: &[u8; 2]) -> Option<bool> {
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
