//! The journal's row log: each acknowledged instance's row is appended here, one `write(2)`
//! before its C-STORE-RSP, and the writer thread copies the rows into SQLite in batches
//! behind it. An SQLite commit costs ~40 µs of locks and page writes; an append a tenth of
//! that. A start copies the rows the last run logged and did not commit, then removes the
//! files.
//!
//! A file is `rows.<n>.log`, a sequence of records `length u32 | crc32 u32 | payload`, little
//! endian; the payload is `id i64 | received f64 | bytes u64 | pending u8` and the row's text
//! fields, each `length u32 | UTF-8` (`u32::MAX`: none). A record that does not check (a
//! write cut short by a crash: never acknowledged) ends the file.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Row;

/// Longest record accepted: rows hold UIDs, AE titles and a path.
const MAX_RECORD: usize = 1 << 20;
/// A file past this size is retired at the writer's next batch (removed once it is
/// committed), so the log stays small however long a server runs.
const ROTATE_AT: u64 = 1 << 20;
const PREFIX: &str = "rows.";
const SUFFIX: &str = ".log";
/// Marks an absent field.
const NONE: u32 = u32::MAX;

/// A row as logged: its id and arrival time are given when it is logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub id: i64,
    pub received: f64,
    pub row: Row,
}

/// The file rows are appended to.
pub struct Log {
    dir: PathBuf,
    file: File,
    number: u64,
    size: u64,
    /// Flush each append (durable, with the journal on a file system the storage's flush
    /// does not cover).
    sync: bool,
    buffer: Vec<u8>,
}

fn file_name(number: u64) -> String {
    format!("{PREFIX}{number}{SUFFIX}")
}

/// The logs in `dir`, oldest first.
pub fn files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse().ok());
        if let Some(number) = number {
            found.push((number, entry.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

impl Log {
    /// A new, empty log in `dir` numbered after `previous`.
    pub fn create(dir: &Path, previous: u64, sync: bool) -> io::Result<Log> {
        let number = previous + 1;
        let file = File::options()
            .append(true)
            .create_new(true)
            .open(dir.join(file_name(number)))?;
        Ok(Log {
            dir: dir.to_path_buf(),
            file,
            number,
            size: 0,
            sync,
            buffer: Vec::with_capacity(512),
        })
    }

    /// Append one row in one write. A failed write is cut off again, so the rows after it
    /// are read; if even that fails, the log takes no more rows (the reader would stop at
    /// the partial record).
    pub fn append(&mut self, logged: &Logged) -> io::Result<()> {
        if self.size == u64::MAX {
            return Err(io::Error::other("the journal's log could not be repaired"));
        }
        self.buffer.clear();
        encode(logged, &mut self.buffer);
        let written = self
            .file
            .write_all(&self.buffer)
            .and_then(|()| match self.sync {
                true => self.file.sync_data(),
                false => Ok(()),
            });
        match &written {
            Ok(()) => self.size += self.buffer.len() as u64,
            Err(_) if self.file.set_len(self.size).is_err() => self.size = u64::MAX,
            Err(_) => {}
        }
        written
    }

    /// When this file is large enough, start a new one and give the old one's path: it is to
    /// be removed once every row it holds is committed.
    pub fn rotate(&mut self) -> io::Result<Option<PathBuf>> {
        if self.size < ROTATE_AT || self.size == u64::MAX {
            return Ok(None);
        }
        let next = Log::create(&self.dir, self.number, self.sync)?;
        let old = std::mem::replace(self, next);
        Ok(Some(old.dir.join(file_name(old.number))))
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        // Longer fields than MAX_RECORD make a record the reader refuses: never written.
        Some(bytes) => {
            put_u32(out, bytes.len().min(NONE as usize - 1) as u32);
            out.extend_from_slice(bytes);
        }
        None => put_u32(out, NONE),
    }
}

fn crc(payload: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    crc.sum()
}

/// Append the record of `logged` to `out`.
pub fn encode(logged: &Logged, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let Logged { id, received, row } = logged;
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&received.to_le_bytes());
    out.extend_from_slice(&row.bytes.to_le_bytes());
    out.push(u8::from(row.pending));
    fn text(s: &Option<String>) -> Option<&[u8]> {
        s.as_deref().map(str::as_bytes)
    }
    let peer = row.peer.map(|p| p.to_string());
    for field in [
        Some(row.sop_class_uid.as_bytes()),
        Some(row.sop_instance_uid.as_bytes()),
        Some(row.transfer_syntax_uid.as_bytes()),
        text(&row.patient_id),
        text(&row.study_instance_uid),
        text(&row.series_instance_uid),
        text(&row.accession_number),
        text(&row.modality),
        text(&row.study_date),
        Some(row.path.as_os_str().as_bytes()),
        Some(row.calling_ae.as_bytes()),
        Some(row.called_ae.as_bytes()),
        peer.as_deref().map(str::as_bytes),
        row.held.as_deref().map(|h| h.as_os_str().as_bytes()),
    ] {
        put_bytes(out, field);
    }
    let length = (out.len() - start - 8) as u32;
    let sum = crc(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Reads a payload's fields in order; None once it runs short.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    /// A field: Some(None) when absent.
    fn bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let length = u32::from_le_bytes(self.take()?);
        if length == NONE {
            return Some(None);
        }
        // Bounded by what is left, before anything is taken.
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= self.0.len())?;
        let (value, rest) = self.0.split_at(length);
        self.0 = rest;
        Some(Some(value))
    }

    fn text(&mut self) -> Option<Option<String>> {
        match self.bytes()? {
            Some(bytes) => Some(Some(std::str::from_utf8(bytes).ok()?.to_owned())),
            None => Some(None),
        }
    }

    fn required(&mut self) -> Option<String> {
        self.text()?
    }

    fn path(&mut self) -> Option<Option<PathBuf>> {
        Some(self.bytes()?.map(|b| PathBuf::from(OsStr::from_bytes(b))))
    }
}

fn decode(payload: &[u8]) -> Option<Logged> {
    let mut f = Fields(payload);
    let id = i64::from_le_bytes(f.take()?);
    let received = f64::from_le_bytes(f.take()?);
    let bytes = u64::from_le_bytes(f.take()?);
    let pending = match f.take::<1>()? {
        [0] => false,
        [1] => true,
        _ => return None,
    };
    let row = Row {
        sop_class_uid: f.required()?,
        sop_instance_uid: f.required()?,
        transfer_syntax_uid: f.required()?,
        patient_id: f.text()?,
        study_instance_uid: f.text()?,
        series_instance_uid: f.text()?,
        accession_number: f.text()?,
        modality: f.text()?,
        study_date: f.text()?,
        path: f.path()??,
        bytes,
        calling_ae: f.required()?,
        called_ae: f.required()?,
        peer: match f.text()? {
            Some(peer) => Some(peer.parse().ok()?),
            None => None,
        },
        held: f.path()?,
        pending,
    };
    f.0.is_empty().then_some(Logged { id, received, row })
}

/// The rows of a log file's bytes, up to the first record that does not check.
pub fn parse(mut data: &[u8]) -> Vec<Logged> {
    let mut rows = Vec::new();
    while let Some((header, rest)) = data.split_first_chunk::<8>() {
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length > MAX_RECORD || length > rest.len() {
            break;
        }
        let (payload, next) = rest.split_at(length);
        let Some(logged) = decode(payload).filter(|_| crc(payload) == sum) else {
            break;
        };
        rows.push(logged);
        data = next;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(id: i64, study: Option<&str>) -> Logged {
        Logged {
            id,
            received: 1.5e9 + id as f64,
            row: Row {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: format!("1.2.3.{id}"),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                patient_id: Some("PAT é".into()),
                study_instance_uid: study.map(Into::into),
                path: PathBuf::from("/data/a/b.dcm"),
                bytes: 1234,
                calling_ae: "SCU".into(),
                called_ae: "INLET".into(),
                peer: Some("127.0.0.1:4242".parse().unwrap()),
                held: Some(PathBuf::from("/data/.journal/held/7.dcm")),
                pending: id % 2 == 0,
                ..Row::default()
            },
        }
    }

    #[test]
    fn records_round_trip_and_a_cut_or_damaged_record_ends_the_log() {
        let rows = [logged(1, Some("9.8")), logged(2, None), logged(3, Some(""))];
        let mut data = Vec::new();
        for row in &rows {
            encode(row, &mut data);
        }
        assert_eq!(parse(&data), rows);
        // A write cut short: the rows before it stand.
        assert_eq!(parse(&data[..data.len() - 1]), rows[..2]);
        // A flipped byte fails its checksum: it and what follows are not read.
        let second = data.len() / 3 + 20;
        data[second] ^= 0x40;
        assert_eq!(parse(&data).len(), 1);
        assert!(parse(&[0xff; 12]).is_empty());
        // The fuzz target's seed is a log of two good rows.
        let seed = parse(include_bytes!("../testdata/fuzz/journal_log/two_rows"));
        assert_eq!(seed.len(), 2);
        assert_eq!(seed[1].row.peer, Some("[::1]:104".parse().unwrap()));
    }

    #[test]
    fn appends_go_to_numbered_files_that_rotate() {
        let dir = std::env::temp_dir().join(format!("dicom-inlet-log-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut log = Log::create(&dir, 4, false).unwrap();
        assert_eq!(log.rotate().unwrap(), None);
        let mut id = 0;
        while log.size < ROTATE_AT {
            id += 1;
            log.append(&logged(id, Some("1"))).unwrap();
        }
        let old = log.rotate().unwrap().unwrap();
        log.append(&logged(id + 1, None)).unwrap();
        let found = files(&dir).unwrap();
        assert_eq!(found, [(5, old.clone()), (6, dir.join("rows.6.log"))]);
        assert_eq!(parse(&fs::read(&old).unwrap()).len(), id as usize);
        assert_eq!(parse(&fs::read(&found[1].1).unwrap())[0].id, id + 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
