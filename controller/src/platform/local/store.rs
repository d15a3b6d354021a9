//! The local-mode state file: one JSON document written atomically (temp file in the same
//! directory, fsync, rename, fsync of the directory), so a crash leaves either the old or
//! the new state, never a torn one. A missing file is "no state yet"; an empty, truncated
//! or corrupt file is an error naming it: silently starting from defaults would restart
//! runs and could raise a weight without analysis.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read state file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("state file {} is empty (a crash during a write cannot cause this, since writes are atomic): \
             restore it from a backup or delete it to start over", path.display())]
    Empty { path: PathBuf },
    #[error("state file {} is not valid state at line {line}, column {column}: {reason}; \
             restore it from a backup or delete it to start over", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("cannot encode the state for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write state file {} ({step}): {source}", path.display())]
    Write {
        path: PathBuf,
        /// Which step failed: creating the temp file, writing, syncing, renaming, ...
        step: &'static str,
        source: io::Error,
    },
}

/// Reads the state at `path`. `Ok(None)` only when the file does not exist.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(StoreError::Empty {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })
}

/// Replaces the state at `path` with `value` (pretty-printed JSON and a newline),
/// atomically and durably. On error the old file is untouched and no temp file is left
/// behind.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    json.push(b'\n');
    save_json(path, &json)
}

/// As [`save`], for a document the caller has encoded already (written as given).
pub fn save_json(path: &Path, json: &[u8]) -> Result<(), StoreError> {
    let write_error = |step: &'static str| {
        move |source: io::Error| StoreError::Write {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    let file_name = path.file_name().ok_or_else(|| StoreError::Write {
        path: path.to_path_buf(),
        step: "naming the file",
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = dir.join(temp_name(file_name));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(write_error("creating the temp file"))?;
    let written = file
        .write_all(json)
        .map_err(write_error("writing the temp file"))
        .and_then(|()| {
            file.sync_all()
                .map_err(write_error("syncing the temp file"))
        })
        .and_then(|()| fs::rename(&temp, path).map_err(write_error("renaming the temp file")));
    if let Err(e) = written {
        drop(file);
        // The temp file is ours and unreferenced; if removing it fails too, the write
        // error is the one that matters.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    // Without this the rename itself may not survive a power loss.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error("syncing the directory"))
}

/// A temp name no other writer in this or another process uses.
fn temp_name(file_name: &std::ffi::OsStr) -> std::ffi::OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    name
}
