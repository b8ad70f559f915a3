//! `setpoint daemon --watch DIR`: the manifests in a directory are desired state, for
//! devices provisioned by dropping files (Kubernetes' static pods, for setpoint).
//!
//! Each `*.yaml` / `*.yml` file is applied on its own, all or nothing, when it appears
//! or when it or a component it names changes; a rejected file is reported (located)
//! and retried when something changes, and the other files still apply. Removing a
//! file deletes what it defined, and so does removing a document from it. Which names
//! each file defines is kept in the store, so a file removed while the daemon was down
//! is noticed at the next start. Changes are seen through `notify` (inotify on Linux),
//! settled for [`SETTLE`], with a full rescan every [`RESCAN`] as the safety net.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::desired::{Desired, Writing};
use super::store::{Document, digest_of};
use crate::manifest::load_str_with_files;

/// Quiet time after a change before the directory is read (editors write in bursts).
pub const SETTLE: Duration = Duration::from_millis(200);
/// A full rescan happens at least this often, whatever the notifications say.
pub const RESCAN: Duration = Duration::from_secs(10);

/// What the watcher remembers about a file between scans.
#[derive(Default)]
struct Seen {
    /// Fingerprints (text and component digests) of files applied as they are now.
    applied: HashMap<PathBuf, [u8; 32]>,
    /// The last error reported for a file, so that a rescan does not repeat it.
    reported: HashMap<PathBuf, String>,
}

/// Watches `dir` until `stop` turns true.
pub(super) async fn watch(
    desired: Arc<Desired>,
    dir: PathBuf,
    rescan: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full means a scan is already due.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| {
        tracing::warn!(
            "cannot watch {}: {e}; rescanning every {RESCAN:?}",
            dir.display()
        )
    })
    .ok();
    if let Some(w) = watcher.as_mut() {
        use notify::Watcher as _;
        if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {}: {e}; rescanning every {RESCAN:?}",
                dir.display()
            );
        }
    }
    tracing::info!("watching {} for manifests", dir.display());
    let mut seen = Seen::default();
    loop {
        scan(&desired, &dir, &mut seen).await;
        tokio::select! {
            _ = changed.recv() => {}
            _ = tokio::time::sleep(RESCAN) => {}
            // A reload: every file read again, and a rejected one reported again.
            _ = rescan.notified() => seen = Seen::default(),
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::time::sleep(SETTLE).await;
        while changed.try_recv().is_ok() {}
    }
}

/// Says in `setpoint events` that `file` was rejected: under each workload it names (so
/// `events NAME` shows it), or under `file/NAME` when not even the names can be read.
fn rejected_event(desired: &Desired, file: &Path, message: &str) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let names = crate::manifest::parse_names(file, &text, desired.limits())
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let base = file.file_name().map(|n| n.to_string_lossy().into_owned());
            vec![format!("file/{}", base.unwrap_or_default())]
        });
    for name in names {
        desired.logbook().record(&crate::Event {
            time: std::time::SystemTime::now(),
            kind: crate::EventType::Warning,
            workload: name,
            instance: None,
            reason: crate::status::reason::REJECTED.into(),
            message: format!("{} was not applied: {message}", file.display()),
        });
    }
}

/// The manifest files in `dir`, by name; hidden files and editor backups are skipped.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            p.is_file()
                && !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// One pass: applies new and changed files, deletes what removed files defined.
async fn scan(desired: &Desired, dir: &Path, seen: &mut Seen) {
    let files = match manifest_files(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", dir.display());
            return;
        }
    };
    let writing = desired.write().await;
    let mut watched = match desired.store().watched() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot read the watched files' records: {e}");
            return;
        }
    };
    for file in &files {
        let key = file.to_string_lossy().into_owned();
        match apply_file(&writing, desired, file, seen).await {
            Ok(Some(names)) => {
                let before = watched.remove(&key).unwrap_or_default();
                for gone in before.iter().filter(|n| !names.contains(n)) {
                    delete(&writing, gone, &key).await;
                }
                if let Err(e) = desired.store().set_watched(&key, Some(&names)) {
                    tracing::error!("cannot record what {key} defines: {e}");
                }
                seen.reported.remove(file);
            }
            Ok(None) => {
                watched.remove(&key);
            }
            Err(message) => {
                watched.remove(&key);
                if seen.reported.get(file) != Some(&message) {
                    tracing::error!("{key} was not applied:\n{message}");
                    rejected_event(desired, file, &message);
                    seen.reported.insert(file.clone(), message);
                }
            }
        }
    }
    // What is left was defined by files that are gone.
    for (key, names) in watched {
        for name in &names {
            delete(&writing, name, &key).await;
        }
        if let Err(e) = desired.store().set_watched(&key, None) {
            tracing::error!("cannot forget {key}: {e}");
        }
        seen.applied.remove(Path::new(&key));
        seen.reported.remove(Path::new(&key));
    }
}

async fn delete(writing: &Writing<'_>, name: &str, file: &str) {
    match writing.delete(name).await {
        Ok(_) => tracing::info!("{name} deleted: {file} no longer defines it"),
        Err(e) => tracing::error!("cannot delete {name}: {e}"),
    }
}

/// A manifest file as read from disk: its text, the names it defines, the digest of
/// each component it names (and their bytes), and a fingerprint of all of it.
struct ReadFile {
    text: String,
    names: Vec<String>,
    files: BTreeMap<String, String>,
    blobs: Vec<Vec<u8>>,
    fingerprint: [u8; 32],
}

fn read_file(file: &Path, limits: &crate::manifest::ManifestLimits) -> Result<ReadFile, String> {
    let size = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if size > limits.max_file_bytes {
        return Err(format!(
            "{size} bytes, over the limit of {}",
            limits.max_file_bytes
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {e}"))?;
    let (workloads, referenced) =
        load_str_with_files(file, &text, limits).map_err(|rejected| rejected.to_string())?;
    let mut fingerprint = Sha256::new();
    fingerprint.update(text.as_bytes());
    let mut files = BTreeMap::new();
    let mut blobs = Vec::new();
    for (joined, path) in referenced {
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let digest = digest_of(&bytes);
        fingerprint.update(digest.as_bytes());
        files.insert(joined, digest);
        blobs.push(bytes);
    }
    Ok(ReadFile {
        text,
        names: workloads.into_iter().map(|w| w.name).collect(),
        files,
        blobs,
        fingerprint: fingerprint.finalize().into(),
    })
}

/// Applies `file` if it or a component it names changed since it was last applied:
/// `Some(names)` it defines when applied, `None` when unchanged, or why it was refused.
async fn apply_file(
    writing: &Writing<'_>,
    desired: &Desired,
    file: &Path,
    seen: &mut Seen,
) -> Result<Option<Vec<String>>, String> {
    let read = read_file(file, desired.limits())?;
    if seen.applied.get(file) == Some(&read.fingerprint) {
        return Ok(None);
    }
    for bytes in &read.blobs {
        tokio::task::block_in_place(|| desired.store().put_blob(bytes))
            .map_err(|e| e.to_string())?;
    }
    let document = Document {
        source: file.to_string_lossy().into_owned(),
        text: read.text,
    };
    let response = writing
        .apply(vec![document], read.files, false)
        .await
        .map_err(|e| e.to_string())?;
    for c in &response.changes {
        tracing::info!(
            "{}: {}/{} {:?} (revision {})",
            file.display(),
            c.kind.noun(),
            c.name,
            c.change,
            c.revision
        );
    }
    seen.applied.insert(file.to_path_buf(), read.fingerprint);
    Ok(Some(read.names))
}
