//! A directory made immutable (`chattr +i`) for a guard's lifetime: the tests run as root,
//! where permission bits stop nothing, and root cannot create files in an immutable one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `dir` is immutable until this is dropped.
pub struct ImmutableDir(PathBuf);

impl ImmutableDir {
    pub fn set(dir: &Path) -> ImmutableDir {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("chattr is missing ({e}): apt-get install -y e2fsprogs"));
        assert!(
            out.status.success(),
            "chattr +i {} failed (the filesystem must support attributes): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        ImmutableDir(dir.to_path_buf())
    }
}

impl Drop for ImmutableDir {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}
