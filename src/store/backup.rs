//! Backups: every tree of the store copied at one point in time into one file, and the restore of
//! such a file into an empty directory.
//!
//! The file: `crmsync-backup\n` and a NUL (16 bytes), the backup version (u32) and the store format
//! version (u32); then one frame per tree (`T`, name) followed by its entries (`E`, key, value),
//! lengths as u32, integers big-endian; then `Z`, the entry count (u64) and the SHA-256 of every
//! byte before `Z`. A restore checks the digest before the restored store is put in place, so a
//! truncated or damaged file never becomes a store.
//!
//! A backup holds the commit gate while it is written ([`Store::write_backup`]): the copy is one
//! point in time across every tree (records, cursors and outbox always agree), and the ingest
//! writer waits meanwhile. A backup sent to a client is first written to a file in the store's
//! directory ([`Store::snapshot_backup`]), so the writer waits for the disk, never for the client.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{FORMAT_VERSION, Store, StoreError};

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 16] = b"crmsync-backup\n\0";
/// The version of the backup file layout.
pub const BACKUP_VERSION: u32 = 1;

/// What a backup or a restore copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    /// Trees copied.
    pub trees: u64,
    /// Entries copied.
    pub entries: u64,
    /// Bytes of the backup file.
    pub bytes: u64,
    /// The store format version of the copied data.
    pub format_version: u32,
}

/// A backup or restore that failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the backup file failed.
    #[error("backup file I/O failed")]
    Io(#[from] std::io::Error),
    /// The file is not a crmsync backup.
    #[error("not a crmsync backup file")]
    NotABackup,
    /// The file was made by a newer crmsync.
    #[error(
        "the backup has layout {backup} and store format {format}; this crmsync reads layout {BACKUP_VERSION} and store formats up to {FORMAT_VERSION}: restore it with a newer crmsync"
    )]
    TooNew {
        /// Backup layout version.
        backup: u32,
        /// Store format version.
        format: u32,
    },
    /// The file is truncated or damaged.
    #[error("the backup file is damaged: {0}")]
    Damaged(String),
    /// The target directory already holds a store.
    #[error("{} already holds a store; stop crmsync and move it aside first (restore never overwrites a store)", .0.display())]
    NotEmpty(PathBuf),
}

/// Hashes everything written through it.
struct Hashing<W> {
    inner: W,
    digest: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.digest.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> Result<(), BackupError> {
    let length = u32::try_from(bytes.len()).map_err(|_| BackupError::Damaged("a value larger than 4 GiB".into()))?;
    out.write_all(&length.to_be_bytes())?;
    out.write_all(bytes)?;
    Ok(())
}

impl Store {
    /// Writes a backup of every tree to `out` (see the module docs). Commits wait until it is done.
    pub fn write_backup(&self, out: &mut dyn Write) -> Result<BackupSummary, BackupError> {
        let _gate = self.shared.gate.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = self.trees()?;
        let mut out =
            Hashing { inner: std::io::BufWriter::with_capacity(1 << 16, out), digest: Sha256::new(), bytes: 0 };
        out.write_all(MAGIC)?;
        out.write_all(&BACKUP_VERSION.to_be_bytes())?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        let (mut trees, mut entries) = (0u64, 0u64);
        for name in t.db.tree_names() {
            let tree = t.db.open_tree(&name).map_err(StoreError::from)?;
            out.write_all(b"T")?;
            put_bytes(&mut out, &name)?;
            trees += 1;
            for entry in tree.iter() {
                let (key, value) = entry.map_err(StoreError::from)?;
                out.write_all(b"E")?;
                put_bytes(&mut out, &key)?;
                put_bytes(&mut out, &value)?;
                entries += 1;
            }
        }
        out.write_all(b"Z")?;
        out.write_all(&entries.to_be_bytes())?;
        let digest = out.digest.clone().finalize();
        out.inner.write_all(&digest)?;
        out.inner.flush()?;
        Ok(BackupSummary { trees, entries, bytes: out.bytes + digest.len() as u64, format_version: FORMAT_VERSION })
    }
}

impl Store {
    /// Writes a backup into an unnamed temporary file in the store's directory and returns it,
    /// rewound, with its summary: the commit gate is held only while the file is written, and what
    /// reads the file afterwards (a slow client) holds nothing. The file has no name, so it is gone
    /// once closed, even after a crash; it needs as much free space as the backup's size.
    pub fn snapshot_backup(&self) -> Result<(std::fs::File, BackupSummary), BackupError> {
        use std::io::Seek;
        let mut file = tempfile::tempfile_in(self.path())?;
        let summary = self.write_backup(&mut file)?;
        file.sync_data()?;
        file.rewind()?;
        Ok((file, summary))
    }
}

/// Reads exactly `N` bytes, hashing them.
fn take<const N: usize>(input: &mut impl Read, digest: &mut Sha256) -> Result<[u8; N], BackupError> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes).map_err(truncated)?;
    digest.update(bytes);
    Ok(bytes)
}

fn take_vec(input: &mut impl Read, digest: &mut Sha256) -> Result<Vec<u8>, BackupError> {
    let length = u32::from_be_bytes(take::<4>(input, digest)?) as usize;
    let mut bytes = Vec::new();
    input.take(length as u64).read_to_end(&mut bytes)?;
    if bytes.len() != length {
        return Err(BackupError::Damaged("the file ends in the middle of an entry".into()));
    }
    digest.update(&bytes);
    Ok(bytes)
}

fn truncated(error: std::io::Error) -> BackupError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        BackupError::Damaged("the file ends before its end marker".into())
    } else {
        BackupError::Io(error)
    }
}

/// Restores a backup into `dir`, which must hold no store (it is created if missing). The data is
/// written to `dir/.restoring` first and moved into place only once the whole file has been read
/// and its digest checked. The restored store is opened (and migrated, if older) by the next start.
pub fn restore_backup(dir: &Path, input: &mut dyn Read) -> Result<BackupSummary, BackupError> {
    if dir.join("db").exists() {
        return Err(BackupError::NotEmpty(dir.to_path_buf()));
    }
    super::permissions::create_private_dir(dir)?;
    let staging = dir.join(".restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let summary = match read_backup(Some(&staging), &mut std::io::BufReader::with_capacity(1 << 16, input)) {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    // sled's `db` file last: a restore interrupted here leaves no `db`, so no half store opens.
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(&staging)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name() == "db");
    for entry in entries {
        std::fs::rename(entry.path(), dir.join(entry.file_name()))?;
    }
    std::fs::remove_dir(&staging)?;
    Ok(summary)
}

/// Reads a whole backup and checks its digest, without writing anything (what `crmsync backup`
/// does with the file it has just written).
pub fn verify_backup(input: &mut dyn Read) -> Result<BackupSummary, BackupError> {
    read_backup(None, &mut std::io::BufReader::with_capacity(1 << 16, input))
}

/// Reads a backup; with `staging`, writes its trees into a new sled database there.
fn read_backup(staging: Option<&Path>, input: &mut impl Read) -> Result<BackupSummary, BackupError> {
    let mut digest = Sha256::new();
    let magic = take::<16>(input, &mut digest).map_err(|_| BackupError::NotABackup)?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let backup = u32::from_be_bytes(take::<4>(input, &mut digest)?);
    let format = u32::from_be_bytes(take::<4>(input, &mut digest)?);
    if backup > BACKUP_VERSION || format > FORMAT_VERSION {
        return Err(BackupError::TooNew { backup, format });
    }
    // A plain sled database (not `Store::open`, which would write its own format version first).
    let db = match staging {
        Some(dir) => {
            super::permissions::create_private_dir(dir)?;
            Some(sled::Config::new().path(dir).open().map_err(StoreError::from)?)
        }
        None => None,
    };
    let (mut trees, mut entries, mut bytes) = (0u64, 0u64, 24u64);
    let mut tree: Option<sled::Tree> = None;
    let mut started = false;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let apply = |tree: &Option<sled::Tree>, batch: sled::Batch| -> Result<(), BackupError> {
        if let Some(tree) = tree {
            tree.apply_batch(batch).map_err(StoreError::from)?;
        }
        Ok(())
    };
    loop {
        let [tag] = take::<1>(input, &mut digest)?;
        bytes += 1;
        match tag {
            b'T' => {
                apply(&tree, std::mem::take(&mut batch))?;
                pending = 0;
                let name = take_vec(input, &mut digest)?;
                bytes += 4 + name.len() as u64;
                tree = match &db {
                    Some(db) => Some(db.open_tree(name).map_err(StoreError::from)?),
                    None => None,
                };
                started = true;
                trees += 1;
            }
            b'E' => {
                let key = take_vec(input, &mut digest)?;
                let value = take_vec(input, &mut digest)?;
                bytes += 8 + (key.len() + value.len()) as u64;
                if !started {
                    return Err(BackupError::Damaged("an entry before any tree".into()));
                }
                if tree.is_some() {
                    batch.insert(key, value);
                    pending += 1;
                }
                entries += 1;
                if pending == 10_000 {
                    apply(&tree, std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
            b'Z' => break,
            other => return Err(BackupError::Damaged(format!("unknown frame {other:#04x}"))),
        }
    }
    apply(&tree, batch)?;
    let counted = u64::from_be_bytes(take::<8>(input, &mut digest)?);
    let expected = digest.finalize();
    let mut found = [0u8; 32];
    input.read_exact(&mut found).map_err(truncated)?;
    if found.as_slice() != expected.as_slice() || counted != entries {
        return Err(BackupError::Damaged("its checksum does not match its contents".into()));
    }
    if let (Some(db), Some(dir)) = (db, staging) {
        db.flush().map_err(StoreError::from)?;
        drop(db);
        super::permissions::restrict_contents(dir)?;
    }
    Ok(BackupSummary { trees, entries, bytes: bytes + 8 + 32, format_version: format })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crmsync_connectors::canonical::ConnectionId;

    use super::*;

    #[test]
    fn a_backup_restores_to_the_same_store_and_a_damaged_or_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let sf = ConnectionId::new("sf");
        store.save_state(&sf, "note", "kept").unwrap();
        let mut bytes = Vec::new();
        let written = store.write_backup(&mut bytes).unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(verify_backup(&mut bytes.as_slice()).unwrap(), written);

        let target = dir.path().join("restored");
        assert_eq!(restore_backup(&target, &mut bytes.as_slice()).unwrap(), written);
        let reopened = Store::open(&target).unwrap();
        assert_eq!(reopened.load_state(&sf, "note").unwrap().as_deref(), Some("kept"));
        drop(reopened);
        // Never over a store.
        assert!(matches!(restore_backup(&target, &mut bytes.as_slice()), Err(BackupError::NotEmpty(_))));

        // One byte changed anywhere in the body: refused, and nothing is put in place.
        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x40;
        let elsewhere = dir.path().join("damaged");
        assert!(matches!(restore_backup(&elsewhere, &mut damaged.as_slice()), Err(BackupError::Damaged(_))));
        assert!(!elsewhere.join("db").exists() && !elsewhere.join(".restoring").exists());
        // Cut short: refused too.
        let cut = &bytes[..bytes.len() - 10];
        assert!(matches!(verify_backup(&mut &cut[..]), Err(BackupError::Damaged(_))));
        // A newer store format than this binary reads, and a file that is no backup at all.
        let mut newer = bytes.clone();
        newer[20..24].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
        assert!(matches!(verify_backup(&mut newer.as_slice()), Err(BackupError::TooNew { .. })));
        assert!(matches!(verify_backup(&mut &b"not a backup at all"[..]), Err(BackupError::NotABackup)));
    }
}
