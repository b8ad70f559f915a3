//! The daemon's durable state: applied manifests (redb, one transactional file) and the
//! components they name (a content-addressed directory of blobs).
//!
//! An apply is one record: the manifest documents as the user wrote them and, for each
//! component or plugin path they name, the digest of the uploaded file. Each workload
//! name points at the apply that defines it now; an apply no workload points at is
//! deleted in the same transaction. Replaying the records that are still pointed at
//! rebuilds the desired state exactly, with errors located in the user's own files.
//!
//! Crash safety: a blob is written to a temporary file, synced, then renamed into place,
//! so a blob file is whole or absent; redb commits are atomic and durable. A record is
//! committed only after every blob it names is in place.

mod blobs;
mod failures;
mod jobs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use blobs::{BlobWriter, digest_of, is_digest};

/// The file naming the process that holds the state directory.
const PID_FILE: &str = "daemon.pid";
/// Apply id → the JSON of its [`ApplyRecord`].
const APPLIES: TableDefinition<u64, &str> = TableDefinition::new("applies");
/// Workload name → the apply that defines it.
const OWNERS: TableDefinition<&str, u64> = TableDefinition::new("owners");
/// Counters (`next_apply`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Job name → its [`crate::job::JobProgress`], as [`crate::job::JobProgress::to_stored`] writes it.
const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");
/// (workload name, sequence number) → the JSON of a [`HistoryEntry`]: the revisions a
/// workload has had, newest last, at most [`HISTORY_LIMIT`].
const HISTORY: TableDefinition<(&str, u64), &str> = TableDefinition::new("history");
/// How old an unreferenced blob or temporary file must be before it is collected.
pub const BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(600);
/// Revisions kept per workload (Kubernetes' revisionHistoryLimit default).
pub const HISTORY_LIMIT: usize = 10;
/// A watched manifest file's path → the JSON list of the names it defines.
const WATCHED: TableDefinition<&str, &str> = TableDefinition::new("watched");
/// Sequence number → the JSON of a recent event (the newest few only).
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
/// Apply id → why it is not replayed: the daemon died while replaying it.
const QUARANTINED: TableDefinition<u64, &str> = TableDefinition::new("quarantined");
/// Workload name → when it was first applied (seconds since the Unix epoch), kept
/// until it is deleted: its AGE.
const CREATED: TableDefinition<&str, u64> = TableDefinition::new("created");
/// Workload name → the JSON of its [`crate::admission::RecordedFailure`].
const FAILED: TableDefinition<&str, &str> = TableDefinition::new("failed");
/// The `META` key naming the apply being replayed (absent when none is).
const REPLAYING: &str = "replaying";
/// The `META` key counting deaths in a row during the recorded replay.
const REPLAY_DEATHS: &str = "replay_deaths";

/// One manifest document set as applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApplyRecord {
    /// The files as sent: their names (for errors) and text.
    pub documents: Vec<Document>,
    /// Each component or plugin path the documents name (joined onto the manifest's
    /// directory, as the client resolved it) → the `sha256:` digest of its bytes.
    pub files: BTreeMap<String, String>,
    /// When it was applied, in seconds since the Unix epoch.
    pub applied_at: u64,
    /// Each granted host directory → which directory it was at apply. A restart grants
    /// a path only while it still names that directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dirs: BTreeMap<String, crate::opened_dir::DirIdentity>,
    /// Replica counts that replace what the documents say, by workload (an automatic
    /// rollback keeps the scale the workload had).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replicas: BTreeMap<String, u32>,
}

/// One revision a workload has had: which apply defined it, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The revision.
    pub revision: String,
    /// The apply whose documents define it (kept while the history names it).
    pub apply: u64,
    /// When it was applied, in seconds since the Unix epoch.
    pub applied_at: u64,
}

/// A manifest file's name and text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Document {
    /// The file's path on the client, which names it in errors.
    pub source: String,
    /// Its YAML text.
    pub text: String,
}

/// The state directory's store.
pub struct Store {
    /// The database, or `None` while it could not be reopened.
    db: std::sync::RwLock<Option<Database>>,
    /// Its file.
    path: PathBuf,
    /// Set when a write failed: redb then refuses every later write ("previous I/O
    /// error"), so the next operation reopens the database first.
    broken: std::sync::atomic::AtomicBool,
    blobs: PathBuf,
}

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("state database: {0}")]
    Db(String),
    /// A file operation failed.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An uploaded blob's bytes do not hash to the digest it was sent under.
    #[error("the bytes' digest is {actual}, not {expected}")]
    Mismatch {
        /// The digest named.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// The database is missing or empty, though blobs are stored beside it.
    #[error(
        "{} is missing or empty, but {blobs} component blob(s) are stored beside it: the desired state was lost or moved. Restore the file, or move {} aside to start afresh, or start with --accept-empty-store to begin empty here",
        db.display(),
        state_dir.display()
    )]
    Lost {
        /// The database file.
        db: PathBuf,
        /// How many blobs there are.
        blobs: usize,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// Another process (a daemon) holds the state directory's database.
    #[error("another daemon is running on the state directory {}{}; stop it, or give this one another --state-dir", state_dir.display(), pid.map_or(String::new(), |p| format!(" (pid {p})")))]
    InUse {
        /// The state directory.
        state_dir: PathBuf,
        /// The holder's process id, as its pid file says.
        pid: Option<u32>,
    },
    /// The database failed to write and could not be reopened yet.
    #[error("the state database is unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back.
    #[error("stored apply {id} is unreadable: {message}")]
    Corrupt {
        /// The apply.
        id: u64,
        /// Why.
        message: String,
    },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl Store {
    /// Opens the store like [`Store::open`], but refuses a database that is missing or
    /// empty while component blobs are stored (state lost or moved: starting empty
    /// would silently forget every acknowledged apply), unless `accept_empty`.
    pub fn open_checked(state_dir: &Path, accept_empty: bool) -> Result<Self, StoreError> {
        let db = state_dir.join("state.redb");
        let empty = std::fs::metadata(&db).map_or(true, |m| m.len() == 0);
        let blobs = std::fs::read_dir(state_dir.join("blobs"))
            .map(|d| d.flatten().count())
            .unwrap_or(0);
        if empty && blobs > 0 && !accept_empty {
            return Err(StoreError::Lost {
                db,
                blobs,
                state_dir: state_dir.to_path_buf(),
            });
        }
        Self::open(state_dir)
    }

    /// Opens (or creates) the store in `state_dir`, which is created with mode 0700.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let blobs = state_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|source| StoreError::Io {
            what: "cannot create",
            path: blobs.clone(),
            source,
        })?;
        restrict(state_dir)?;
        let path = state_dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                state_dir: state_dir.to_path_buf(),
                pid: std::fs::read_to_string(state_dir.join(PID_FILE))
                    .ok()
                    .and_then(|t| t.trim().parse().ok()),
            },
            other => db_err(other),
        })?;
        // Held: this process owns the state directory now. The file only names who
        // does, for the message above (a stale one after a crash misleads nobody: the
        // database's lock, not the file, says whether a daemon runs).
        let _ = std::fs::write(
            state_dir.join(PID_FILE),
            format!("{}\n", std::process::id()),
        );
        let store = Self {
            db: std::sync::RwLock::new(Some(db)),
            path,
            broken: std::sync::atomic::AtomicBool::new(false),
            blobs,
        };
        // Create the tables, so that readers never meet a missing one.
        let txn = store.begin_write()?;
        txn.open_table(APPLIES).map_err(db_err)?;
        txn.open_table(OWNERS).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(JOBS).map_err(db_err)?;
        txn.open_table(EVENTS).map_err(db_err)?;
        txn.open_table(HISTORY).map_err(db_err)?;
        txn.open_table(WATCHED).map_err(db_err)?;
        txn.open_table(QUARANTINED).map_err(db_err)?;
        store.commit(txn)?;
        Ok(store)
    }

    /// Reopens the database if a write failed since it was opened.
    fn heal(&self) {
        use std::sync::atomic::Ordering;
        if !self.broken.load(Ordering::Acquire) {
            return;
        }
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.broken.load(Ordering::Acquire) {
            return;
        }
        // The old handle must be gone before the file can be opened again.
        *db = None;
        match Database::create(&self.path) {
            Ok(fresh) => {
                tracing::info!("the state database was reopened after a failed write");
                *db = Some(fresh);
                self.broken.store(false, Ordering::Release);
            }
            Err(e) => tracing::warn!("the state database cannot be reopened yet: {e}"),
        }
    }

    /// Notes that a write failed, and passes its error on.
    fn broke(&self, e: impl std::fmt::Display) -> StoreError {
        self.broken
            .store(true, std::sync::atomic::Ordering::Release);
        StoreError::Db(e.to_string())
    }

    /// Runs `f` on the database, reopened first if a write failed since.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.heal();
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = db.as_ref().ok_or_else(|| {
            StoreError::Unavailable("a write failed and it could not be reopened yet".into())
        })?;
        f(db)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.with_db(|db| db.begin_write().map_err(|e| self.broke(e)))
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.with_db(|db| db.begin_read().map_err(db_err))
    }

    /// Commits `txn`; a failure marks the database for reopening.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(|e| self.broke(e))
    }

    /// Records that apply `id` is being replayed (durably, before the host runs it), or
    /// with `None` that no replay is under way. A start that finds a replay recorded
    /// knows that the daemon died during it.
    pub fn set_replaying(&self, id: Option<u64>) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            match id {
                Some(id) => meta.insert(REPLAYING, id).map(drop).map_err(db_err)?,
                None => {
                    meta.remove(REPLAYING).map_err(db_err)?;
                    meta.remove(REPLAY_DEATHS).map_err(db_err)?;
                }
            }
        }
        self.commit(txn)
    }

    /// Counts one more death during a replay (see [`Store::set_replaying`]) and returns
    /// how many there have been in a row.
    pub fn note_replay_death(&self) -> Result<u64, StoreError> {
        let txn = self.begin_write()?;
        let deaths = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let deaths = meta
                .get(REPLAY_DEATHS)
                .map_err(db_err)?
                .map_or(0, |v| v.value())
                .saturating_add(1);
            meta.insert(REPLAY_DEATHS, deaths).map_err(db_err)?;
            deaths
        };
        self.commit(txn)?;
        Ok(deaths)
    }

    /// The apply a replay was under way for, if the daemon died during it.
    pub fn replaying(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(db_err)?;
        Ok(meta.get(REPLAYING).map_err(db_err)?.map(|v| v.value()))
    }

    /// Keeps apply `id` from being replayed again, for `reason`, until the workloads it
    /// defines are applied anew or deleted; ends any replay record.
    pub fn quarantine(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(QUARANTINED).map_err(db_err)?;
            table.insert(id, reason).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.remove(REPLAYING).map_err(db_err)?;
            meta.remove(REPLAY_DEATHS).map_err(db_err)?;
        }
        self.commit(txn)
    }

    /// The quarantined applies, with why.
    pub fn quarantined(&self) -> Result<BTreeMap<u64, String>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(QUARANTINED).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (id, reason) = entry.map_err(db_err)?;
            out.insert(id.value(), reason.value().to_string());
        }
        Ok(out)
    }

    /// Records an apply that defines `names` (replacing whatever defined them before)
    /// and returns its id. `revisions` (name, revision) are added to the workloads'
    /// histories where they are new.
    pub fn record_apply(
        &self,
        record: &ApplyRecord,
        names: &[String],
        revisions: &[(String, String)],
    ) -> Result<u64, StoreError> {
        let json = serde_json::to_string(record).map_err(db_err)?;
        let txn = self.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let id = meta
                .get("next_apply")
                .map_err(db_err)?
                .map_or(1, |v| v.value());
            meta.insert("next_apply", id + 1).map_err(db_err)?;
            let mut applies = txn.open_table(APPLIES).map_err(db_err)?;
            applies.insert(id, json.as_str()).map_err(db_err)?;
            let mut owners = txn.open_table(OWNERS).map_err(db_err)?;
            let mut created = txn.open_table(CREATED).map_err(db_err)?;
            for name in names {
                owners.insert(name.as_str(), id).map_err(db_err)?;
                if created.get(name.as_str()).map_err(db_err)?.is_none() {
                    created
                        .insert(name.as_str(), record.applied_at)
                        .map_err(db_err)?;
                }
            }
            let mut history = txn.open_table(HISTORY).map_err(db_err)?;
            for (name, revision) in revisions {
                // A revision appears once: applied again (a rollback, a scale), it
                // moves to the end with the newer apply.
                history
                    .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |_, json| {
                        serde_json::from_str::<HistoryEntry>(json)
                            .is_ok_and(|e| e.revision != *revision)
                    })
                    .map_err(db_err)?;
                let seq = history
                    .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                    .map_err(db_err)?
                    .next_back()
                    .transpose()
                    .map_err(db_err)?
                    .map_or(0, |(k, _)| k.value().1 + 1);
                let entry = HistoryEntry {
                    revision: revision.clone(),
                    apply: id,
                    applied_at: record.applied_at,
                };
                let json = serde_json::to_string(&entry).map_err(db_err)?;
                history
                    .insert((name.as_str(), seq), json.as_str())
                    .map_err(db_err)?;
                let seqs: Vec<u64> = history
                    .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                    .map_err(db_err)?
                    .map(|e| e.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for old in &seqs[..seqs.len().saturating_sub(HISTORY_LIMIT)] {
                    history.remove((name.as_str(), *old)).map_err(db_err)?;
                }
            }
            id
        };
        collect_unowned(&txn)?;
        self.commit(txn)?;
        Ok(id)
    }

    /// Forgets workload or job `name` (a job's progress with it); false if it was not
    /// stored.
    pub fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.begin_write()?;
        let removed = {
            let mut owners = txn.open_table(OWNERS).map_err(db_err)?;
            let mut jobs = txn.open_table(JOBS).map_err(db_err)?;
            jobs.remove(name).map_err(db_err)?;
            let mut failed = txn.open_table(FAILED).map_err(db_err)?;
            failed.remove(name).map_err(db_err)?;
            let mut created = txn.open_table(CREATED).map_err(db_err)?;
            created.remove(name).map_err(db_err)?;
            let mut history = txn.open_table(HISTORY).map_err(db_err)?;
            history
                .retain_in((name, 0)..=(name, u64::MAX), |_, _| false)
                .map_err(db_err)?;
            owners.remove(name).map_err(db_err)?.is_some()
        };
        collect_unowned(&txn)?;
        self.commit(txn)?;
        Ok(removed)
    }

    /// When each stored workload was first applied (seconds since the Unix epoch).
    pub fn created(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(CREATED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (name, at) = row.map_err(db_err)?;
            out.insert(name.value().to_string(), at.value());
        }
        Ok(out)
    }

    /// Each watched file applied so far, with the names it defines.
    pub fn watched(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(WATCHED).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (path, json) = entry.map_err(db_err)?;
            let names = serde_json::from_str(json.value()).unwrap_or_default();
            out.insert(path.value().to_string(), names);
        }
        Ok(out)
    }

    /// Records the names watched file `path` defines; `None` forgets the file.
    pub fn set_watched(&self, path: &str, names: Option<&[String]>) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(WATCHED).map_err(db_err)?;
            match names {
                Some(names) => {
                    let json = serde_json::to_string(names).map_err(db_err)?;
                    table.insert(path, json.as_str()).map_err(db_err)?;
                }
                None => {
                    table.remove(path).map_err(db_err)?;
                }
            }
        }
        self.commit(txn)
    }

    /// The revisions workload `name` has had, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((name, 0)..=(name, u64::MAX)).map_err(db_err)? {
            let (_, json) = entry.map_err(db_err)?;
            let entry = serde_json::from_str(json.value()).map_err(|e| StoreError::Corrupt {
                id: 0,
                message: format!("history of `{name}`: {e}"),
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    /// The apply with id `id`, if it is still kept.
    pub fn apply_record(&self, id: u64) -> Result<Option<ApplyRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(APPLIES).map_err(db_err)?;
        let Some(json) = table.get(id).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_str(json.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                id,
                message: e.to_string(),
            })
    }

    /// Appends events, keeping only the newest `keep`.
    pub fn append_events(
        &self,
        events: &[serde_json::Value],
        keep: usize,
    ) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(EVENTS).map_err(db_err)?;
            let mut next = table
                .last()
                .map_err(db_err)?
                .map_or(0, |(k, _)| k.value() + 1);
            for event in events {
                table
                    .insert(next, event.to_string().as_str())
                    .map_err(db_err)?;
                next += 1;
            }
            let first_kept = next.saturating_sub(keep as u64);
            table
                .retain_in(..first_kept, |_, _| false)
                .map_err(db_err)?;
        }
        self.commit(txn)
    }

    /// The stored events, oldest first.
    pub fn recent_events(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, json) = entry.map_err(db_err)?;
            if let Ok(value) = serde_json::from_str(json.value()) {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// The desired state: each live apply with the workload names it still defines.
    pub fn desired(&self) -> Result<Vec<(u64, ApplyRecord, Vec<String>)>, StoreError> {
        let txn = self.begin_read()?;
        let owners = txn.open_table(OWNERS).map_err(db_err)?;
        let mut by_apply: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for entry in owners.iter().map_err(db_err)? {
            let (name, id) = entry.map_err(db_err)?;
            by_apply
                .entry(id.value())
                .or_default()
                .push(name.value().to_string());
        }
        let applies = txn.open_table(APPLIES).map_err(db_err)?;
        let mut out = Vec::new();
        for (id, names) in by_apply {
            let json = applies
                .get(id)
                .map_err(db_err)?
                .ok_or_else(|| StoreError::Corrupt {
                    id,
                    message: "missing".into(),
                })?;
            let record: ApplyRecord =
                serde_json::from_str(json.value()).map_err(|e| StoreError::Corrupt {
                    id,
                    message: e.to_string(),
                })?;
            out.push((id, record, names));
        }
        Ok(out)
    }
}

/// Deletes applies that no workload points at any more.
fn collect_unowned(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let owners = txn.open_table(OWNERS).map_err(db_err)?;
    let mut owned = std::collections::BTreeSet::new();
    for entry in owners.iter().map_err(db_err)? {
        owned.insert(entry.map_err(db_err)?.1.value());
    }
    // A revision in a history can be rolled back to: its apply stays too.
    let history = txn.open_table(HISTORY).map_err(db_err)?;
    for entry in history.iter().map_err(db_err)? {
        let (_, json) = entry.map_err(db_err)?;
        if let Ok(e) = serde_json::from_str::<HistoryEntry>(json.value()) {
            owned.insert(e.apply);
        }
    }
    let mut applies = txn.open_table(APPLIES).map_err(db_err)?;
    applies
        .retain(|id, _| owned.contains(&id))
        .map_err(db_err)?;
    // A quarantine ends with its apply: what replaced or deleted it is replayed instead.
    let mut quarantined = txn.open_table(QUARANTINED).map_err(db_err)?;
    let by_owners: std::collections::BTreeSet<u64> = owners
        .iter()
        .map_err(db_err)?
        .filter_map(|e| e.ok().map(|(_, id)| id.value()))
        .collect();
    quarantined
        .retain(|id, _| by_owners.contains(&id))
        .map_err(db_err)?;
    Ok(())
}

/// Makes `dir` private to its owner (0700), where the platform has modes.
fn restrict(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| StoreError::Io {
                what: "cannot restrict",
                path: dir.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str) -> ApplyRecord {
        ApplyRecord {
            documents: vec![Document {
                source: source.into(),
                text: "kind: Workload".into(),
            }],
            files: BTreeMap::new(),
            applied_at: 1,
            dirs: BTreeMap::new(),
            replicas: BTreeMap::new(),
        }
    }

    #[test]
    fn applies_replace_owners_and_unowned_applies_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store
            .record_apply(&record("a.yaml"), &["a".into(), "b".into()], &[])
            .unwrap();
        let second = store
            .record_apply(&record("b.yaml"), &["b".into()], &[])
            .unwrap();
        assert!(second > first);
        let desired = store.desired().unwrap();
        assert_eq!(desired.len(), 2);
        assert_eq!(desired[0].2, vec!["a".to_string()]);
        assert_eq!(desired[1].2, vec!["b".to_string()]);
        assert!(store.delete("a").unwrap());
        assert!(!store.delete("a").unwrap());
        let desired = store.desired().unwrap();
        assert_eq!(desired.len(), 1, "the first apply owns nothing and is gone");
        assert_eq!(desired[0].0, second);
        drop(store);
        // Reopened, the state is the same.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.desired().unwrap()[0].1, record("b.yaml"));
    }

    #[test]
    fn history_keeps_each_revision_once_the_last_ten_and_their_applies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let revisions = |store: &Store| -> Vec<String> {
            store
                .history("w")
                .unwrap()
                .into_iter()
                .map(|e| e.revision)
                .collect()
        };
        let apply = |rev: &str| {
            store
                .record_apply(&record(rev), &["w".into()], &[("w".into(), rev.into())])
                .unwrap()
        };
        let first = apply("r1");
        apply("r2");
        assert_eq!(revisions(&store), ["r1", "r2"]);
        // The first apply owns nothing now, but the history keeps it for a rollback.
        assert_eq!(store.apply_record(first).unwrap(), Some(record("r1")));
        apply("r1");
        assert_eq!(
            revisions(&store),
            ["r2", "r1"],
            "a revision appears once, newest last"
        );
        for i in 3..=13 {
            apply(&format!("r{i}"));
        }
        let kept = revisions(&store);
        assert_eq!(kept.len(), HISTORY_LIMIT);
        assert_eq!(kept.first().map(String::as_str), Some("r4"));
        assert_eq!(kept.last().map(String::as_str), Some("r13"));
        assert!(
            store.apply_record(first).unwrap().is_none(),
            "forgotten with its entry"
        );
        assert!(store.delete("w").unwrap());
        assert!(
            revisions(&store).is_empty(),
            "a delete takes the history along"
        );
    }
}
