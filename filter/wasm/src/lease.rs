//! Who polls the controller: a time-limited lease in Envoy shared data, taken and renewed with
//! compare-and-swap, so exactly one root context per Envoy process polls at a time.
//!
//! Envoy's shared data only checks CAS when the key already exists, so two workers can both
//! "take" an absent lease in the same instant. A claim therefore only becomes leadership on a
//! later tick, when the claimant reads its own record back and renews it with CAS; of two racing
//! claims only the one that was written last survives that read. A poller that stops ticking
//! stops renewing, its record expires, and the next worker to tick takes over with CAS.

/// The lease value: `<owner as 16 hex digits> <expiry, ms since the epoch>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub owner: u64,
    pub expires_ms: u64,
}

impl LeaseRecord {
    pub fn encode(&self) -> String {
        format!("{:016x} {}", self.owner, self.expires_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<LeaseRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (owner, expires) = text.split_once(' ')?;
        Some(LeaseRecord {
            owner: u64::from_str_radix(owner, 16).ok()?,
            expires_ms: expires.parse().ok()?,
        })
    }
}

/// What to do on this tick, given the lease as read from shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// Someone else holds a live lease.
    Follow,
    /// Write our record (with this CAS: 0 when the key is absent). Not leader yet.
    Claim { record: String, cas: u32 },
    /// It is ours: renew with CAS; lead this tick if the write succeeds.
    Renew { record: String, cas: u32 },
}

/// Decides the lease step for `me` at `now_ms`, from the current value and its CAS.
pub fn step(me: u64, now_ms: u64, ttl_ms: u64, current: Option<&[u8]>, cas: u32) -> LeaseStep {
    let mine = LeaseRecord {
        owner: me,
        expires_ms: now_ms.saturating_add(ttl_ms),
    }
    .encode();
    match current.and_then(LeaseRecord::decode) {
        Some(rec) if rec.owner == me => LeaseStep::Renew { record: mine, cas },
        Some(rec) if rec.expires_ms > now_ms => LeaseStep::Follow,
        // Absent, unreadable or expired: anyone may claim it.
        _ => LeaseStep::Claim { record: mine, cas },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy shared data as the lease sees it: a value and a CAS token that changes on every
    /// write; a write with CAS 0 is unconditional (that is Envoy's behaviour).
    #[derive(Default)]
    struct FakeSharedData {
        value: Option<String>,
        cas: u32,
    }

    impl FakeSharedData {
        fn read(&self) -> (Option<String>, u32) {
            (self.value.clone(), self.cas)
        }
        fn write(&mut self, record: String, cas: u32) -> bool {
            if cas != 0 && cas != self.cas {
                return false;
            }
            self.value = Some(record);
            self.cas += 1;
            true
        }
    }

    /// One tick of contender `me` whose read happened earlier (`seen`): returns whether it leads.
    fn apply(store: &mut FakeSharedData, me: u64, now: u64, seen: (Option<String>, u32)) -> bool {
        match step(me, now, 3000, seen.0.as_deref().map(str::as_bytes), seen.1) {
            LeaseStep::Follow => false,
            LeaseStep::Claim { record, cas } => {
                store.write(record, cas);
                false
            }
            LeaseStep::Renew { record, cas } => store.write(record, cas),
        }
    }

    #[test]
    fn racing_claims_on_an_absent_lease_end_with_one_leader() {
        let mut store = FakeSharedData::default();
        // Both read "absent" before either writes: both claims land (CAS 0 is unconditional).
        let (seen_a, seen_b) = (store.read(), store.read());
        assert!(!apply(&mut store, 1, 0, seen_a));
        assert!(!apply(&mut store, 2, 0, seen_b));
        // Next ticks, in either order: only the claim written last survives.
        for order in [[1u64, 2], [2, 1]] {
            let mut s = FakeSharedData {
                value: store.value.clone(),
                cas: store.cas,
            };
            let leaders: Vec<u64> = order
                .iter()
                .filter(|&&me| {
                    let seen = s.read();
                    apply(&mut s, me, 100, seen)
                })
                .copied()
                .collect();
            assert_eq!(leaders, vec![2]);
        }
    }

    #[test]
    fn a_silent_leader_is_replaced_after_the_ttl_and_only_once() {
        let mut store = FakeSharedData::default();
        let seen = store.read();
        apply(&mut store, 1, 0, seen);
        let seen = store.read();
        assert!(
            apply(&mut store, 1, 100, seen),
            "claimant leads on its next tick"
        );
        // Leader 1 stops ticking. Before expiry, 2 and 3 follow.
        for me in [2, 3] {
            let seen = store.read();
            assert!(!apply(&mut store, me, 3000, seen));
        }
        // After expiry both read the same expired record; CAS lets exactly one claim land.
        let (seen2, seen3) = (store.read(), store.read());
        apply(&mut store, 2, 3200, seen2);
        apply(&mut store, 3, 3200, seen3);
        let winners: Vec<u64> = [2u64, 3]
            .into_iter()
            .filter(|&me| {
                let seen = store.read();
                apply(&mut store, me, 3300, seen)
            })
            .collect();
        assert_eq!(winners, vec![2]);
        // The old leader, back from a stall, finds a live foreign lease and follows.
        let seen = store.read();
        assert!(!apply(&mut store, 1, 3400, seen));
    }

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let r = LeaseRecord {
            owner: 0xdead_beef,
            expires_ms: 1_700_000_000_123,
        };
        assert_eq!(LeaseRecord::decode(r.encode().as_bytes()), Some(r));
        assert_eq!(LeaseRecord::decode(b"zz 12"), None);
        assert_eq!(LeaseRecord::decode(b"12"), None);
        assert_eq!(LeaseRecord::decode(&[0xff, b' ', b'1']), None);
    }

    #[test]
    fn absent_lease_is_claimed_not_led() {
        assert!(matches!(
            step(1, 1000, 3000, None, 0),
            LeaseStep::Claim { cas: 0, .. }
        ));
    }

    #[test]
    fn own_record_is_renewed_with_its_cas() {
        let rec = LeaseRecord {
            owner: 1,
            expires_ms: 4000,
        }
        .encode();
        match step(1, 2000, 3000, Some(rec.as_bytes()), 7) {
            LeaseStep::Renew { record, cas } => {
                assert_eq!(cas, 7);
                assert_eq!(
                    LeaseRecord::decode(record.as_bytes()).unwrap().expires_ms,
                    5000
                );
            }
            other => panic!("expected renew, got {other:?}"),
        }
    }

    #[test]
    fn live_foreign_lease_is_followed_and_expired_one_is_taken_with_cas() {
        let rec = LeaseRecord {
            owner: 2,
            expires_ms: 4000,
        }
        .encode();
        assert_eq!(
            step(1, 3999, 3000, Some(rec.as_bytes()), 9),
            LeaseStep::Follow
        );
        assert!(matches!(
            step(1, 4000, 3000, Some(rec.as_bytes()), 9),
            LeaseStep::Claim { cas: 9, .. }
        ));
        assert!(matches!(
            step(1, 0, 3000, Some(b"garbage"), 3),
            LeaseStep::Claim { cas: 3, .. }
        ));
    }
}
