//! Who hears about a new table at once: the registry of per-worker notice queues.
//!
//! Every root context (one per Envoy thread) registers its own shared queue, named
//! `veer.<plugin>.notify.<root context seed>`, and lists the queue's token in the shared-data
//! key `veer.<plugin>.workers` with an expiry it renews from its tick. The poller, after it
//! stores a new table, enqueues a notice on every listed queue but its own; Envoy then runs
//! `on_queue_ready` on the registering worker's own thread, and that worker adopts the table
//! from shared data right away instead of on its next tick.
//!
//! Names are per root context, not per thread: a plugin reconfiguration or a restarted VM makes
//! new root contexts, which register new queues and list themselves on their first tick; the
//! old ones unlist themselves in `on_done`, and any entry nobody renews expires. A token whose
//! queue is gone is skipped. The tick stays as the safety net: a worker whose notice was lost
//! (not yet listed, its entry lost to a concurrent write, a host error) adopts the table on its
//! next tick, at most `TICK_MS` later.

/// How long an entry stays listed without renewal. Workers renew at half of it, so an
/// entry outlives a few missed ticks but a dead context stops receiving notices soon.
pub const WORKER_TTL_MS: u64 = 10_000;
/// Most entries kept: far above any `--concurrency`, so only a pathological churn of root
/// contexts reaches it (the entries closest to expiry go first).
pub const MAX_WORKERS: usize = 256;

/// One listed queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub token: u32,
    pub expires_ms: u64,
}

/// The value of `veer.<plugin>.workers`: `<token> <expires ms>` entries joined by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// Parses the stored value; an entry that does not parse is dropped, not an error.
    pub fn decode(bytes: &[u8]) -> Registry {
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let entries = text
            .split(';')
            .filter_map(|e| {
                let (token, expires) = e.split_once(' ')?;
                Some(Entry {
                    token: token.parse().ok()?,
                    expires_ms: expires.parse().ok()?,
                })
            })
            .collect();
        Registry { entries }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.entries.iter().enumerate() {
            let sep = if i == 0 { "" } else { ";" };
            out.push_str(&format!("{sep}{} {}", e.token, e.expires_ms));
        }
        out
    }

    /// The registry with `token` listed until `now_ms + WORKER_TTL_MS` and expired entries
    /// dropped, or `None` when `token` is listed for more than half the TTL yet (nothing to
    /// write: a worker writes this key every few seconds, not every tick).
    pub fn refreshed(&self, token: u32, now_ms: u64) -> Option<Registry> {
        let fresh_until = now_ms.saturating_add(WORKER_TTL_MS / 2);
        if self
            .entries
            .iter()
            .any(|e| e.token == token && e.expires_ms > fresh_until)
        {
            return None;
        }
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.token != token && e.expires_ms > now_ms)
            .copied()
            .collect();
        while entries.len() >= MAX_WORKERS {
            // No sort: it would add kilobytes to the module for a case that should not happen.
            let soonest = entries.iter().enumerate().min_by_key(|(_, e)| e.expires_ms);
            if let Some((i, _)) = soonest {
                entries.swap_remove(i);
            }
        }
        entries.push(Entry {
            token,
            expires_ms: now_ms.saturating_add(WORKER_TTL_MS),
        });
        Some(Registry { entries })
    }

    /// The registry without `token`, or `None` when it is not listed.
    pub fn without(&self, token: u32) -> Option<Registry> {
        if !self.entries.iter().any(|e| e.token == token) {
            return None;
        }
        Some(Registry {
            entries: self
                .entries
                .iter()
                .filter(|e| e.token != token)
                .copied()
                .collect(),
        })
    }

    /// Tokens to notify at `now_ms`: unexpired, other than `own` (the poller has the table).
    pub fn targets(&self, now_ms: u64, own: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .iter()
            .filter(move |e| e.expires_ms > now_ms && Some(e.token) != own)
            .map(|e| e.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trips_and_drops_garbage_entries() {
        let r = Registry::decode(b"3 1000;x 5;7 2000;8;9 99999999999999999999");
        assert_eq!(r.encode(), "3 1000;7 2000");
        assert_eq!(Registry::decode(r.encode().as_bytes()), r);
        assert_eq!(Registry::decode(b"").encode(), "");
        assert_eq!(Registry::decode(&[0xff, 0xfe]).encode(), "");
    }

    #[test]
    fn refresh_adds_renews_at_half_ttl_and_prunes_expired() {
        let r = Registry::default().refreshed(1, 0).unwrap();
        assert_eq!(r.encode(), "1 10000");
        assert!(r.refreshed(1, 4_999).is_none(), "still fresh: no write");
        let r = r.refreshed(2, 1_000).unwrap();
        let r = r.refreshed(1, 5_000).unwrap();
        assert_eq!(r.encode(), "2 11000;1 15000");
        // 2 stopped renewing (its root context is gone without on_done): pruned on a write.
        let r = r.refreshed(1, 11_000).unwrap();
        assert_eq!(r.encode(), "1 21000");
    }

    #[test]
    fn targets_skip_expired_and_the_poller_itself() {
        let r = Registry::decode(b"1 100;2 50;3 100");
        assert_eq!(r.targets(60, Some(3)).collect::<Vec<_>>(), vec![1]);
        assert_eq!(r.targets(60, None).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(r.targets(100, None).count(), 0);
    }

    #[test]
    fn without_unlists_once() {
        let r = Registry::decode(b"1 100;2 100");
        let r = r.without(1).unwrap();
        assert_eq!(r.encode(), "2 100");
        assert!(r.without(1).is_none(), "nothing to write");
    }

    #[test]
    fn size_is_bounded_keeping_the_freshest() {
        let mut r = Registry::default();
        for t in 0..(MAX_WORKERS as u32 + 10) {
            r = r.refreshed(t, u64::from(t)).unwrap();
        }
        assert_eq!(r.entries.len(), MAX_WORKERS);
        assert!(r.targets(0, None).any(|t| t == MAX_WORKERS as u32 + 9));
        assert!(!r.targets(0, None).any(|t| t == 0));
    }

    /// Envoy as the registry sees it: shared data with CAS (a write with CAS 0 is
    /// unconditional) and queues by token, with some notices lost on the way.
    #[derive(Default)]
    struct FakeEnvoy {
        value: Vec<u8>,
        cas: u32,
        queues: BTreeMap<u32, Vec<u64>>,
        drop_notices_to: Vec<u32>,
    }

    impl FakeEnvoy {
        fn write(&mut self, value: String, cas: u32) -> bool {
            if cas != 0 && cas != self.cas {
                return false;
            }
            self.value = value.into_bytes();
            self.cas += 1;
            true
        }
        /// What a worker's tick does with the registry (`VeerRoot::keep_listed`).
        fn tick_register(&mut self, token: u32, now: u64) {
            self.queues.entry(token).or_default();
            let (seen, cas) = (Registry::decode(&self.value), self.cas);
            if let Some(next) = seen.refreshed(token, now) {
                self.write(next.encode(), cas);
            }
        }
        /// What the poller does after storing a generation (`VeerRoot::notify_workers`).
        fn notify(&mut self, own: u32, generation: u64, now: u64) -> usize {
            let targets: Vec<u32> = Registry::decode(&self.value)
                .targets(now, Some(own))
                .collect();
            let mut queued = 0;
            for t in targets {
                // A token whose queue is gone is skipped (enqueue says NotFound).
                let Some(q) = self.queues.get_mut(&t) else {
                    continue;
                };
                if !self.drop_notices_to.contains(&t) {
                    q.push(generation);
                    queued += 1;
                }
            }
            queued
        }
    }

    /// A worker's view: the generation it decides with, and when it adopted it.
    struct Worker {
        token: u32,
        /// Phase of its tick within `TICK_MS`: ticks are per thread and not aligned.
        phase_ms: u64,
        applied: u64,
        adopted_at: Option<u64>,
    }

    /// Publishes a generation at `t0` while the notice to one worker is lost, then runs the
    /// event loop in 1 ms steps: notices are handled at once, ticks at their own phase. The
    /// worker without a notice must still adopt on its next tick, within `TICK_MS`.
    #[test]
    fn a_dropped_notice_is_caught_by_the_next_safety_net_tick() {
        let tick = u64::from(crate::root::TICK_MS);
        let mut envoy = FakeEnvoy::default();
        let mut workers: Vec<Worker> = (0..4)
            .map(|i| Worker {
                token: 10 + i,
                phase_ms: u64::from(i) * 250 + 7,
                applied: 1,
                adopted_at: None,
            })
            .collect();
        // Two racing first registrations on the absent key: the CAS-0 write of the second
        // replaces the first; the first re-lists itself on its next tick.
        let (a, b) = (Registry::default(), Registry::default());
        envoy.queues.entry(10).or_default();
        envoy.queues.entry(11).or_default();
        envoy.write(a.refreshed(10, 0).unwrap().encode(), 0);
        envoy.write(b.refreshed(11, 0).unwrap().encode(), 0);
        for now in 1..=tick {
            for w in &workers {
                if now % tick == w.phase_ms % tick {
                    envoy.tick_register(w.token, now);
                }
            }
        }
        let listed: Vec<u32> = Registry::decode(&envoy.value).targets(tick, None).collect();
        assert_eq!(
            listed.len(),
            4,
            "every worker listed after one tick: {listed:?}"
        );

        // Worker 0 polls; the notice to worker 2 (token 12) is lost; token 99 is listed but
        // its queue is gone.
        let t0 = tick + 3;
        let mut reg = Registry::decode(&envoy.value);
        reg = reg.refreshed(99, t0).unwrap();
        envoy.value = reg.encode().into_bytes();
        envoy.drop_notices_to = vec![12];
        workers[0].applied = 2;
        workers[0].adopted_at = Some(t0);
        assert_eq!(envoy.notify(10, 2, t0), 2, "workers 1 and 3 notified");
        for now in t0..t0 + 2 * tick {
            for w in workers.iter_mut() {
                let notice = envoy
                    .queues
                    .get_mut(&w.token)
                    .is_some_and(|q| q.drain(..).count() > 0);
                let ticks = now % tick == w.phase_ms % tick;
                if (notice || ticks) && w.applied < 2 {
                    w.applied = 2;
                    w.adopted_at = Some(now);
                }
            }
        }
        for w in &workers {
            let took = w.adopted_at.map(|t| t - t0);
            match w.token {
                10 | 11 | 13 => assert_eq!(took, Some(0), "notified worker {}", w.token),
                _ => {
                    let took = took.unwrap_or(u64::MAX);
                    assert!(
                        took > 0 && took <= tick,
                        "dropped notice: adopted after {took} ms"
                    );
                }
            }
        }
    }
}
