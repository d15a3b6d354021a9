//! Polling with a deadline. Tests wait for readiness and for effects this way, never with a
//! fixed sleep: the wait ends as soon as the effect is there, and a timeout says what was
//! last seen. One implementation of the deadline and the message, with a blocking and an
//! async entry point (the controller's tests poll from async code).

use std::future::Future;
use std::time::{Duration, Instant};

/// The deadline and the last failure of one wait.
struct Wait<'a> {
    what: &'a str,
    timeout: Duration,
    deadline: Instant,
}

impl<'a> Wait<'a> {
    fn new(what: &'a str, timeout: Duration) -> Self {
        Wait {
            what,
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// After a failed probe: `Some(error)` once the deadline has passed. The probe always
    /// runs at least once, also with a zero timeout.
    fn expired(&self, last: &str) -> Option<String> {
        (Instant::now() >= self.deadline).then(|| {
            format!(
                "timed out after {:?} waiting for {}; last: {last}",
                self.timeout, self.what
            )
        })
    }
}

/// Runs `probe` every `interval` until it returns `Ok`, or fails once `timeout` has passed
/// with an error naming `what` and carrying the probe's last error. Blocks the thread.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let wait = Wait::new(what, timeout);
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(last) => {
                if let Some(e) = wait.expired(&last) {
                    return Err(e);
                }
            }
        }
        std::thread::sleep(interval);
    }
}

/// [`poll_until`] for async probes, sleeping on the tokio timer between them.
pub async fn poll_until_async<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let wait = Wait::new(what, timeout);
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(last) => {
                if let Some(e) = wait.expired(&last) {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn returns_the_first_success_and_times_out_with_the_last_error() {
        let mut n = 0;
        let v = poll_until("three", Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            }
        });
        assert_eq!(v, Ok(3));
        let e = poll_until::<()>("never", Duration::ZERO, Duration::ZERO, || {
            Err("still no".into())
        })
        .unwrap_err();
        assert_eq!(e, "timed out after 0ns waiting for never; last: still no");
    }
}
