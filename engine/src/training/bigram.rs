//! The bigram baseline: `P(next | previous)` counted on the training documents, add-α
//! smoothed, scored on exactly the validation windows the model is scored on.
//!
//! A transformer that does not beat this by a wide margin has learned little beyond which
//! token kind follows which. α is chosen on the validation split itself (from a few values),
//! which can only flatter the baseline, so the comparison stays conservative.

/// Smoothing values tried; the best on validation is reported.
const ALPHAS: [f64; 4] = [0.001, 0.01, 0.1, 1.0];

/// Bigram counts over a vocabulary.
#[derive(Debug, Clone)]
pub struct Bigram {
    vocab: usize,
    counts: Vec<u64>,
    row_totals: Vec<u64>,
}

impl Bigram {
    /// Counts every adjacent pair of every document.
    pub fn count(vocab: usize, docs: impl Iterator<Item = Vec<u32>>) -> Self {
        let mut counts = vec![0u64; vocab * vocab];
        let mut row_totals = vec![0u64; vocab];
        for doc in docs {
            for w in doc.windows(2) {
                counts[w[0] as usize * vocab + w[1] as usize] += 1;
                row_totals[w[0] as usize] += 1;
            }
        }
        Self {
            vocab,
            counts,
            row_totals,
        }
    }

    /// Mean NLL (nats/token) with smoothing `alpha` over windows of `width` ids (row-major),
    /// skipping targets equal to `pad`.
    pub fn mean_nll_with(&self, windows: &[u32], width: usize, pad: u32, alpha: f64) -> f64 {
        let (mut sum, mut n) = (0f64, 0u64);
        for w in windows.chunks_exact(width) {
            for pair in w.windows(2) {
                if pair[1] == pad {
                    continue;
                }
                let (a, b) = (pair[0] as usize, pair[1] as usize);
                let c = self.counts[a * self.vocab + b] as f64;
                let p = (c + alpha) / (self.row_totals[a] as f64 + alpha * self.vocab as f64);
                sum -= p.ln();
                n += 1;
            }
        }
        sum / n.max(1) as f64
    }

    /// The best mean NLL over the smoothing values tried, and that α.
    pub fn mean_nll(&self, windows: &[u32], width: usize, pad: u32) -> (f64, f64) {
        ALPHAS
            .iter()
            .map(|&a| (self.mean_nll_with(windows, width, pad, a), a))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .expect("ALPHAS is not empty")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_text_is_nearly_free_and_uniform_is_log_vocab() {
        let docs = vec![vec![0, 1, 2, 0, 1, 2, 0, 1, 2]];
        let b = Bigram::count(4, docs.into_iter());
        let nll = b.mean_nll_with(&[0, 1, 2, 0], 4, 3, 1e-6);
        assert!(nll < 1e-4, "{nll}");
        let empty = Bigram::count(4, std::iter::empty());
        let nll = empty.mean_nll_with(&[0, 1, 2, 0], 4, 3, 1.0);
        assert!((nll - 4f64.ln()).abs() < 1e-12);
    }
}
