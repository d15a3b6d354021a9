//! Child processes owned by a test: spawned with output captured to a log file, killed on
//! drop (also while a test panics, when the log tail is printed) and, through
//! `veer_testkit`, also when the test binary dies first; and the poll-with-deadline helper
//! (re-exported from `veer_testkit`) for waiting on readiness or effects without fixed sleeps.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A fresh directory for one test's files (logs, rendered configs, data dirs), kept after the
/// test so failures can be inspected: `<target>/e2e/<name>-<pid>-<n>`.
pub fn work_dir(name: &str) -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = veer_testkit::tools::target_dir()
        .join("e2e")
        .join(format!("{name}-{}-{n}", std::process::id()));
    // A leftover from an earlier run with the same pid would mix logs.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Polling with a deadline: the one implementation, shared with the controller's tests.
pub use veer_testkit::poll_until;

/// A running child process with its output in `log_path`.
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `cmd` with stdout and stderr appended to `log_path`. On Linux the child also
    /// gets SIGKILL if the spawning thread dies without dropping this (e.g. the test binary is
    /// killed), so no orphan keeps ports or shared memory.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Result<ChildProcess, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("dup {}: {e}", log_path.display()))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        veer_testkit::process::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits (polling) for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let name = self.name.clone();
        poll_until(
            &format!("{name} to exit"),
            timeout,
            Duration::from_millis(20),
            || self.try_exit().ok_or_else(|| "still running".to_string()),
        )
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log tail, full log at {} ----\n{}\n---- end of {} log ----",
                self.name,
                self.child.id(),
                self.log_path.display(),
                self.log_tail(40),
                self.name
            );
        }
    }
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `lines` lines of a file, reading at most the final 256 KiB.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
        let _ = f.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
