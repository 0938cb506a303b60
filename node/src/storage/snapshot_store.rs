//! Snapshot files: `snap-<term>-<index>.snap`, written to a temporary name, fsynced
//! and renamed, so a crash leaves either the whole file or none. Each file ends with
//! the CRC32C of everything before it and is verified before it is loaded or
//! installed. Every incoming copy gets a temporary name of its own: a retried
//! send of the same snapshot may arrive while the first is still being received.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"RLSNAP01";
const HEADER_LEN: u64 = 8 + 8 + 8;
const TRAILER_LEN: u64 = 4;
/// Snapshot files kept besides the current one, for sends still reading them.
const KEEP_OLDER: usize = 1;
/// Numbers the temporary files of incoming copies, so none is ever shared.
static INCOMING: AtomicU64 = AtomicU64::new(0);

/// The folder of a member's snapshot files.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens the folder, creating it, and removes files a crash left half-written.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the snapshot taken at (`term`, `index`) lives.
    pub fn path(&self, term: u64, index: u64) -> PathBuf {
        self.dir.join(format!("snap-{term:020}-{index:020}.snap"))
    }

    /// Starts a new snapshot file; the body is written through the returned writer.
    pub fn create(&self, term: u64, index: u64) -> io::Result<SnapshotWriter> {
        let final_path = self.path(term, index);
        let tmp_path = final_path.with_extension("tmp");
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, File::create(&tmp_path)?),
            crc: 0,
            tmp_path,
            final_path,
            dir: self.dir.clone(),
        };
        w.write_all(MAGIC)?;
        w.write_all(&term.to_le_bytes())?;
        w.write_all(&index.to_le_bytes())?;
        Ok(w)
    }

    /// A file being received from a peer: raw bytes as they come off the wire,
    /// under a temporary name no other copy uses.
    pub fn create_incoming(&self, term: u64, index: u64) -> io::Result<(File, PathBuf)> {
        let n = INCOMING.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .path(term, index)
            .with_extension(format!("{n}.incoming.tmp"));
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        Ok((file, tmp))
    }

    /// Makes a fully received incoming file the snapshot at (`term`, `index`)
    /// once its header and trailer check out and `load` accepts its body (read
    /// in the same pass); returns what `load` made. A copy that fails either is
    /// removed and never replaces anything. Installing a second identical copy
    /// is harmless: the rename swaps equal files atomically.
    pub fn install_incoming<T>(
        &self,
        file: File,
        tmp: &Path,
        term: u64,
        index: u64,
        load: impl FnOnce(&mut VerifiedBody) -> io::Result<T>,
    ) -> io::Result<T> {
        let installed = (|| {
            file.sync_all()?;
            drop(file);
            let mut body = verified_body(tmp, term, index)?;
            let loaded = load(&mut body)?;
            // Whatever `load` left unread is still checked against the trailer.
            io::copy(&mut body, &mut io::sink())?;
            fs::rename(tmp, self.path(term, index))?;
            sync_dir(&self.dir)?;
            Ok(loaded)
        })();
        if installed.is_err() {
            let _ = fs::remove_file(tmp);
        }
        installed
    }

    /// Bytes the data volume still has for unprivileged writers (statvfs).
    pub fn free_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is NUL-terminated and `st` is written by a successful call.
        let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// A reader over the body of the snapshot at (`term`, `index`); reading it to
    /// the end verifies the checksum (a mismatch is an error there).
    pub fn open_body(&self, term: u64, index: u64) -> io::Result<VerifiedBody> {
        verified_body(&self.path(term, index), term, index)
    }

    /// The term and path of the snapshot file at `index`, if one exists.
    pub fn find(&self, index: u64) -> io::Result<Option<(u64, PathBuf)>> {
        let suffix = format!("-{index:020}.snap");
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if let Some(term) = name
                .strip_prefix("snap-")
                .and_then(|n| n.strip_suffix(&suffix))
                .and_then(|t| t.parse().ok())
            {
                return Ok(Some((term, path)));
            }
        }
        Ok(None)
    }

    /// Deletes snapshot files except `current` (the one the snapshot metadata
    /// names) and the newest other one.
    pub fn prune(&self, current: (u64, u64)) -> io::Result<()> {
        let keep = self.path(current.0, current.1);
        let mut others: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "snap") && *p != keep)
            .collect();
        // Zero-padded names sort by term, then index.
        others.sort();
        let excess = others.len().saturating_sub(KEEP_OLDER);
        for old in &others[..excess] {
            fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// A snapshot file anywhere (a backup): its term, index and a reader over its
/// body that verifies the checksum as it is read to the end.
pub fn open_backup(path: &Path) -> io::Result<(u64, u64, VerifiedBody)> {
    let mut header = [0u8; HEADER_LEN as usize];
    File::open(path)?
        .read_exact(&mut header)
        .map_err(|_| corrupt(path, "shorter than a snapshot header"))?;
    if &header[..8] != MAGIC {
        return Err(corrupt(path, "not a raftlane snapshot or backup"));
    }
    let word =
        |r: std::ops::Range<usize>| u64::from_le_bytes(header[r].try_into().expect("8 bytes"));
    let (term, index) = (word(8..16), word(16..24));
    Ok((term, index, verified_body(path, term, index)?))
}

/// Checks a file's header against (`term`, `index`) and returns a reader over
/// its body that checks the trailer checksum as it is read: reaching the end of
/// a corrupt body is an error, so loading and verifying is one pass.
fn verified_body(path: &Path, term: u64, index: u64) -> io::Result<VerifiedBody> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(corrupt(path, "shorter than header and trailer"));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut header)?;
    if &header[..8] != MAGIC
        || header[8..16] != term.to_le_bytes()
        || header[16..24] != index.to_le_bytes()
    {
        return Err(corrupt(path, "header does not match its term and index"));
    }
    Ok(VerifiedBody {
        body: reader.take(len - HEADER_LEN - TRAILER_LEN),
        crc: crc32c::crc32c(&header),
        checked: false,
        path: path.to_path_buf(),
    })
}

/// A snapshot body whose checksum is compared with the trailer at its end.
pub struct VerifiedBody {
    body: io::Take<BufReader<File>>,
    crc: u32,
    checked: bool,
    path: PathBuf,
}

impl Read for VerifiedBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.body.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        if n == 0 && !buf.is_empty() && !self.checked {
            let mut trailer = [0u8; TRAILER_LEN as usize];
            self.body.get_mut().read_exact(&mut trailer)?;
            if u32::from_le_bytes(trailer) != self.crc {
                return Err(corrupt(&self.path, "checksum mismatch"));
            }
            self.checked = true;
        }
        Ok(n)
    }
}

/// Writes a snapshot body, keeping the running checksum; `finish` makes it durable.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    crc: u32,
    tmp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl SnapshotWriter {
    /// Appends the checksum, fsyncs, and moves the file to its final name.
    pub fn finish(mut self) -> io::Result<PathBuf> {
        let crc = self.crc;
        self.out.write_all(&crc.to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp_path, &self.final_path)?;
        sync_dir(&self.dir)?;
        Ok(self.final_path)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot file {}: {why}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(store: &SnapshotStore, term: u64, index: u64, body: &[u8]) -> PathBuf {
        let mut w = store.create(term, index).unwrap();
        w.write_all(body).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let path = write(&store, 2, 40, b"hello snapshot");
        let mut body = Vec::new();
        store
            .open_body(2, 40)
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body, b"hello snapshot");

        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN as usize + 1] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        // Found while reading: loading and verifying are one pass.
        let err = store
            .open_body(2, 40)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_bad_incoming_copy_never_replaces_a_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        write(&store, 1, 10, b"good body");
        let (mut f, tmp) = store.create_incoming(1, 10).unwrap();
        f.write_all(b"RLSNAP01 but truncated").unwrap();
        assert!(store.install_incoming(f, &tmp, 1, 10, |_| Ok(())).is_err());
        assert!(!tmp.exists(), "the bad copy is removed");
        let mut body = Vec::new();
        store
            .open_body(1, 10)
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body, b"good body");
    }

    /// Raw bytes of a valid snapshot file at (`term`, `index`) with `body`.
    fn file_bytes(term: u64, index: u64, body: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        fs::read(write(&store, term, index, body)).unwrap()
    }

    fn read_all(body: &mut VerifiedBody) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        body.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn concurrent_copies_of_one_snapshot_never_share_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let bytes = file_bytes(3, 30, b"the same body");
        let (mut a, tmp_a) = store.create_incoming(3, 30).unwrap();
        let (mut b, tmp_b) = store.create_incoming(3, 30).unwrap();
        assert_ne!(tmp_a, tmp_b);
        // Interleaved writes, as two transfers running at once.
        let (head, tail) = bytes.split_at(10);
        a.write_all(head).unwrap();
        b.write_all(head).unwrap();
        a.write_all(tail).unwrap();
        b.write_all(tail).unwrap();
        let got_a = store.install_incoming(a, &tmp_a, 3, 30, read_all).unwrap();
        // The second identical copy replaces the first harmlessly.
        let got_b = store.install_incoming(b, &tmp_b, 3, 30, read_all).unwrap();
        assert_eq!(
            (got_a.as_slice(), got_b.as_slice()),
            (&b"the same body"[..], &b"the same body"[..])
        );
        assert_eq!(
            read_all(&mut store.open_body(3, 30).unwrap()).unwrap(),
            b"the same body"
        );
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the installed file is left");
    }

    #[test]
    fn a_copy_whose_body_does_not_load_is_removed_and_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        write(&store, 1, 10, b"good body");
        let (mut f, tmp) = store.create_incoming(1, 10).unwrap();
        f.write_all(&file_bytes(1, 10, b"other body")).unwrap();
        let err = store
            .install_incoming(f, &tmp, 1, 10, |_| -> io::Result<()> {
                Err(io::Error::new(io::ErrorKind::InvalidData, "body refused"))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "body refused");
        assert!(!tmp.exists());
        assert_eq!(
            read_all(&mut store.open_body(1, 10).unwrap()).unwrap(),
            b"good body"
        );
    }

    #[test]
    fn a_body_the_loader_leaves_unread_is_still_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut bytes = file_bytes(1, 10, b"some body");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // the trailer no longer matches
        let (mut f, tmp) = store.create_incoming(1, 10).unwrap();
        f.write_all(&bytes).unwrap();
        let err = store
            .install_incoming(f, &tmp, 1, 10, |_| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(!store.path(1, 10).exists());
    }

    #[test]
    fn free_bytes_reports_the_data_volume() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.free_bytes().unwrap() > 0);
    }

    #[test]
    fn prune_keeps_the_current_and_the_newest_other_and_open_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        for i in 1..=4 {
            write(&store, 1, i * 10, b"x");
        }
        fs::write(dir.path().join("snap-x.tmp"), b"partial").unwrap();
        // The metadata names index 20; 30 and 40 arrived but were never applied.
        store.prune((1, 20)).unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                store
                    .path(1, 20)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string(),
                store
                    .path(1, 40)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string(),
            ]
        );
    }
}
