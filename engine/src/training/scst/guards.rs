//! What keeps adversarial training honest, measured at every evaluation: the likelihood of true
//! continuations (the adapter must not forget music while it learns to please the critic), how
//! often a generated bar copies a bar of the prime (the discriminator sees the prime, and
//! copying it is the obvious way to fool it), and the distinct-4-gram ratio (collapse onto a
//! few phrases).

use std::collections::HashSet;

use crate::tokenizer::{TokenId, TokenKind, Tokenizer};

/// The bars of a token stretch, each without its leading `Bar` and `TimeSig` tokens (so that a
/// continuation's first bar, which has none, compares with the others). Empty bars are dropped.
pub fn bar_contents<'a>(ids: &'a [TokenId], tok: &Tokenizer) -> Vec<&'a [TokenId]> {
    ids.split(|&id| id == tok.bar_id())
        .map(|bar| {
            let skip = bar
                .iter()
                .take_while(|&&id| tok.kind(id) == Some(TokenKind::TimeSig))
                .count();
            &bar[skip..]
        })
        .filter(|bar| !bar.is_empty())
        .collect()
}

/// Bars of `continuation` that repeat a bar of `prime` exactly, and bars in all.
pub fn copied_bars(prime: &[TokenId], continuation: &[TokenId], tok: &Tokenizer) -> (usize, usize) {
    let prime_bars: HashSet<&[TokenId]> = bar_contents(prime, tok).into_iter().collect();
    let bars = bar_contents(continuation, tok);
    let copied = bars.iter().filter(|b| prime_bars.contains(*b)).count();
    (copied, bars.len())
}

/// Share of generated bars copied from their prime over many `(prime, continuation)`.
pub fn copy_share<'a>(
    pairs: impl IntoIterator<Item = (&'a [TokenId], &'a [TokenId])>,
    tok: &Tokenizer,
) -> f64 {
    let (mut copied, mut total) = (0, 0);
    for (p, c) in pairs {
        let (k, n) = copied_bars(p, c, tok);
        copied += k;
        total += n;
    }
    copied as f64 / total.max(1) as f64
}

/// Distinct 4-grams over all 4-grams of the continuations (each counted within its own
/// sequence); 1 when there are none.
pub fn distinct_4gram_ratio<'a>(seqs: impl IntoIterator<Item = &'a [TokenId]>) -> f64 {
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for s in seqs {
        for w in s.windows(4) {
            seen.insert(w);
            total += 1;
        }
    }
    if total == 0 {
        1.0
    } else {
        seen.len() as f64 / total as f64
    }
}

/// Why training stopped early.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "guard", rename_all = "kebab-case")]
pub enum GuardTrip {
    /// The validation NLL rose more than the tolerance above the decoder's own.
    Nll { nll: f64, limit: f64 },
    /// Generated bars copy the prime more often than the real music does.
    Copying { share: f64, limit: f64 },
}

impl std::fmt::Display for GuardTrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nll { nll, limit } => write!(
                f,
                "validation NLL {nll:.4} rose above {limit:.4} (the decoder's own plus the tolerance)"
            ),
            Self::Copying { share, limit } => write!(
                f,
                "{:.1} % of generated bars copy the prime, more than the limit of {:.1} %",
                100.0 * share,
                100.0 * limit
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copying_and_repetition_are_counted() {
        let tok = Tokenizer::reference();
        let bar = tok.bar_id();
        let ts = (0..tok.vocab_size() as u32)
            .find(|&i| tok.kind(i) == Some(TokenKind::TimeSig))
            .unwrap();
        let pos = tok.position_ids()[0];
        let pitch = |p: u32| {
            (0..tok.vocab_size() as u32)
                .filter(|&i| tok.kind(i) == Some(TokenKind::Pitch))
                .nth(p as usize)
                .unwrap()
        };
        let prime = [bar, ts, pos, pitch(1), bar, ts, pos, pitch(2)];
        // First bar (no leading Bar TimeSig) copies the prime's second bar; the next is new.
        let cont = [pos, pitch(2), bar, ts, pos, pitch(3)];
        assert_eq!(copied_bars(&prime, &cont, &tok), (1, 2));
        assert_eq!(copy_share([(&prime[..], &cont[..])], &tok), 0.5);
        assert_eq!(
            distinct_4gram_ratio([&[1, 2, 3, 4, 1, 2, 3, 4][..]]),
            4.0 / 5.0
        );
        assert_eq!(distinct_4gram_ratio([&[1, 2][..]]), 1.0);
    }
}
