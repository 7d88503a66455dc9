//! Data set scanned in each encoding, whole and at arbitrary split points.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::scanner(data));
