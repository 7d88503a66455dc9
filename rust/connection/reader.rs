//! PDUs from the socket into one reusable buffer, with as few reads and copies as possible.
//!
//! A small PDU is read together with whatever follows it (up to [`READ_AHEAD`]), so a C-STORE's
//! command PDU and a small data set PDU usually cost one read instead of four (header, body,
//! header, body). A large body is read exactly, so nothing of the next PDU has to be moved to
//! the front of the buffer afterwards. The buffer is never zero-filled again once grown.

use std::io::{self, ErrorKind, Read};

use crate::pdu;

/// How far past the bytes needed a read may go. A sender of 16 KiB PDUs (DCMTK's default) has
/// several queued by the time we read: 256 KiB takes in ~8 per read where 64 KiB took ~3
/// (`benches/receive_cost.py strace`). The leftover moved to the buffer front stays under one
/// PDU, whatever this is.
const READ_AHEAD: usize = 256 * 1024;

pub(super) struct PduReader {
    buffer: Vec<u8>,
    /// Received bytes not yet consumed are `buffer[start..end]`.
    start: usize,
    end: usize,
    /// Bytes of the PDU last returned, consumed when the next header is read.
    current: usize,
}

impl PduReader {
    pub(super) fn new() -> PduReader {
        PduReader {
            buffer: Vec::new(),
            start: 0,
            end: 0,
            current: 0,
        }
    }

    /// The next PDU's header: (type, body length). The body must be checked against the
    /// limits before [`body`](Self::body) reads it.
    pub(super) fn header(&mut self, stream: &mut impl Read) -> io::Result<(u8, u32)> {
        self.start += self.current;
        self.current = 0;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        self.fill(stream, pdu::HEADER_LEN)?;
        let mut header = [0u8; pdu::HEADER_LEN];
        header.copy_from_slice(&self.buffer[self.start..self.start + pdu::HEADER_LEN]);
        Ok(pdu::parse_header(&header))
    }

    /// Whether bytes past the PDU last returned were read already.
    pub(super) fn buffered(&self) -> bool {
        self.end > self.start + self.current
    }

    /// The body of the PDU whose header was just read; `length` as returned by `header`.
    pub(super) fn body(&mut self, stream: &mut impl Read, length: u32) -> io::Result<&[u8]> {
        let total = pdu::HEADER_LEN + length as usize;
        self.fill(stream, total)?;
        self.current = total;
        Ok(&self.buffer[self.start + pdu::HEADER_LEN..self.start + total])
    }

    /// Make `need` bytes from `start` available, reading at most `READ_AHEAD` beyond them when
    /// `need` is small.
    fn fill(&mut self, stream: &mut impl Read, need: usize) -> io::Result<()> {
        if self.start + need > self.buffer.len() {
            // Move the unconsumed bytes (a read-ahead's leftover) to the front. Growing leaves
            // READ_AHEAD of room, so a PDU of this size that starts inside a read-ahead fits
            // from then on without this move.
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if need > self.buffer.len() {
                self.buffer.resize(need + READ_AHEAD, 0);
            }
        }
        let window = (self.start + need.max(READ_AHEAD)).min(self.buffer.len());
        while self.end - self.start < need {
            match stream.read(&mut self.buffer[self.end..window]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out the stream in the given read sizes, recording each read's buffer size.
    struct Chunked<'a> {
        data: &'a [u8],
        sizes: std::vec::IntoIter<usize>,
        asked: Vec<usize>,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked.push(buf.len());
            let n = self.sizes.next().unwrap_or(usize::MAX).min(buf.len());
            let n = n.min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pdu(pdu_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![pdu_type, 0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn read_all(stream: &mut impl Read) -> Vec<(u8, Vec<u8>)> {
        let mut reader = PduReader::new();
        let mut out = Vec::new();
        loop {
            match reader.header(stream) {
                Ok((t, len)) => out.push((t, reader.body(stream, len).unwrap().to_vec())),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn small_pdus_share_one_read_and_large_bodies_are_read_exactly() {
        let large: Vec<u8> = (0..3 * READ_AHEAD).map(|i| i as u8).collect();
        let want = vec![
            (4, vec![1; 100]),
            (4, vec![2; 4000]),
            (4, large.clone()),
            (4, large),
            (5, vec![0; 4]),
        ];
        let data: Vec<u8> = want.iter().flat_map(|(t, b)| pdu(*t, b)).collect();
        let mut stream = Chunked {
            data: &data,
            sizes: Vec::new().into_iter(),
            asked: Vec::new(),
        };
        assert_eq!(read_all(&mut stream), want);
        // One read for the two small PDUs and the head of the first large one, then the rest
        // of each large body in one exact read; the release PDU comes in the last read-ahead.
        assert_eq!(stream.asked.len(), 6, "{:?}", stream.asked);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_pdus() {
        let want = vec![
            (1, vec![7; 10]),
            (4, (0..=255).collect()),
            (4, vec![9; READ_AHEAD + 17]),
            (4, vec![]),
            (7, vec![0; 4]),
        ];
        let data: Vec<u8> = want.iter().flat_map(|(t, b)| pdu(*t, b)).collect();
        for size in [1, 2, 5, 6, 7, 13, 4096, READ_AHEAD - 1, usize::MAX] {
            let mut stream = Chunked {
                data: &data,
                sizes: std::iter::repeat_n(size, data.len())
                    .collect::<Vec<_>>()
                    .into_iter(),
                asked: Vec::new(),
            };
            assert_eq!(read_all(&mut stream), want, "reads of {size}");
        }
    }

    #[test]
    fn end_of_stream_inside_a_pdu_is_an_error() {
        let data = pdu(4, &[1, 2, 3, 4]);
        for cut in [3, data.len() - 1] {
            let mut stream = &data[..cut];
            let mut reader = PduReader::new();
            let result = reader
                .header(&mut stream)
                .and_then(|(_, len)| reader.body(&mut stream, len).map(|_| ()));
            assert_eq!(result.unwrap_err().kind(), ErrorKind::UnexpectedEof);
        }
    }
}
