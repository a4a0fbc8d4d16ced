//! The dags folder as a long-running process keeps it: each file's stamp (size, modification
//! time, inode), content hash, the DAGs it last loaded, and its import error. A rescan stats every
//! entry, reads only files whose stamp changed, and evaluates only files whose content changed,
//! so a rescan of an unchanged folder parses nothing. A file that breaks keeps its last good DAGs
//! (they stay scheduled and triggerable) and carries its import error until it is fixed.

use super::{DagBag, FileResult, ImportError, LoadedDag, Loader, LoaderError, MAX_FILE_BYTES, ScanEntry};
use crate::model::DagSpec;
use crate::script::EvalContext;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What identifies a file's content without reading it. A stamp younger than [`RACY`] is not
/// trusted (a second write in the same clock tick would keep size and time), so such a file is
/// hashed again at the next rescan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
    dev: u64,
    ino: u64,
}

const RACY: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
struct FileState {
    stamp: Option<Stamp>,
    /// SHA-256 of the content; empty for an entry that cannot be read.
    content_hash: String,
    /// The DAGs of the last good load (kept while the file is broken), without their JSON.
    dags: Vec<LoadedDag>,
    error: Option<ImportError>,
    /// The dags-folder modules its last evaluation asked for, with the hash of each as read
    /// (empty: missing or unreadable).
    imports: Vec<(String, String)>,
}

/// What one rescan changed.
#[derive(Default)]
pub struct Changes {
    /// DAGs that are new or have a new version, with their file (relative).
    pub versions: Vec<LoadedDag>,
    /// Files that loaded, with the DAG ids each declares now: any other DAG recorded for one of
    /// these files is gone from it.
    pub loaded: Vec<(String, Vec<String>)>,
    /// Files that are gone from the folder (or now ignored).
    pub deleted: Vec<String>,
    /// Files whose import error is new or changed.
    pub errors: Vec<ImportError>,
    /// Files whose import error went away (fixed, deleted or ignored).
    pub cleared: Vec<String>,
    /// How many files were read (stamp changed) and evaluated (content changed).
    pub read: usize,
    pub evaluated: usize,
}

impl Changes {
    fn merge(&mut self, more: Changes) {
        self.versions.extend(more.versions);
        self.loaded.extend(more.loaded);
        self.deleted.extend(more.deleted);
        // A file fixed in the second round: its error is cleared, not set.
        self.errors.retain(|e| !more.cleared.contains(&e.file));
        self.errors.extend(more.errors);
        self.cleared.extend(more.cleared);
        self.read += more.read;
        self.evaluated += more.evaluated;
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
            && self.loaded.is_empty()
            && self.deleted.is_empty()
            && self.errors.is_empty()
            && self.cleared.is_empty()
    }
}

/// The folder's files and what they declare, kept across rescans.
#[derive(Default)]
pub struct Folder {
    files: BTreeMap<String, FileState>,
    /// Task owners, pools and queues, one copy of each text (`compact`).
    interned: HashSet<Arc<str>>,
    /// Modules some file imports: stamp and content hash, so an unchanged one is not read.
    modules: HashMap<String, (Option<Stamp>, String)>,
}

impl Folder {
    /// Brings the state up to date with the folder on disk. Only the folder itself failing to be
    /// listed is an error; a bad entry is its import error.
    pub fn rescan(&mut self, loader: &Loader, ctx: &EvalContext) -> Result<Changes, LoaderError> {
        self.rescan_once(loader, ctx, false)
    }

    /// `retry`: this is the second round for files a freed dag_id may unblock (no third).
    fn rescan_once(&mut self, loader: &Loader, ctx: &EvalContext, retry: bool) -> Result<Changes, LoaderError> {
        let entries = loader.scan_entries()?;
        let mut changes = Changes::default();
        let mut present = BTreeSet::new();
        let mut to_load: Vec<(ScanEntry, String, Option<Stamp>, String)> = Vec::new();
        let now = SystemTime::now();
        for entry in entries {
            let rel = loader.rel(&entry.path);
            present.insert(rel.clone());
            let known = self.files.get(&rel);
            if let Some(message) = &entry.error {
                let same = known.is_some_and(|f| {
                    f.content_hash.is_empty()
                        && f.error.as_ref().and_then(|e| e.diagnostics.first()).is_some_and(|d| &d.message == message)
                });
                if !same {
                    to_load.push((entry, rel, None, String::new()));
                }
                continue;
            }
            let stamp = stamp_of(&entry.path, now);
            if let (Some(s), Some(f)) = (stamp, known)
                && f.stamp == Some(s)
            {
                continue;
            }
            changes.read += 1;
            let hash = content_hash(&entry.path);
            match self.files.get_mut(&rel) {
                Some(f) if !f.content_hash.is_empty() && f.content_hash == hash => f.stamp = stamp,
                _ => to_load.push((entry, rel, stamp, hash)),
            }
        }
        let gone: Vec<String> = self.files.keys().filter(|rel| !present.contains(*rel)).cloned().collect();
        // The dag_ids of files gone: another file may be waiting for one ("already declared in").
        let mut gone_dags: Vec<String> = Vec::new();
        for rel in gone {
            if let Some(f) = self.files.remove(&rel) {
                gone_dags.extend(f.dags.iter().map(|d| d.spec.dag_id.clone()));
                if f.error.is_some() {
                    changes.cleared.push(rel.clone());
                }
                changes.deleted.push(rel);
            }
        }
        // A file whose modules changed is evaluated again, though its own text did not change.
        let importers: Vec<(String, Option<Stamp>, String)> = self
            .files
            .iter()
            .filter(|(rel, f)| !f.imports.is_empty() && present.contains(*rel))
            .filter(|(rel, _)| !to_load.iter().any(|(_, r, _, _)| r == *rel))
            .map(|(rel, f)| (rel.clone(), f.stamp, f.content_hash.clone()))
            .collect();
        if !importers.is_empty() {
            let root = loader.dags_folder().to_path_buf();
            for (rel, stamp, hash) in importers {
                let imports = &self.files[&rel].imports;
                let mut changed = false;
                for (path, read) in imports {
                    let current = module_hash(&mut self.modules, &root, path, now, &mut changes.read);
                    changed |= current != *read;
                }
                if changed {
                    let entry = ScanEntry { path: root.join(&rel), error: None };
                    to_load.push((entry, rel, stamp, hash));
                }
            }
        }
        // Nothing read anew and nothing gone: the DAGs are as they were (the usual rescan).
        if to_load.is_empty() && changes.deleted.is_empty() {
            return Ok(changes);
        }
        changes.evaluated = to_load.len();
        let results: Vec<FileResult> = loader.pool.install(|| {
            to_load
                .par_iter()
                .map(|(entry, _, _, _)| match &entry.error {
                    Some(message) => loader.entry_error(&entry.path, message.clone()),
                    None => loader.load_file_guarded(&entry.path, ctx),
                })
                .collect()
        });
        // Which file declares each DAG, before this rescan's loads: the one already holding a
        // dag_id keeps it, a newly loaded file declaring it too gets an import error.
        let mut owner: HashMap<String, String> = HashMap::new();
        for (rel, f) in &self.files {
            if !to_load.iter().any(|(_, r, _, _)| r == rel) {
                for d in &f.dags {
                    owner.insert(d.spec.dag_id.clone(), rel.clone());
                }
            }
        }
        let previous: HashMap<String, String> = self
            .files
            .values()
            .flat_map(|f| f.dags.iter())
            .map(|d| (d.spec.dag_id.clone(), d.version_hash.clone()))
            .collect();
        for ((_, rel, stamp, hash), mut result) in to_load.into_iter().zip(results) {
            for (dag, pos) in &result.dags {
                if let Some(first) = owner.get(&dag.spec.dag_id).filter(|f| **f != rel) {
                    result.diagnostics.push(loader.duplicate(&rel, &dag.spec.dag_id, *pos, first));
                }
            }
            let state = self.files.entry(rel.clone()).or_default();
            state.stamp = stamp;
            state.imports = std::mem::take(&mut result.imports);
            // What was evaluated, if it was read (the file may have changed since it was hashed).
            state.content_hash = if result.content_hash.is_empty() { hash } else { result.content_hash.clone() };
            if result.diagnostics.is_empty() {
                if state.error.take().is_some() {
                    changes.cleared.push(rel.clone());
                }
                let mut dags = Vec::with_capacity(result.dags.len());
                for (mut d, _) in result.dags {
                    owner.insert(d.spec.dag_id.clone(), rel.clone());
                    // One copy of each spec for the life of the process, shared by this folder,
                    // the scheduler and the versions to record.
                    d.spec = Arc::new(compact(&d.spec, &mut self.interned));
                    if previous.get(&d.spec.dag_id) != Some(&d.version_hash) {
                        changes.versions.push(d.clone());
                    }
                    // The JSON is for recording a new version (`changes.versions` carries it):
                    // not kept, it would be the largest thing held per DAG.
                    d.json = Arc::from("");
                    dags.push(d);
                }
                changes.loaded.push((rel, dags.iter().map(|d| d.spec.dag_id.clone()).collect()));
                state.dags = dags;
            } else {
                let error = ImportError { file: rel.clone(), diagnostics: result.diagnostics };
                let same = state.error.as_ref().is_some_and(|e| render(e) == render(&error));
                for d in &state.dags {
                    owner.entry(d.spec.dag_id.clone()).or_insert_with(|| rel.clone());
                }
                if !same {
                    changes.errors.push(error.clone());
                }
                state.error = Some(error);
            }
        }
        // A dag_id no file declares any more may be what kept another file broken ("already
        // declared in"): evaluate that file again now, not at its next save.
        let declared: BTreeSet<&str> = self.dags().map(|d| d.spec.dag_id.as_str()).collect();
        let freed: Vec<&String> =
            previous.keys().chain(gone_dags.iter()).filter(|id| !declared.contains(id.as_str())).collect();
        let blocked: Vec<String> = self
            .files
            .iter()
            .filter(|(_, f)| {
                f.error.as_ref().is_some_and(|e| {
                    e.diagnostics.iter().any(|d| {
                        freed.iter().any(|id| d.message.starts_with(&format!("DAG `{id}` is already declared in")))
                    })
                })
            })
            .map(|(rel, _)| rel.clone())
            .collect();
        if !blocked.is_empty() && !retry {
            for rel in &blocked {
                if let Some(f) = self.files.get_mut(rel) {
                    f.stamp = None;
                    f.content_hash.clear();
                }
            }
            let again = self.rescan_once(loader, ctx, true)?;
            changes.merge(again);
        }
        Ok(changes)
    }

    /// Every DAG the folder declares now (a broken file's last good ones included).
    pub fn dags(&self) -> impl Iterator<Item = &LoadedDag> {
        self.files.values().flat_map(|f| f.dags.iter())
    }

    /// The files that do not load now, with their errors, by file.
    pub fn import_errors(&self) -> impl Iterator<Item = &ImportError> {
        self.files.values().filter_map(|f| f.error.as_ref())
    }

    /// Every file of the folder (relative), loaded or not.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// The folder as a `DagBag` (what a full load would give, with broken files' last good DAGs).
    pub fn bag(&self) -> DagBag {
        DagBag {
            dags: self.dags().map(|d| (d.spec.dag_id.clone(), d.clone())).collect(),
            import_errors: self.import_errors().cloned().collect(),
            files: self.files.iter().map(|(rel, f)| (rel.clone(), f.content_hash.clone())).collect(),
        }
    }
}

/// An import error as the store keeps it: every diagnostic, rendered.
pub fn render(error: &ImportError) -> String {
    error.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n")
}

fn stamp_of(path: &Path, now: SystemTime) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?;
    // A file written within the last moments may be written again within the same tick.
    if now.duration_since(modified).map_or(true, |age| age < RACY) {
        return None;
    }
    Some(Stamp { len: meta.len(), modified, dev: meta.dev(), ino: meta.ino() })
}

/// The content hash of module `path` now, read again only when its stamp changed.
fn module_hash(
    cache: &mut HashMap<String, (Option<Stamp>, String)>,
    root: &Path,
    path: &str,
    now: SystemTime,
    read: &mut usize,
) -> String {
    let file = root.join(path);
    let stamp = stamp_of(&file, now);
    if let (Some(s), Some((Some(known), hash))) = (stamp, cache.get(path))
        && *known == s
    {
        return hash.clone();
    }
    *read += 1;
    let hash = content_hash(&file);
    cache.insert(path.to_string(), (stamp, hash.clone()));
    hash
}

/// SHA-256 of a file's content (hex); empty when it cannot be read or is too large (loading it
/// then reports why).
pub(super) fn content_hash(path: &Path) -> String {
    match std::fs::metadata(path) {
        // Not a FIFO or a device: reading one would block.
        Ok(m) if m.is_file() && m.len() <= MAX_FILE_BYTES => {}
        _ => return String::new(),
    }
    std::fs::read(path).map(|bytes| hex::encode(Sha256::digest(&bytes))).unwrap_or_default()
}

/// A copy of `spec` with each task's owner, pool and queue text shared with every other task's
/// (10,000 DAGs hold a few distinct ones). The copy sits together in memory, away from the
/// parse's freed garbage.
fn compact(spec: &DagSpec, shared: &mut HashSet<Arc<str>>) -> DagSpec {
    let mut intern = |text: &Arc<str>| match shared.get(text) {
        Some(one) => one.clone(),
        None => {
            shared.insert(text.clone());
            text.clone()
        }
    };
    let mut copy = DagSpec::clone(spec);
    for task in &mut copy.tasks {
        task.owner = intern(&task.owner);
        task.pool = intern(&task.pool);
        task.queue = intern(&task.queue);
    }
    copy
}
