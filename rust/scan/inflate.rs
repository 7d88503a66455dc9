//! The deflate front end: incremental raw inflate of a deflated data set (PS3.5 §A.5) into the
//! parser.

use flate2::{Decompress, FlushDecompress, Status};

use super::{Parser, ScanError};

/// Inflate output chunk, allocated once per deflated scanner.
const INFLATE_CHUNK: usize = 16 * 1024;

/// Incremental raw inflate in front of the parser (PS3.5 §A.5). Output goes through a fixed
/// chunk and inflation stops once the parser is done, so memory is bounded whatever the ratio.
pub(super) struct Inflater {
    stream: Decompress,
    chunk: Box<[u8]>,
    /// The deflate stream reached its final block.
    pub(super) ended: bool,
}

impl Inflater {
    pub(super) fn new() -> Inflater {
        Inflater {
            stream: Decompress::new(false),
            chunk: vec![0; INFLATE_CHUNK].into_boxed_slice(),
            ended: false,
        }
    }

    pub(super) fn feed(&mut self, parser: &mut Parser, mut input: &[u8]) -> Result<(), ScanError> {
        // Bytes after the end of the stream (the even-length pad byte of §A.5) are ignored.
        while !self.ended && !parser.done {
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            let result = self
                .stream
                .decompress(input, &mut self.chunk, FlushDecompress::None);
            let consumed = (self.stream.total_in() - in_before) as usize;
            let produced = (self.stream.total_out() - out_before) as usize;
            input = input.get(consumed..).unwrap_or_default();
            // What inflated before a corrupt spot is parsed first, and a scan it completes
            // stands: the outcome must not depend on how the stream was cut into fragments
            // (found by the `scanner` fuzz target).
            parser.feed(self.chunk.get(..produced).unwrap_or_default())?;
            let status = match result {
                Ok(status) => status,
                Err(_) if parser.done => break,
                Err(e) => return Err(ScanError::Deflate(e.to_string())),
            };
            self.ended = status == Status::StreamEnd;
            // A chunk left unfilled means the inflater holds nothing more for the input so far;
            // no progress at all means it needs more input.
            if (input.is_empty() && produced < self.chunk.len()) || (consumed == 0 && produced == 0)
            {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::tests::{deflate, sample, sample_attrs, scan, scan_all_ways, W};
    use crate::scan::tests::{DEFLATED_TS, EXPLICIT_LE_TS};
    use crate::scan::{Encoding, Scanner, SERIES_INSTANCE_UID, SOP_CLASS_UID};

    #[test]
    fn sample_deflated() {
        let compressed = deflate(&sample(EXPLICIT_LE_TS));
        assert_eq!(scan_all_ways(DEFLATED_TS, &compressed), Ok(sample_attrs()));
        // The even-length pad byte after the stream (PS3.5 §A.5) is ignored.
        let mut padded = compressed;
        padded.push(0);
        assert_eq!(scan_all_ways(DEFLATED_TS, &padded), Ok(sample_attrs()));
    }

    #[test]
    fn deflated_inflates_only_until_done() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SERIES_INSTANCE_UID, b"UI", b"1.2\0")
            .head(0x7FE0_0010, b"OW", 16 << 20)
            .raw(&vec![0; 16 << 20]);
        let compressed = deflate(&w.out);
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(DEFLATED_TS));
        for chunk in compressed.chunks(256 * 1024) {
            scanner.feed(chunk).unwrap();
        }
        assert!(scanner.is_done());
        let inflated = scanner.inflater.as_ref().unwrap().stream.total_out();
        assert!(inflated <= 2 * INFLATE_CHUNK as u64, "inflated {inflated}");
        let attrs = scanner.finish().unwrap();
        assert_eq!(attrs.series_instance_uid, Some(b"1.2".to_vec()));
    }

    #[test]
    fn deflated_output_larger_than_chunk_before_done() {
        // The inflater decodes into its own 32 KiB window first; with this size the last feed
        // leaves more than one chunk pending, and all of it must be drained within that feed.
        let mut w = W::new(EXPLICIT_LE_TS);
        w.head(0x0009_1010, b"OB", 20_000).raw(&[0; 20_000]).elem(
            SERIES_INSTANCE_UID,
            b"UI",
            b"1.2\0",
        );
        let attrs = scan_all_ways(DEFLATED_TS, &deflate(&w.out)).unwrap();
        assert_eq!(attrs.series_instance_uid, Some(b"1.2".to_vec()));
    }

    #[test]
    fn deflated_stream_cut_is_truncated() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0");
        let compressed = deflate(&w.out);
        assert_eq!(
            scan(DEFLATED_TS, &compressed[..compressed.len() - 1]),
            Err(ScanError::Truncated)
        );
        assert_eq!(scan(DEFLATED_TS, &[]), Err(ScanError::Truncated));
        // Final block with the reserved block type.
        assert!(matches!(
            scan(DEFLATED_TS, &[0xFF; 8]),
            Err(ScanError::Deflate(_))
        ));
    }

    #[test]
    fn deflated_stream_ending_before_done() {
        let mut w = W::new(EXPLICIT_LE_TS);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0");
        let mut compressed = deflate(&w.out);
        compressed.push(0);
        let attrs = scan_all_ways(DEFLATED_TS, &compressed).unwrap();
        assert_eq!(attrs.sop_class_uid, Some(b"1.2".to_vec()));
        // The stream is complete but the data set inside it stops mid-element.
        let cut = deflate(&w.out[..w.out.len() - 2]);
        assert_eq!(scan_all_ways(DEFLATED_TS, &cut), Err(ScanError::Truncated));
    }
}
