//! When the poller asks the controller again, and what it asks.
//!
//! The poll is a long poll: the controller holds it up to `timeoutMs` and answers 200 as soon
//! as the table changes, else 304. After a 200 with a newer table the next poll starts at once:
//! the controller coalesces its changes into a few generations a second, and a change published
//! while the gateway was busy fetching the last one must not wait `pollMs` (a promotion
//! publishes two generations in quick succession). After a 304, or a 200 with nothing newer,
//! a new poll starts no sooner than `pollMs` after the previous one started, so a controller
//! that answers at once is asked about once per `pollMs`, not in a tight loop. Failures (connection refused, timeout, 5xx, a table that fails validation)
//! back off exponentially from `pollMs` up to `MAX_BACKOFF_MS`, keeping the last good table.

use veer_core::ControllerEndpoint;

/// Longest wait between failed polls.
pub const MAX_BACKOFF_MS: u64 = 10_000;
/// Extra time the HTTP call waits beyond the hold it asked for, so the controller's 304
/// arrives before Envoy's own timeout fires.
pub const CALL_GRACE_MS: u64 = 5_000;

/// What a successful poll brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollAnswer {
    /// A newer table, now applied: poll again at once.
    NewTable,
    /// A 304, or a table no newer than the applied one: wait out `pollMs`.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSchedule {
    poll_ms: u64,
    next_at_ms: u64,
    failures: u32,
    /// Start time of the poll in flight.
    in_flight_since: Option<u64>,
}

impl PollSchedule {
    pub fn new(poll_ms: u64) -> PollSchedule {
        PollSchedule {
            poll_ms: poll_ms.max(1),
            next_at_ms: 0,
            failures: 0,
            in_flight_since: None,
        }
    }

    /// Whether a poll should start now.
    pub fn due(&self, now_ms: u64) -> bool {
        self.in_flight_since.is_none() && now_ms >= self.next_at_ms
    }

    pub fn started(&mut self, now_ms: u64) {
        self.in_flight_since = Some(now_ms);
    }

    /// A 200 or 304: the next poll may start at once after a new table, else `pollMs` after
    /// this one started.
    pub fn succeeded(&mut self, now_ms: u64, answer: PollAnswer) {
        let started = self.in_flight_since.take().unwrap_or(now_ms);
        self.failures = 0;
        self.next_at_ms = match answer {
            PollAnswer::NewTable => now_ms,
            PollAnswer::Unchanged => started.saturating_add(self.poll_ms),
        };
    }

    /// Anything else: wait `pollMs · 2^(failures-1)`, capped.
    pub fn failed(&mut self, now_ms: u64) -> u64 {
        self.in_flight_since = None;
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(20);
        let delay = self
            .poll_ms
            .saturating_mul(1u64 << shift)
            .min(MAX_BACKOFF_MS.max(self.poll_ms));
        self.next_at_ms = now_ms.saturating_add(delay);
        delay
    }

    /// A call the host never answered (should not happen: Envoy always calls back, on
    /// timeout too) is abandoned after its own timeout plus grace, so polling cannot wedge.
    pub fn abandon_stuck(&mut self, now_ms: u64, timeout_ms: u64) -> bool {
        match self.in_flight_since {
            Some(since) if now_ms.saturating_sub(since) > timeout_ms + 2 * CALL_GRACE_MS => {
                self.failed(now_ms);
                true
            }
            _ => false,
        }
    }
}

/// `:path` of the poll: `<path>?after=<generation>&waitMs=<timeoutMs>`.
pub fn poll_path(endpoint: &ControllerEndpoint, after: u64) -> String {
    let sep = if endpoint.path.contains('?') {
        '&'
    } else {
        '?'
    };
    format!(
        "{}{sep}after={after}&waitMs={}",
        endpoint.path, endpoint.timeout_ms
    )
}

/// `:authority` of the poll: the configured one, else the cluster name's host part
/// (`outbound|8080||veer-controller.veer-system.svc.cluster.local` → the FQDN).
pub fn poll_authority(endpoint: &ControllerEndpoint) -> &str {
    if let Some(a) = endpoint.authority.as_deref() {
        return a;
    }
    endpoint
        .cluster
        .rsplit('|')
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or(&endpoint.cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(authority: Option<&str>) -> ControllerEndpoint {
        ControllerEndpoint {
            cluster: "outbound|8080||veer-controller.veer-system.svc.cluster.local".into(),
            authority: authority.map(str::to_string),
            path: "/v1/table".into(),
            poll_ms: 1000,
            timeout_ms: 30_000,
        }
    }

    #[test]
    fn path_and_authority() {
        assert_eq!(
            poll_path(&endpoint(None), 7),
            "/v1/table?after=7&waitMs=30000"
        );
        assert_eq!(
            poll_authority(&endpoint(None)),
            "veer-controller.veer-system.svc.cluster.local"
        );
        assert_eq!(poll_authority(&endpoint(Some("c.local"))), "c.local");
    }

    #[test]
    fn success_paces_by_poll_interval_from_start() {
        let mut s = PollSchedule::new(1000);
        assert!(s.due(0));
        s.started(100);
        assert!(!s.due(5000), "one poll at a time");
        s.succeeded(30_100, PollAnswer::Unchanged); // a long poll held 30 s: poll again at once
        assert!(s.due(30_100));
        s.started(30_100);
        s.succeeded(30_105, PollAnswer::Unchanged); // an immediate 304: wait out the interval
        assert!(!s.due(31_000));
        assert!(s.due(31_100));
    }

    #[test]
    fn a_new_table_is_followed_by_a_poll_at_once() {
        let mut s = PollSchedule::new(1000);
        s.started(0);
        s.succeeded(20, PollAnswer::NewTable);
        assert!(
            s.due(20),
            "a change published meanwhile must not wait pollMs"
        );
        s.started(20);
        s.succeeded(25, PollAnswer::Unchanged);
        assert!(!s.due(500));
        assert!(s.due(1020));
    }

    #[test]
    fn failures_back_off_exponentially_to_the_cap_and_reset_on_success() {
        let mut s = PollSchedule::new(1000);
        let delays: Vec<u64> = (0..6)
            .map(|_| {
                s.started(0);
                s.failed(0)
            })
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 10_000, 10_000]);
        s.started(0);
        s.succeeded(0, PollAnswer::Unchanged);
        s.started(0);
        assert_eq!(s.failed(0), 1000);
    }

    #[test]
    fn stuck_call_is_abandoned() {
        let mut s = PollSchedule::new(1000);
        s.started(0);
        assert!(!s.abandon_stuck(30_000, 30_000));
        assert!(s.abandon_stuck(41_000, 30_000));
        assert!(s.due(41_000 + 1000));
    }
}
