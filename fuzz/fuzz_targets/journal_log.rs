//! Journal row log read (journal::log::parse, as at a start after a crash) and re-encoded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::journal_log(data));
