//! Child processes for the tests: killed (and reaped) on drop even when the test panics,
//! and, through `veer_testkit::process::die_with_parent`, also when the test binary dies
//! first; and commands run to their exit with a deadline.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::POLL;
use veer_testkit::poll_until_async;

/// A child process that is killed (and reaped) when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Child,
    log: Log,
}

/// Where a child's stdout and stderr go.
enum Log {
    File(PathBuf),
    /// Read through pipes into memory: a pipe is not subject to a file-size limit.
    Captured(Arc<Mutex<Vec<u8>>>),
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> ChildGuard {
        veer_testkit::process::die_with_parent(&mut cmd);
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard {
            name: name.to_string(),
            child,
            log: Log::File(log),
        }
    }

    /// As `spawn`, with the output captured in memory instead of a file.
    pub fn spawn_captured(name: &str, mut cmd: Command) -> ChildGuard {
        veer_testkit::process::die_with_parent(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        ChildGuard {
            name: name.to_string(),
            child,
            log: Log::Captured(log),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("{} exited ({status}); log:\n{}", self.name, self.log_text());
        }
    }

    /// Polls `GET url` (with a 30 s deadline) until it answers 2xx; fails the test, with the
    /// log, as soon as the process exits. `what` names the wait in the failure.
    pub async fn wait_http_ready(&mut self, what: &str, http: &reqwest::Client, url: &str) {
        poll_until_async(what, Duration::from_secs(30), POLL, || {
            self.assert_running();
            let request = http.get(url);
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn log_text(&self) -> String {
        match &self.log {
            Log::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            Log::Captured(bytes) => String::from_utf8_lossy(&bytes.lock().unwrap()).into_owned(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run_to_exit(cmd: &mut Command, deadline: Duration) -> Output {
    let mut child = veer_testkit::process::die_with_parent(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not exit within {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
