//! The setup every child process of a test gets.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child get SIGKILL when the thread that spawns it dies (Linux
/// `PR_SET_PDEATHSIG`): a test binary killed before its guards drop leaves no orphan Envoy,
/// Prometheus or controller holding ports, files or shared memory. Spawn long-lived children
/// from the test's own thread, not from a short-lived helper thread.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec; prctl is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}
