//! The learning-rate schedule: linear warm-up from 0, then cosine decay to a floor.
//!
//! Warm-up keeps AdamW's first updates (taken with poorly estimated second moments) small; the
//! cosine tail anneals to `min_ratio · peak` rather than 0 so that a run extended with
//! `--resume --steps N` still learns.

use serde::{Deserialize, Serialize};

/// Warm-up + cosine schedule over `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
}

impl Schedule {
    /// Learning rate for the update made at `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let s = Schedule {
            peak: 1e-3,
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        assert!(s.lr(60) < s.lr(30));
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(1000) - 1e-4).abs() < 1e-12);
    }
}
