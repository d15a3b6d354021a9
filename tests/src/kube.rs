//! A real local Kubernetes control plane for tests: [`KubeCluster::up`] runs
//! `scripts/kube-up.sh` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//! kwok on 127.0.0.1, the Istio, Gateway API and Flagger CRDs, the controller's RBAC) into a
//! fresh directory, and dropping the cluster runs `scripts/kube-down.sh`, which stops every
//! process it started. Also: kubectl as cluster-admin or as veer's ServiceAccount, `apply`,
//! and a poll-with-deadline helper.
//!
//! The binaries are built once by `scripts/kube-build.sh` into `~/.cache/veer/` (a cold build
//! takes minutes; `scripts/test.sh` does it before the tests). The scripts say what is pinned
//! and how each piece is set up.
//!
//! The processes outlive `kube-up.sh` (it starts them in their own sessions), so
//! PR_SET_PDEATHSIG cannot reach them. Instead kube-up starts a watchdog that runs
//! kube-down.sh when this test process exits, however it exits.

use crate::process::{poll_until, tail};
use crate::workspace_root;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often [`KubeCluster::wait_for`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The components kube-up starts, each with a log in `DIR/logs/<name>.log`.
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// A running control plane, stopped on drop.
pub struct KubeCluster {
    dir: PathBuf,
    env: BTreeMap<String, String>,
    stopped: bool,
}

impl KubeCluster {
    /// Starts a control plane in a fresh directory with veer's own CRDs and RBAC, and waits
    /// until it runs pods. Fails with kube-up's output (which names the failing component and
    /// the tail of its log, or how to install Go for the first build).
    pub fn up() -> Result<KubeCluster, String> {
        KubeCluster::up_with(&[])
    }

    /// As [`KubeCluster::up`], with extra environment for kube-up.sh: `VEER_FLAGGER_CRDS`
    /// (Flagger's own Canary CRDs instead of veer's), `VEER_RBAC` (another ClusterRole).
    pub fn up_with(env: &[(&str, &str)]) -> Result<KubeCluster, String> {
        KubeCluster::up_args(&[], env)
    }

    /// As [`KubeCluster::up`], plus real istiod (`kube-up.sh --istio`): `pilot-discovery`
    /// reading this API server, serving plaintext xDS at [`KubeCluster::istiod_xds`]
    /// (`crate::istio` bootstraps a gateway Envoy to it). Without the EndpointSlice
    /// controllers: the tests say with WorkloadEntries what reaches their backends.
    pub fn up_istio() -> Result<KubeCluster, String> {
        let cluster = KubeCluster::up_args(&["--istio"], &[])?;
        for key in ["ISTIOD_XDS", "ISTIOD_HTTP"] {
            if !cluster.env.contains_key(key) {
                return Err(format!("{}/env has no {key}", cluster.dir.display()));
            }
        }
        Ok(cluster)
    }

    fn up_args(args: &[&str], env: &[(&str, &str)]) -> Result<KubeCluster, String> {
        let dir = fresh_dir()?;
        let script = workspace_root().join("scripts/kube-up.sh");
        // Beside DIR, not in it: kube-up refuses a DIR that is not empty, and this file is
        // created while the script starts.
        let log_path = dir.with_extension("kube-up.log");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .args(args)
            .arg(&dir)
            .env("VEER_KUBE_OWNER_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        // kube-up's progress goes to its log; a cold build's progress also to this process's
        // stderr (not captured by the test harness), so a first run does not look hung.
        let stderr = child.stderr.take();
        let log_for_thread = log_path.clone();
        let copier = std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut log = fs::File::create(&log_for_thread).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                if (line.starts_with("kube-build:") || line.starts_with("istiod-build:"))
                    && !line.contains("reusing")
                {
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for {}: {e}", script.display()))?;
        let _ = copier.join();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.lines().last() != Some("ready") {
            // kube-up stops what it started when it fails; this is for a script killed midway.
            // The directory stays, for its logs.
            let _ = kube_down(&dir);
            return Err(format!(
                "scripts/kube-up.sh {} failed ({}). Its output (full log {}):\n{}{}",
                dir.display(),
                out.status,
                log_path.display(),
                stdout,
                tail(&log_path, 60)
            ));
        }
        let cluster = KubeCluster {
            env: read_env(&dir.join("env"))?,
            dir,
            stopped: false,
        };
        for key in ["KUBE_BIN_DIR", "KUBE_APISERVER", "KUBE_VERSION"] {
            if !cluster.env.contains_key(key) {
                return Err(format!("{}/env has no {key}", cluster.dir.display()));
            }
        }
        Ok(cluster)
    }

    /// The cluster's directory: kubeconfigs, `env`, `pids`, `logs/`, etcd's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster-admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The kubeconfig of ServiceAccount veer-system/veer-controller (the RBAC that
    /// `manifests/` ship, or `VEER_RBAC`).
    pub fn veer_kubeconfig(&self) -> PathBuf {
        self.dir.join("veer.kubeconfig")
    }

    /// The directory with kubectl, kube-apiserver, etcd, ... (all one cached binary).
    pub fn bin_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["KUBE_BIN_DIR"])
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.env["KUBE_APISERVER"]
    }

    /// The Kubernetes version the control plane runs (`KUBE_VERSION` in
    /// `scripts/kube/versions.env`).
    pub fn version(&self) -> &str {
        &self.env["KUBE_VERSION"]
    }

    /// istiod's plaintext xDS address (clusters started with [`KubeCluster::up_istio`]).
    pub fn istiod_xds(&self) -> Result<std::net::SocketAddr, String> {
        self.env_addr("ISTIOD_XDS")
    }

    /// istiod's HTTP address: `/ready`, `/debug/*`.
    pub fn istiod_http(&self) -> Result<std::net::SocketAddr, String> {
        self.env_addr("ISTIOD_HTTP")
    }

    fn env_addr(&self, key: &str) -> Result<std::net::SocketAddr, String> {
        let value = self.env.get(key).ok_or_else(|| {
            format!("{key}: this cluster runs no istiod (start it with KubeCluster::up_istio)")
        })?;
        value.parse().map_err(|e| format!("{key}={value}: {e}"))
    }

    /// Everything in `DIR/env` (KUBECONFIG, KUBE_APISERVER, KUBECTL, ETCD_ENDPOINT, ...).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// A component's log (one of [`COMPONENTS`]).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// The processes kube-up started, as `(name, pid)`.
    pub fn pids(&self) -> Result<Vec<(String, u32)>, String> {
        read_pids(&self.dir.join("pids"))
    }

    /// `kubectl ARGS` as cluster-admin; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_with(&self.kubeconfig(), args, None)
    }

    /// `kubectl ARGS` as ServiceAccount veer-system/veer-controller.
    pub fn kubectl_as_veer(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_with(&self.veer_kubeconfig(), args, None)
    }

    /// `kubectl apply -f -` of `yaml` as cluster-admin; kubectl's stdout.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        self.kubectl_with(&self.kubeconfig(), &["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl ARGS` with `stdin` as cluster-admin (`create -f -`, `replace -f -`, ...).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        self.kubectl_with(&self.kubeconfig(), args, Some(stdin))
    }

    /// Creates namespace `name` and waits until its `default` ServiceAccount exists: until
    /// then the API server refuses pods there (the controller manager creates it).
    pub fn create_namespace(&self, name: &str) -> Result<(), String> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        ))?;
        self.wait_for(
            &format!("ServiceAccount {name}/default"),
            Duration::from_secs(30),
            || self.kubectl(&["get", "serviceaccount", "default", "-n", name]),
        )
        .map(|_| ())
    }

    /// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok` or `timeout` passes; the
    /// error names `what` and the probe's last error.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        poll_until(what, timeout, POLL_INTERVAL, probe)
    }

    /// Stops the cluster now (kube-down.sh), reporting a failure that drop would only print.
    pub fn down(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        kube_down(&self.dir)
    }

    fn kubectl_with(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        let kubectl = self.bin_dir().join("kubectl");
        let mut cmd = Command::new(&kubectl);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("run {}: {e}", kubectl.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| format!("kubectl {}: write stdin: {e}", args.join(" ")))?;
        }
        let out: Output = child
            .wait_with_output()
            .map_err(|e| format!("kubectl {}: {e}", args.join(" ")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "kubectl {} ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                if stdout.is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {stdout}")
                }
            ))
        }
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
        if std::thread::panicking() {
            // Kept for inspection: the logs say what each component saw.
            eprintln!(
                "---- Kubernetes control plane kept at {} (logs/*.log); kube-apiserver log tail ----\n{}\n---- end ----",
                self.dir.display(),
                tail(&self.log_path("kube-apiserver"), 30)
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
            let _ = fs::remove_file(self.dir.with_extension("kube-up.log"));
        }
    }
}

/// Runs `scripts/kube-down.sh DIR`.
fn kube_down(dir: &Path) -> Result<(), String> {
    let script = workspace_root().join("scripts/kube-down.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/kube-down.sh {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A new directory for one cluster under the system temp dir. Short and plain, because the
/// scripts put it unquoted into kubeconfigs and command lines.
fn fresh_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "veer-kube-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `export KEY=value` lines (kube-up.sh writes values without quotes).
fn read_env(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// `<name> <pid>` lines.
fn read_pids(path: &Path) -> Result<Vec<(String, u32)>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next().map(str::parse::<u32>)) {
                (Some(name), Some(Ok(pid))) => Ok((name.to_string(), pid)),
                _ => Err(format!("{}: bad line {l:?}", path.display())),
            }
        })
        .collect()
}
