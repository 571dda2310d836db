//! The three phases of adversarial training, switched by the discriminator's smoothed accuracy
//! on a held-out batch.
//!
//! Why phases: a reward from a discriminator that cannot yet tell real from generated is noise,
//! so the critic warms up alone; once it can, both train; when it wins too clearly, its
//! rewards saturate and the generator learns little, so it pauses and the generator catches up
//! until the accuracy falls back.

use serde::{Deserialize, Serialize};

/// Which networks train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// 1: only the discriminator trains.
    Warmup,
    /// 2: both train.
    Joint,
    /// 3: the discriminator pauses, the adapter trains on its rewards.
    Focus,
}

impl Phase {
    pub fn trains_discriminator(self) -> bool {
        matches!(self, Self::Warmup | Self::Joint)
    }

    pub fn trains_adapter(self) -> bool {
        matches!(self, Self::Joint | Self::Focus)
    }

    /// 1, 2 or 3 (for plots).
    pub fn number(self) -> u8 {
        match self {
            Self::Warmup => 1,
            Self::Joint => 2,
            Self::Focus => 3,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Warmup => "warm-up",
            Self::Joint => "joint",
            Self::Focus => "focus",
        })
    }
}

/// When to switch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseConfig {
    /// Warm-up ends when the smoothed accuracy reaches this…
    pub warmup_exit: f64,
    /// …or after this many steps (a generator already indistinguishable from the data would
    /// otherwise keep the adapter from ever training).
    pub warmup_max_steps: u64,
    /// Joint → focus at or above this accuracy.
    pub focus_enter: f64,
    /// Focus → joint below this accuracy.
    pub focus_exit: f64,
    /// The accuracy is an exponential moving average over about this many steps.
    pub smoothing: u32,
}

impl Default for PhaseConfig {
    fn default() -> Self {
        Self {
            warmup_exit: 0.7,
            warmup_max_steps: 300,
            focus_enter: 0.85,
            focus_exit: 0.65,
            smoothing: 5,
        }
    }
}

impl PhaseConfig {
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        if !(unit(self.warmup_exit) && unit(self.focus_enter) && unit(self.focus_exit)) {
            return Err("phase thresholds are accuracies, within 0..=1".into());
        }
        if self.focus_exit > self.focus_enter {
            return Err(format!(
                "the focus exit threshold ({}) must not exceed the focus entry threshold ({})",
                self.focus_exit, self.focus_enter
            ));
        }
        if self.smoothing == 0 {
            return Err("phase smoothing must be at least 1 step".into());
        }
        Ok(())
    }

    /// The smoothed accuracy after a new measurement.
    pub fn smooth(&self, previous: Option<f64>, accuracy: f64) -> f64 {
        let alpha = 2.0 / (f64::from(self.smoothing) + 1.0);
        previous.map_or(accuracy, |p| (1.0 - alpha) * p + alpha * accuracy)
    }

    /// The phase for the next step, given the current one, the steps done and the smoothed
    /// accuracy.
    pub fn next(&self, phase: Phase, step: u64, accuracy: f64) -> Phase {
        match phase {
            Phase::Warmup if accuracy >= self.warmup_exit || step >= self.warmup_max_steps => {
                Phase::Joint
            }
            Phase::Joint if accuracy >= self.focus_enter => Phase::Focus,
            Phase::Focus if accuracy < self.focus_exit => Phase::Joint,
            p => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_thresholds_with_hysteresis() {
        let c = PhaseConfig::default();
        assert_eq!(c.next(Phase::Warmup, 3, 0.6), Phase::Warmup);
        assert_eq!(c.next(Phase::Warmup, 3, 0.7), Phase::Joint);
        assert_eq!(c.next(Phase::Warmup, 300, 0.5), Phase::Joint);
        assert_eq!(c.next(Phase::Joint, 9, 0.8), Phase::Joint);
        assert_eq!(c.next(Phase::Joint, 9, 0.9), Phase::Focus);
        // Between the two thresholds focus stays focus and joint stays joint.
        assert_eq!(c.next(Phase::Focus, 9, 0.7), Phase::Focus);
        assert_eq!(c.next(Phase::Focus, 9, 0.6), Phase::Joint);
        assert!(c.smooth(Some(0.5), 1.0) > 0.5 && c.smooth(Some(0.5), 1.0) < 1.0);
        assert!(PhaseConfig {
            focus_exit: 0.9,
            ..c
        }
        .validate()
        .is_err());
    }
}
