//! What a decision returns ([`Transition`]: the next state and [`Action`]s), and the
//! builder every decision uses so that state changes and their events stay together.

use serde::{Deserialize, Serialize};
use veer_core::Route;

use super::{route_for_state, CanaryState, Phase, Timestamp};
use crate::spec::CanarySpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventSeverity {
    Normal,
    Warning,
}

impl EventSeverity {
    /// The `eventType` of Flagger's event webhook payload.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSeverity::Normal => "Normal",
            EventSeverity::Warning => "Warning",
        }
    }
}

/// An effect for the runner, applied after the new state is persisted.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish this route (weight, mirror or revision changed). It equals
    /// `route_for_state(spec, &transition.state)`.
    PublishRoute(Box<Route>),
    /// The primary now runs this revision (Kubernetes mode: copy the canary's template to
    /// the primary; local mode: record it).
    PromotePrimary { revision: String },
    /// Call the post-rollout hooks with this phase in the payload; failures are only logged.
    PostRolloutHooks { phase: Phase },
    /// Log this and send it to the event hooks.
    Event {
        severity: EventSeverity,
        message: String,
    },
}

/// The result of a pure step: the state to persist, then the effects to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: CanaryState,
    pub actions: Vec<Action>,
}

impl Transition {
    pub(super) fn unchanged(state: &CanaryState) -> Transition {
        Transition {
            state: state.clone(),
            actions: Vec::new(),
        }
    }
}

/// Accumulates the new state and actions of one transition.
pub(super) struct Builder<'a> {
    pub(super) spec: &'a CanarySpec,
    pub(super) state: CanaryState,
    pub(super) actions: Vec<Action>,
    pub(super) route_before: Route,
    pub(super) now: Timestamp,
}

impl<'a> Builder<'a> {
    pub(super) fn new(spec: &'a CanarySpec, state: &CanaryState, now: Timestamp) -> Builder<'a> {
        Builder {
            spec,
            state: state.clone(),
            actions: Vec::new(),
            route_before: route_for_state(spec, state),
            now,
        }
    }

    pub(super) fn event(&mut self, severity: EventSeverity, message: String) {
        self.state.message.clone_from(&message);
        self.actions.push(Action::Event { severity, message });
    }

    pub(super) fn info(&mut self, message: String) {
        self.event(EventSeverity::Normal, message);
    }

    pub(super) fn warn(&mut self, message: String) {
        self.event(EventSeverity::Warning, message);
    }

    pub(super) fn phase(&mut self, phase: Phase) {
        self.state.set_phase(phase, self.now);
    }

    pub(super) fn progress(&mut self) {
        self.state.last_progress_at = Some(self.now);
    }

    /// Publishes the route if it changed; placed first so the runner applies it first.
    pub(super) fn finish(self) -> Transition {
        let mut actions = self.actions;
        let route = route_for_state(self.spec, &self.state);
        if route != self.route_before {
            actions.insert(0, Action::PublishRoute(Box::new(route)));
        }
        Transition {
            state: self.state,
            actions,
        }
    }

    pub(super) fn key(&self) -> String {
        self.spec.key()
    }

    pub(super) fn roll_back(&mut self, why: &str) {
        let key = self.key();
        let revision = self.state.canary_revision.clone().unwrap_or_default();
        self.warn(format!("Rolling back {key} revision {revision}: {why}"));
        self.state.weight = 0;
        self.state.mirror = false;
        self.state.failed_checks = 0;
        self.state.iterations = 0;
        self.state.failed_revision = self.state.canary_revision.clone();
        self.phase(Phase::Failed);
        self.actions.push(Action::PostRolloutHooks {
            phase: Phase::Failed,
        });
        self.warn(format!(
            "Canary failed! All traffic of {key} is on the primary (revision {})",
            self.state.primary_revision.as_deref().unwrap_or("?")
        ));
    }

    /// Primary takes the canary revision; weight moves back in the Promoting passes.
    pub(super) fn enter_promoting(&mut self) {
        let revision = self.state.canary_revision.clone().unwrap_or_default();
        self.state.primary_revision = Some(revision.clone());
        self.phase(Phase::Promoting);
        self.progress();
        self.actions.push(Action::PromotePrimary {
            revision: revision.clone(),
        });
        let key = self.key();
        self.info(format!(
            "Promoting {key}: the primary takes revision {revision}"
        ));
    }

    pub(super) fn succeed(&mut self) {
        self.state.weight = 0;
        self.state.mirror = false;
        self.phase(Phase::Succeeded);
        self.actions.push(Action::PostRolloutHooks {
            phase: Phase::Succeeded,
        });
        let key = self.key();
        let revision = self.state.primary_revision.clone().unwrap_or_default();
        self.info(format!("Promotion completed! {key} revision {revision}"));
    }

    /// Starts (or restarts) a run on the current canary revision.
    pub(super) fn start_run(&mut self) {
        self.state.weight = 0;
        self.state.mirror = false;
        self.state.failed_checks = 0;
        self.state.iterations = 0;
        self.state.failed_revision = None;
        self.state.cookie_revision = self.state.canary_revision.clone();
        self.state.last_checks.clear();
        self.progress();
        self.phase(Phase::Progressing);
    }
}

// ---------------------------------------------------------------------------------------
