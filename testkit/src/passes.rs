//! The controller's own record of its analysis passes, read from its log.
//!
//! Before it saves a pass's transition, the controller logs one line (controller/src/runner):
//!
//! ```text
//! INFO veer_controller::runner: pass concluded; saving its transition canary=test/podinfo
//!     kind=Analysis passed=true weight=10 next_weight=20 phase=Progressing next_phase=Progressing
//! ```
//!
//! Written before the save, the line precedes any sign of the new weight (API, table,
//! gateway), also when the process is killed right after the save. [`check_raises`] holds
//! the tests' observations of the weight against it: every raise must follow a passing
//! analysis at the previous weight.

/// The message of the controller's per-pass line.
pub const PASS_LINE: &str = "pass concluded; saving its transition";

/// One pass, as the controller logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub canary: String,
    /// The engine's `PassKind` (`Analysis`, `PreRollout`, `Promote`, ...).
    pub kind: String,
    /// Every planned step ran and was ok (hooks, metrics, gates).
    pub passed: bool,
    pub weight: u64,
    pub next_weight: u64,
}

/// The passes logged for `canary` in `log`, in order. Lines that are not pass lines are
/// skipped; a pass line with a field missing is an error (the format changed).
pub fn passes(log: &str, canary: &str) -> Result<Vec<Pass>, String> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| l.contains(PASS_LINE)) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("no {name}= in the pass line {line:?}"))
        };
        let number = |name: &str| {
            field(name)?
                .parse::<u64>()
                .map_err(|e| format!("{name} in {line:?}: {e}"))
        };
        if field("canary")? != canary {
            continue;
        }
        out.push(Pass {
            canary: canary.to_string(),
            kind: field("kind")?.to_string(),
            passed: field("passed")? == "true",
            weight: number("weight")?,
            next_weight: number("next_weight")?,
        });
    }
    Ok(out)
}

/// The kinds of pass that may raise the weight: an analysis (hooks and metrics), and the
/// pre-rollout pass at weight 0 (pre-rollout hooks; no metrics without traffic).
const RAISING_KINDS: [&str; 2] = ["Analysis", "PreRollout"];

/// Checks each raise in `observed` (the weights a test saw, in order, across restarts)
/// against `passes`: a raise from `a` to `b` needs a pass of a raising kind that passed and
/// moved the weight from `a` to `b`, and each such pass accounts for one raise only. Call it
/// with the log as it is right after the observation: the line is written before the save,
/// so it must already be there.
pub fn check_raises(observed: &[u64], passes: &[Pass]) -> Result<(), String> {
    let mut unused: Vec<&Pass> = passes
        .iter()
        .filter(|p| p.passed && RAISING_KINDS.contains(&p.kind.as_str()))
        .collect();
    let mut last: Option<u64> = None;
    for &w in observed {
        if let Some(prev) = last.filter(|prev| w > *prev) {
            let Some(i) = unused
                .iter()
                .position(|p| p.weight == prev && p.next_weight == w)
            else {
                return Err(format!(
                    "the weight rose {prev} -> {w} with no passing analysis at {prev} before it \
                     in the controller's log; weights seen {observed:?}; passes logged {passes:#?}"
                ));
            };
            unused.remove(i);
        }
        last = Some(w);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(kind: &str, passed: bool, weight: u64, next: u64) -> String {
        format!(
            "2026-01-01T00:00:00Z  INFO veer_controller::runner: {PASS_LINE} canary=test/podinfo \
             kind={kind} passed={passed} weight={weight} next_weight={next} phase=Progressing \
             next_phase=Progressing\n"
        )
    }

    #[test]
    fn reads_the_controllers_line() {
        let log = format!(
            "noise\n{}{}",
            line("PreRollout", true, 0, 10),
            line(
                "RollBack(Threshold { failed_checks: 3, threshold: 3 })",
                false,
                10,
                0
            )
            .replace("test/podinfo", "other/one")
        );
        assert_eq!(
            passes(&log, "test/podinfo").unwrap(),
            vec![Pass {
                canary: "test/podinfo".into(),
                kind: "PreRollout".into(),
                passed: true,
                weight: 0,
                next_weight: 10
            }]
        );
    }

    /// The check is not vacuous: a raise with no pass, with a failed pass, with a pass at
    /// another weight, or two raises for one pass are all caught.
    #[test]
    fn a_raise_without_a_passing_analysis_at_the_previous_weight_is_caught() {
        let log = [
            line("PreRollout", true, 0, 10),
            line("Analysis", false, 10, 10),
            line("Analysis", true, 10, 20),
        ]
        .concat();
        let ok = passes(&log, "test/podinfo").unwrap();
        assert_eq!(check_raises(&[0, 10, 20, 20, 0], &ok), Ok(()));
        // 20 -> 30 with no pass at all.
        let e = check_raises(&[0, 10, 20, 30], &ok).unwrap_err();
        assert!(e.contains("rose 20 -> 30"), "{e}");
        // Only the failed pass at 10.
        let failed = passes(
            &[
                line("PreRollout", true, 0, 10),
                line("Analysis", false, 10, 20),
            ]
            .concat(),
            "test/podinfo",
        )
        .unwrap();
        assert!(check_raises(&[0, 10, 20], &failed).is_err());
        // A pass at 10 -> 20 cannot explain a raise 0 -> 20 (a skipped step).
        assert!(check_raises(&[0, 20], &ok).is_err());
        // One pass, two raises 10 -> 20 (a repeated step after a restart).
        assert!(check_raises(&[0, 10, 20, 10, 20], &ok).is_err());
        // Promotion passes move the weight down and never count as analysis.
        let promote = passes(&line("Promote", true, 10, 20), "test/podinfo").unwrap();
        assert!(check_raises(&[10, 20], &promote).is_err());
    }
}
