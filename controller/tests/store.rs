#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The state file: round trips, refusing corrupt files, and failing writes that leave the
//! old state intact. The tests run as root, where permission bits stop nothing, so write
//! failures come from things that stop root too: a parent that is a regular file, an
//! immutable directory (`chattr +i`) and a file-size limit (`prlimit --fsize`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use support::immutable_dir::ImmutableDir;
use veer_controller::platform::local::store::{self, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    generation: u64,
    canaries: BTreeMap<String, CanaryState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CanaryState {
    phase: String,
    weight: u32,
    failed_checks: u32,
}

fn state(generation: u64, weight: u32) -> State {
    State {
        generation,
        canaries: BTreeMap::from([(
            "test/podinfo".to_string(),
            CanaryState {
                phase: "Progressing".into(),
                weight,
                failed_checks: 1,
            },
        )]),
    }
}

/// Files in `dir` other than `keep`: leftover temp files would show up here.
fn others(dir: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

#[test]
fn round_trip_and_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    assert_eq!(
        store::load::<State>(&path).unwrap(),
        None,
        "missing file is no state"
    );
    store::save(&path, &state(7, 10)).unwrap();
    assert_eq!(store::load::<State>(&path).unwrap(), Some(state(7, 10)));
    store::save(&path, &state(8, 20)).unwrap();
    assert_eq!(store::load::<State>(&path).unwrap(), Some(state(8, 20)));
    assert!(
        others(dir.path(), "state.json").is_empty(),
        "no temp files left"
    );
}

fn assert_names_path(err: &StoreError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error must name {}: {msg}",
        path.display()
    );
}

#[test]
fn empty_truncated_and_corrupt_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");

    std::fs::write(&path, "").unwrap();
    let err = store::load::<State>(&path).unwrap_err();
    assert!(matches!(err, StoreError::Empty { .. }), "{err:?}");
    assert_names_path(&err, &path);

    let full = serde_json::to_string_pretty(&state(3, 30)).unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let err = store::load::<State>(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { line, .. } if line > 1),
        "{err:?}"
    );
    assert_names_path(&err, &path);
    assert!(err.to_string().contains("line "), "{err}");

    std::fs::write(&path, "{\"generation\": \"seven\", \"canaries\": {}}").unwrap();
    let err = store::load::<State>(&path).unwrap_err();
    match &err {
        StoreError::Corrupt {
            line,
            column,
            reason,
            ..
        } => {
            assert_eq!(*line, 1);
            assert!(*column > 10, "column {column}");
            assert!(reason.contains("invalid type"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    std::fs::write(&path, b"\x00\x01garbage").unwrap();
    assert!(matches!(
        store::load::<State>(&path),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn unreadable_path_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: exists, but cannot be read as a file.
    let path = dir.path().join("state.json");
    std::fs::create_dir(&path).unwrap();
    let err = store::load::<State>(&path).unwrap_err();
    assert!(matches!(err, StoreError::Read { .. }), "{err:?}");
    assert_names_path(&err, &path);
}

#[test]
fn parent_that_is_a_file_fails_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let path = not_a_dir.join("state.json");
    let err = store::save(&path, &state(1, 0)).unwrap_err();
    match &err {
        StoreError::Write { step, .. } => assert_eq!(*step, "creating the temp file"),
        other => panic!("expected Write, got {other:?}"),
    }
    assert_names_path(&err, &path);
}

#[test]
fn unserializable_state_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    // JSON object keys must be strings.
    let bad: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
    let err = store::save(&path, &bad).unwrap_err();
    assert!(matches!(err, StoreError::Encode { .. }), "{err:?}");
    assert!(others(dir.path(), "").is_empty());
}

#[test]
fn read_only_directory_fails_the_write_and_keeps_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    store::save(&path, &state(5, 10)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = {
        let _guard = ImmutableDir::set(dir.path());
        store::save(&path, &state(6, 20)).unwrap_err()
    };
    match &err {
        StoreError::Write { step, source, .. } => {
            assert_eq!(*step, "creating the temp file");
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{source}"
            );
        }
        other => panic!("expected Write, got {other:?}"),
    }
    assert_names_path(&err, &path);
    assert_eq!(std::fs::read(&path).unwrap(), before, "old state intact");
    assert_eq!(store::load::<State>(&path).unwrap(), Some(state(5, 10)));
    assert!(others(dir.path(), "state.json").is_empty());
}

const CHILD_PATH_ENV: &str = "VEER_STORE_TEST_CHILD_PATH";

/// Runs only as the child of `a_full_disk_fails_the_write_...`, under a file-size limit.
#[test]
#[ignore = "run by a_full_disk_fails_the_write_and_keeps_the_old_state in a child process"]
fn child_save_under_file_size_limit() {
    let path = PathBuf::from(std::env::var(CHILD_PATH_ENV).expect("run by the parent test"));
    let mut big = state(99, 99);
    for i in 0..2000 {
        big.canaries.insert(
            format!("ns/canary-{i}"),
            CanaryState {
                phase: "Progressing".into(),
                weight: i,
                failed_checks: 0,
            },
        );
    }
    let err = store::save(&path, &big).unwrap_err();
    match &err {
        StoreError::Write { step, source, .. } => {
            assert_eq!(*step, "writing the temp file");
            assert_eq!(source.raw_os_error(), Some(27), "EFBIG expected: {source}");
        }
        other => panic!("expected Write, got {other:?}"),
    }
    println!("CHILD-SAW: {err}");
}

#[test]
fn a_full_disk_fails_the_write_and_keeps_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    store::save(&path, &state(5, 10)).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(before.len() < 4096);

    // The file-size limit makes write() fail with EFBIG past 4 KiB, as a full disk fails
    // with ENOSPC; SIGXFSZ is ignored (inherited across exec) so the error is returned.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; exec prlimit --fsize=4096 -- "$0" --exact child_save_under_file_size_limit --ignored --nocapture"#)
        .arg(&exe)
        .env(CHILD_PATH_ENV, &path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh/prlimit ({e}): apt-get install -y util-linux"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-SAW: cannot write state file"),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child test must have run: {stdout}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "old state intact");
    assert!(
        others(dir.path(), "state.json").is_empty(),
        "temp file removed"
    );
}
