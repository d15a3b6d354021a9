//! Local mode: Canary specs from a directory ([`SpecDir`]), the state in one JSON file
//! ([`StateFile`], written atomically by [`store`]). Workloads are not veer's to watch here:
//! a new revision is posted to the API (`veer rollout`), every planned pass may run, and
//! promotion only records which revision the primary runs.

pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use self::store::StoreError;
use super::{BoxFuture, Commit, Gate, Platform};
use crate::engine::{Action, CanaryState, PassKind};
use crate::runner::Restored;
use crate::spec::{CanarySpec, Severity, SpecSet};

/// The state file format this veer writes and reads.
pub const STATE_FILE_VERSION: u32 = 1;

/// The local-mode state file: everything a restart needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    /// The generation of the last table served (or about to be): the next run serves a
    /// higher one, so gateways holding it take the new table.
    pub table_generation: u64,
    /// By `namespace/name`. Canaries whose spec is gone are kept, so a spec that comes back
    /// (or was only broken for a while) resumes where it was.
    #[serde(default)]
    pub canaries: BTreeMap<String, CanaryState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "state file {} has format version {found}, this veer reads version {STATE_FILE_VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
}

/// Reads the state file; `Ok(None)` only when it does not exist.
pub fn load_state_file(path: &Path) -> Result<Option<StateFile>, StateFileError> {
    let Some(file) = store::load::<StateFile>(path)? else {
        return Ok(None);
    };
    if file.version != STATE_FILE_VERSION {
        return Err(StateFileError::Version {
            path: path.to_path_buf(),
            found: file.version,
        });
    }
    Ok(Some(file))
}

/// A canary's state as the state file's pretty-printed JSON has it: at depth 2, inside
/// `"canaries"`. Encoded on its own, a state starts at depth 0, so every line after the
/// first gets two more levels of indentation (JSON strings never contain a raw newline).
fn state_json(state: &CanaryState) -> Result<Arc<[u8]>, serde_json::Error> {
    let flat = serde_json::to_vec_pretty(state)?;
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 8);
    for &b in &flat {
        out.push(b);
        if b == b'\n' {
            out.extend_from_slice(b"    ");
        }
    }
    Ok(out.into())
}

/// The state file's bytes from every canary's [`state_json`] in key order: the same bytes
/// `serde_json::to_vec_pretty` gives for the whole [`StateFile`] (plus a final newline),
/// without encoding again the states that did not change.
fn state_file_json<'a>(
    table_generation: u64,
    canaries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = format!(
        "{{\n  \"version\": {STATE_FILE_VERSION},\n  \"tableGeneration\": {table_generation},\n  \"canaries\": {{"
    )
    .into_bytes();
    let mut any = false;
    for (key, json) in canaries {
        out.extend_from_slice(if any { b",\n    " } else { b"\n    " });
        serde_json::to_writer(&mut out, key)?;
        out.extend_from_slice(b": ");
        out.extend_from_slice(json);
        any = true;
    }
    out.extend_from_slice(if any { b"\n  }\n}\n" } else { b"}\n}\n" });
    Ok(out)
}

impl StateFile {
    /// What the runner resumes from.
    pub fn restored(self) -> Restored {
        Restored {
            table_generation: self.table_generation,
            canaries: self.canaries,
        }
    }
}

/// A canary's state as last encoded, with the version it was encoded at.
type EncodedState = (u64, Arc<[u8]>);

/// The local platform: saves every commit to the state file.
pub struct LocalPlatform {
    path: PathBuf,
    /// Each canary's state as last encoded, by key, with the version it was encoded at:
    /// a write encodes only what changed since.
    encoded: Mutex<HashMap<String, EncodedState>>,
}

impl LocalPlatform {
    pub fn new(path: PathBuf) -> LocalPlatform {
        LocalPlatform {
            path,
            encoded: Mutex::new(HashMap::new()),
        }
    }

    fn encode(&self, commit: &Commit<'_>) -> Result<Vec<u8>, serde_json::Error> {
        let mut encoded = self
            .encoded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        encoded.retain(|key, _| commit.canaries.contains_key(key));
        let mut pieces: BTreeMap<&str, Arc<[u8]>> = BTreeMap::new();
        for (key, canary) in commit.canaries {
            let json = match encoded.get(key) {
                Some((version, json)) if *version == canary.version => json.clone(),
                _ => {
                    let json = state_json(&canary.state)?;
                    encoded.insert(key.clone(), (canary.version, json.clone()));
                    json
                }
            };
            pieces.insert(key, json);
        }
        // A canary is either loaded or an orphan, never both.
        for (key, state) in commit.orphans {
            pieces.insert(key, state_json(state)?);
        }
        state_file_json(
            commit.generation,
            pieces.iter().map(|(key, json)| (*key, &json[..])),
        )
    }
}

impl Platform for LocalPlatform {
    fn save(&self, commit: &Commit<'_>) -> Result<(), String> {
        let encode_error = |source| {
            StoreError::Encode {
                path: self.path.clone(),
                source,
            }
            .to_string()
        };
        let json = self.encode(commit).map_err(encode_error)?;
        store::save_json(&self.path, &json).map_err(|e| e.to_string())
    }

    fn gate<'a>(
        &'a self,
        _spec: &'a CanarySpec,
        _state: &'a CanaryState,
        _kind: PassKind,
    ) -> BoxFuture<'a, Gate> {
        Box::pin(async { Gate::Proceed })
    }

    fn apply<'a>(
        &'a self,
        _spec: &'a CanarySpec,
        _state: &'a CanaryState,
        _action: &'a Action,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// A canary directory re-read only when its YAML files change (names, sizes or mtimes), so
/// a frequent check costs a directory listing, not a parse of every spec.
#[derive(Debug)]
pub struct SpecDir {
    dir: PathBuf,
    opts: crate::spec::LoadOptions,
    seen: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl SpecDir {
    /// `opts` are the controller's settings that change what a spec means
    /// (`--min-interval`).
    pub fn new(dir: PathBuf, opts: crate::spec::LoadOptions) -> SpecDir {
        SpecDir {
            dir,
            opts,
            seen: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the next [`load_if_changed`](SpecDir::load_if_changed) read the directory.
    pub fn invalidate(&mut self) {
        self.seen = None;
    }

    /// Loads the directory if it changed since the last load (or was never loaded).
    /// `Ok(None)`: unchanged.
    pub fn load_if_changed(&mut self) -> Result<Option<SpecSet>, crate::spec::SpecDirError> {
        let signature = self
            .signature()
            .map_err(|source| crate::spec::SpecDirError {
                dir: self.dir.clone(),
                source,
            })?;
        if self.seen.as_ref() == Some(&signature) {
            return Ok(None);
        }
        let set = crate::spec::load_dir(&self.dir, &self.opts)?;
        self.seen = Some(signature);
        Ok(Some(set))
    }

    fn signature(&self) -> std::io::Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            if !yaml {
                continue;
            }
            // Follows symlinks, as a ConfigMap volume's files are symlinks.
            match std::fs::metadata(&path) {
                Ok(meta) => files.push((path, meta.len(), meta.modified().ok())),
                Err(_) => files.push((path, 0, None)),
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Logs every problem of a loaded set, each naming its file, document and field.
pub fn log_problems(set: &SpecSet) {
    for problem in &set.problems {
        match problem.severity {
            Severity::Warning => tracing::warn!("{problem}"),
            Severity::Error => tracing::error!("{problem} (this document is not loaded)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CheckKind, CheckResult, Phase, Timestamp};

    fn state(weight: u32, message: &str) -> CanaryState {
        CanaryState {
            phase: Phase::Progressing,
            weight,
            canary_revision: Some("v2".into()),
            primary_revision: Some("v\"1\"\n".into()),
            last_pass_at: Some(Timestamp::from_millis(1_700_000_000_123)),
            last_checks: vec![CheckResult {
                name: "request-success-rate".into(),
                kind: CheckKind::Metric,
                passed: true,
                value: Some(99.5),
                message: String::new(),
            }],
            message: message.into(),
            ..CanaryState::default()
        }
    }

    /// The state file assembled from per-canary pieces must be byte for byte what encoding
    /// the whole document gives, so it reads back the same and looks the same to a person.
    #[test]
    fn assembled_state_file_is_the_pretty_json_of_the_whole_document() {
        let file = StateFile {
            version: STATE_FILE_VERSION,
            table_generation: 42,
            canaries: BTreeMap::from([
                (
                    "a/one".to_string(),
                    state(10, "Advance a/one canary weight 10"),
                ),
                ("b/\"odd\" name".to_string(), CanaryState::default()),
                ("c/three".to_string(), state(0, "line one\nline two")),
            ]),
        };
        let pieces: Vec<(String, Arc<[u8]>)> = file
            .canaries
            .iter()
            .map(|(k, s)| (k.clone(), state_json(s).unwrap()))
            .collect();
        let assembled = state_file_json(
            file.table_generation,
            pieces.iter().map(|(k, j)| (k.as_str(), &j[..])),
        )
        .unwrap();
        let mut whole = serde_json::to_vec_pretty(&file).unwrap();
        whole.push(b'\n');
        assert_eq!(
            String::from_utf8(assembled.clone()).unwrap(),
            String::from_utf8(whole).unwrap()
        );
        let read_back: StateFile = serde_json::from_slice(&assembled).unwrap();
        assert_eq!(read_back, file);

        let empty = StateFile {
            version: STATE_FILE_VERSION,
            table_generation: 7,
            canaries: BTreeMap::new(),
        };
        let mut whole = serde_json::to_vec_pretty(&empty).unwrap();
        whole.push(b'\n');
        assert_eq!(state_file_json(7, []).unwrap(), whole);
    }
}
