//! Where a stored instance goes under `data_dir`: pacsanini's sort keys, with every value
//! from the peer made safe as a single path component.

use std::fmt;
use std::path::PathBuf;

use crate::scan::SortAttributes;

/// Longest component kept verbatim; longer values are cut and get a hash suffix.
const MAX_COMPONENT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// `PatientID/StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm`
    Patient,
    /// `StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm`
    Study,
    /// `SeriesInstanceUID/SOPInstanceUID.dcm`
    Series,
    /// `SOPInstanceUID.dcm`
    Image,
}

impl SortKey {
    pub fn parse(name: &str) -> Option<SortKey> {
        match name.to_ascii_lowercase().as_str() {
            "patient" => Some(SortKey::Patient),
            "study" => Some(SortKey::Study),
            "series" => Some(SortKey::Series),
            "image" => Some(SortKey::Image),
            _ => None,
        }
    }
}

/// A data set attribute the layout needs but the data set lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingAttribute(pub &'static str);

impl fmt::Display for MissingAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data set has no {}", self.0)
    }
}

/// The path of an instance relative to `data_dir`. `sop_instance_uid` is the instance's UID
/// (the data set's, checked against the command by the caller).
///
/// A layout whose attributes the data set lacks (PatientID, StudyInstanceUID,
/// SeriesInstanceUID) gives way to the next one that has what it needs: PATIENT, then STUDY,
/// then SERIES, then IMAGE, which needs nothing but the SOP Instance UID. An odd instance is
/// filed, not refused: DCMTK and pynetdicom store it too. Only a missing SOP Instance UID fails.
pub fn relative_path(
    key: SortKey,
    attrs: &SortAttributes,
    sop_instance_uid: &[u8],
) -> Result<PathBuf, MissingAttribute> {
    if sop_instance_uid.is_empty() {
        return Err(MissingAttribute("SOPInstanceUID"));
    }
    let (patient, study, series) = (
        present(&attrs.patient_id),
        present(&attrs.study_instance_uid),
        present(&attrs.series_instance_uid),
    );
    let levels: Vec<&[u8]> = match (key, patient, study, series) {
        (SortKey::Patient, Some(patient), Some(study), Some(series)) => {
            vec![patient, study, series]
        }
        (SortKey::Patient | SortKey::Study, _, Some(study), Some(series)) => vec![study, series],
        (SortKey::Image, ..) | (_, _, _, None) => Vec::new(),
        (_, _, _, Some(series)) => vec![series],
    };
    let mut path: PathBuf = levels.into_iter().map(sanitize_component).collect();
    path.push(format!("{}.dcm", sanitize_component(sop_instance_uid)));
    Ok(path)
}

/// An attribute's value, unless absent or empty.
fn present(value: &Option<Vec<u8>>) -> Option<&[u8]> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn allowed(byte: u8) -> bool {
    // Printable ASCII minus separators and the characters Windows and shells treat specially.
    (0x20..0x7F).contains(&byte) && !b"/\\:*?\"<>|".contains(&byte)
}

/// FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`), good enough to keep
/// distinct hostile values apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Turn a peer-supplied value into one safe path component.
///
/// Normal values (UIDs, ordinary patient IDs) come out unchanged. Anything else (separators,
/// NUL or control characters, non-ASCII bytes, a leading dot, which also covers `.`, `..` and
/// our own `.incoming`, trailing dots or spaces, over-long values) is replaced character by
/// character and gets a `~hash` suffix of the original, so two different values never share a name.
pub fn sanitize_component(value: &[u8]) -> String {
    let mut name: String = value
        .iter()
        .take(MAX_COMPONENT)
        .map(|&b| if allowed(b) { b as char } else { '_' })
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    while name.ends_with(['.', ' ']) {
        name.pop();
    }
    if name.as_bytes() != value {
        name.push_str(&format!("~{:016x}", fnv1a(value)));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Component, Path};

    fn attrs(patient: Option<&str>, study: Option<&str>, series: Option<&str>) -> SortAttributes {
        SortAttributes {
            patient_id: patient.map(|v| v.as_bytes().to_vec()),
            study_instance_uid: study.map(|v| v.as_bytes().to_vec()),
            series_instance_uid: series.map(|v| v.as_bytes().to_vec()),
            ..SortAttributes::default()
        }
    }

    #[test]
    fn layouts() {
        let a = attrs(Some("PID1"), Some("1.2.3"), Some("1.2.3.4"));
        let cases = [
            (SortKey::Patient, "PID1/1.2.3/1.2.3.4/9.9.dcm"),
            (SortKey::Study, "1.2.3/1.2.3.4/9.9.dcm"),
            (SortKey::Series, "1.2.3.4/9.9.dcm"),
            (SortKey::Image, "9.9.dcm"),
        ];
        for (key, expected) in cases {
            assert_eq!(relative_path(key, &a, b"9.9").unwrap(), Path::new(expected));
        }
    }

    #[test]
    fn empty_patient_id_falls_back_to_study_layout() {
        for patient in [None, Some("")] {
            let a = attrs(patient, Some("1.2"), Some("1.3"));
            assert_eq!(
                relative_path(SortKey::Patient, &a, b"1.4").unwrap(),
                Path::new("1.2/1.3/1.4.dcm")
            );
        }
    }

    #[test]
    fn missing_uids_fall_back_to_the_next_layout_ending_at_image() {
        let cases = [
            // (layout, patient, study, series, path)
            (
                SortKey::Patient,
                Some("P"),
                None,
                Some("1.3"),
                "1.3/1.4.dcm",
            ),
            (SortKey::Patient, Some("P"), Some("1.2"), None, "1.4.dcm"),
            (SortKey::Patient, None, None, None, "1.4.dcm"),
            (SortKey::Study, Some("P"), None, Some("1.3"), "1.3/1.4.dcm"),
            (SortKey::Study, None, Some("1.2"), Some(""), "1.4.dcm"),
            (SortKey::Series, Some("P"), Some("1.2"), None, "1.4.dcm"),
            (SortKey::Image, None, None, None, "1.4.dcm"),
        ];
        for (key, patient, study, series, expected) in cases {
            let a = attrs(patient, study, series);
            assert_eq!(
                relative_path(key, &a, b"1.4").unwrap(),
                Path::new(expected),
                "{key:?} {patient:?} {study:?} {series:?}"
            );
        }
    }

    #[test]
    fn missing_sop_instance_uid_is_named() {
        let a = attrs(Some("P"), Some("1.2"), Some("1.3"));
        for key in [SortKey::Patient, SortKey::Image] {
            assert_eq!(
                relative_path(key, &a, b""),
                Err(MissingAttribute("SOPInstanceUID"))
            );
        }
    }

    #[test]
    fn hostile_values_stay_single_normal_components() {
        let long = "A".repeat(10_000);
        let hostile: [&[u8]; 12] = [
            b"../../x",
            b"/abs",
            b"..",
            b".",
            b"a\0b",
            b"a/b/../../c",
            b"\x01\x1f\x7f",
            b".incoming",
            b"C:\\win",
            b"trailing. ",
            "\u{e9}t\u{e9}".as_bytes(),
            long.as_bytes(),
        ];
        let mut seen = std::collections::HashSet::new();
        for value in hostile {
            let name = sanitize_component(value);
            let components: Vec<_> = Path::new(&name).components().collect();
            assert_eq!(components.len(), 1, "{name:?}");
            assert!(matches!(components[0], Component::Normal(_)), "{name:?}");
            assert!(!name.starts_with('.') && !name.is_empty(), "{name:?}");
            assert!(name.len() <= MAX_COMPONENT + 17, "{name:?}");
            assert!(seen.insert(name), "collision for {value:?}");
        }
    }

    #[test]
    fn ordinary_values_are_kept() {
        for value in ["1.2.840.113619.2.55.3", "PAT-001", "Doe^John", "ID 42"] {
            assert_eq!(sanitize_component(value.as_bytes()), value);
        }
    }
}
