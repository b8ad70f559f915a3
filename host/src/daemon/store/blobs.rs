//! The content-addressed blobs: components as uploaded, one file per digest under
//! `blobs/`, written whole or not at all, checked against their digest when read, and
//! collected once no stored apply names them.

use std::io::Write as _;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use redb::ReadableTable as _;

use super::{APPLIES, ApplyRecord, BLOB_GRACE, Store, StoreError, db_err};

/// The `sha256:` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether `digest` is a well-formed `sha256:` digest (64 lowercase hex digits).
pub fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A blob being written: bytes go to a temporary file and into its digest; `finish`
/// puts it in place under its digest. Dropped unfinished, the temporary file goes.
pub struct BlobWriter<'a> {
    store: &'a Store,
    tmp: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter<'_> {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(bytes);
        self.len = self.len.saturating_add(bytes.len() as u64);
        self.file.write_all(bytes).map_err(|source| StoreError::Io {
            what: "cannot write",
            path: self.tmp.clone(),
            source,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Syncs the blob and puts it in place, whole or not at all; with `expected`, only
    /// if its bytes hash to that digest. Returns the digest.
    pub fn finish(mut self, expected: Option<&str>) -> Result<String, StoreError> {
        let hash = std::mem::take(&mut self.hasher).finalize();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let digest = format!("sha256:{hex}");
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(StoreError::Mismatch {
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let io = |what, source| StoreError::Io {
            what,
            path: self.tmp.clone(),
            source,
        };
        self.file.sync_all().map_err(|e| io("cannot sync", e))?;
        let path = self.store.blob_path(&digest);
        std::fs::rename(&self.tmp, &path).map_err(|e| io("cannot rename", e))?;
        Ok(digest)
    }
}

impl Drop for BlobWriter<'_> {
    fn drop(&mut self) {
        // After `finish` the file was renamed away and this does nothing.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Store {
    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs
            .join(digest.replace(':', "-"))
            .with_extension("wasm")
    }

    /// Whether the blob with `digest` is stored.
    /// Whether the blob is stored whole: its bytes still hash to `digest`. A blob that
    /// does not (damaged on disk, or changed by hand) is removed, so that it is
    /// uploaded again.
    pub fn has_blob(&self, digest: &str) -> bool {
        if !is_digest(digest) {
            return false;
        }
        let path = self.blob_path(digest);
        match std::fs::read(&path) {
            Ok(bytes) if digest_of(&bytes) == digest => true,
            Ok(_) => {
                tracing::warn!(
                    "blob {} no longer matches its digest; removed, to be uploaded again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(_) => false,
        }
    }

    /// Removes blobs no stored apply names, and temporary files an interrupted upload
    /// left, once they are older than [`BLOB_GRACE`] (a blob just uploaded for an apply
    /// still on its way stays); returns how many files went.
    pub fn collect_blobs(&self) -> Result<usize, StoreError> {
        let mut named = std::collections::BTreeSet::new();
        let txn = self.begin_read()?;
        let applies = txn.open_table(APPLIES).map_err(db_err)?;
        for entry in applies.iter().map_err(db_err)? {
            let (_, json) = entry.map_err(db_err)?;
            if let Ok(record) = serde_json::from_str::<ApplyRecord>(json.value()) {
                named.extend(record.files.values().map(|d| self.blob_path(d)));
            }
        }
        drop(txn);
        let entries = std::fs::read_dir(&self.blobs).map_err(|source| StoreError::Io {
            what: "cannot list",
            path: self.blobs.clone(),
            source,
        })?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < BLOB_GRACE));
            if !named.contains(&path) && !young && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stores `bytes` under their digest (whole or not at all) and returns the digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = digest_of(bytes);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut blob = self.new_blob()?;
        blob.write(bytes)?;
        blob.finish(Some(&digest))
    }

    /// Starts writing a blob piece by piece (an upload streamed as it arrives): into a
    /// temporary file private to the daemon's user, hashed as it is written.
    pub fn new_blob(&self) -> Result<BlobWriter<'_>, StoreError> {
        let tmp = self.blobs.join(format!("upload.tmp-{}", fastrand::u64(..)));
        let file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|source| StoreError::Io {
                    what: "cannot create",
                    path: tmp.clone(),
                    source,
                })?
        };
        Ok(BlobWriter {
            store: self,
            tmp,
            file,
            hasher: Sha256::new(),
            len: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put_blob(b"\0asm").unwrap();
        assert!(is_digest(&digest));
        assert_eq!(digest, digest_of(b"\0asm"));
        assert!(store.has_blob(&digest));
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), b"\0asm");
        assert!(!store.has_blob("sha256:../../etc/passwd"));
        assert!(!is_digest("sha256:ABC"));
    }

    #[test]
    fn a_streamed_blob_lands_only_under_its_own_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut blob = store.new_blob().unwrap();
        blob.write(b"\0as").unwrap();
        blob.write(b"m").unwrap();
        let wrong = digest_of(b"other");
        assert!(matches!(
            blob.finish(Some(&wrong)),
            Err(StoreError::Mismatch { .. })
        ));
        let files = || std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert_eq!(files(), 0, "a refused upload left a file behind");
        let mut blob = store.new_blob().unwrap();
        blob.write(b"\0asm").unwrap();
        let digest = blob.finish(Some(&digest_of(b"\0asm"))).unwrap();
        assert!(store.has_blob(&digest));
        assert_eq!(files(), 1);
    }
}
