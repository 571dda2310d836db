//! Reranking at play time: generate several candidates and keep the one the discriminator
//! (trained with the adapter, `train adapter`) finds most likely to be real music following
//! the prime. Sampling picks a likely *token* at each step; the discriminator judges whole
//! bars against the prime, which is what a listener hears.

use candle_core::DType;

use crate::generation::{Continuation, GenerationError, Prime};
use crate::models::{Kernels, Model};
use crate::tokenizer::{TokenId, TokenKind, Tokenizer};

/// The prime as the discriminator saw primes in training: without `BOS`, without the empty bar
/// lines that lead to the continuation, and at most its last `bars` bars.
pub fn discriminator_prime(tok: &Tokenizer, ids: &[TokenId], bars: usize) -> Vec<TokenId> {
    let mut ids: &[TokenId] = ids.strip_prefix(&[tok.bos_id()]).unwrap_or(ids);
    // Trailing bars without a note are the walk to the continuation's start.
    while let Some(last_bar) = ids.iter().rposition(|&id| id == tok.bar_id()) {
        let has_note = ids[last_bar..]
            .iter()
            .any(|&id| tok.kind(id) == Some(TokenKind::Pitch));
        if has_note || last_bar == 0 {
            break;
        }
        ids = &ids[..last_bar];
    }
    let starts: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == tok.bar_id())
        .map(|(i, _)| i)
        .collect();
    let from = if starts.len() > bars {
        starts[starts.len() - bars]
    } else {
        0
    };
    ids[from..].to_vec()
}

/// The discriminator's P(real) of each continuation of `prime`, judged with the prime's last
/// `prime_bars` bars (use the `--prime-bars` the discriminator was trained with).
pub fn scores(
    model: &Model,
    prime: &Prime,
    continuations: &[Continuation],
    prime_bars: usize,
) -> Result<Vec<f32>, GenerationError> {
    let disc = model.discriminator.as_ref().ok_or_else(|| {
        GenerationError::Settings("reranking needs a discriminator, and none is loaded".into())
    })?;
    if continuations.is_empty() {
        return Ok(Vec::new());
    }
    let p = discriminator_prime(&model.tokenizer, prime.ids(), prime_bars.max(1));
    let primes: Vec<&[TokenId]> = vec![&p; continuations.len()];
    let conts: Vec<&[TokenId]> = continuations.iter().map(|c| &c.ids[..]).collect();
    let batch = disc
        .batch(&primes, &conts, model.decoder.device())
        .map_err(|e| GenerationError::Settings(e.to_string()))?;
    let out = disc.forward(&batch, Kernels::Inference)?;
    Ok(out.p_real()?.to_dtype(DType::F32)?.to_vec1()?)
}

/// The index of the highest score (the first on ties; `None` for no scores): the candidate
/// to keep.
pub fn best(scores: &[f32]) -> Option<usize> {
    scores
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discriminator_sees_the_last_bars_without_the_walk_to_the_start() {
        let tok = Tokenizer::reference();
        let bar = tok.bar_id();
        let ts = (0..tok.vocab_size() as u32)
            .find(|&i| tok.kind(i) == Some(TokenKind::TimeSig))
            .unwrap();
        let pos = tok.position_ids()[0];
        let pitch = (0..tok.vocab_size() as u32)
            .find(|&i| tok.kind(i) == Some(TokenKind::Pitch))
            .unwrap();
        let ids = [
            tok.bos_id(),
            bar,
            ts,
            pos,
            pitch,
            bar,
            ts,
            pos,
            pitch + 1,
            bar,
            ts,
        ];
        assert_eq!(
            discriminator_prime(&tok, &ids, 4),
            &[bar, ts, pos, pitch, bar, ts, pos, pitch + 1]
        );
        assert_eq!(
            discriminator_prime(&tok, &ids, 1),
            &[bar, ts, pos, pitch + 1]
        );
        assert_eq!(best(&[0.2, 0.7, 0.7, 0.1]), Some(1));
        assert_eq!(best(&[]), None);
    }
}
