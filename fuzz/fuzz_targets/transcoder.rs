//! The SCU's transfer syntax conversions, read whole and in pieces, checked against the scanner.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::transcoder(data));
