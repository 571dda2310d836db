//! Prime/continuation pairs cut at bar lines from tokenized documents: `P` prime bars and the
//! `B` bars that truly follow them, split by file (a pair never straddles two files, and the
//! train/validation split is the corpus's own, by file).
//!
//! A pair is kept only when the generator could have produced its continuation: one meter
//! throughout (generation locks the prime's), at least one note in every continuation bar and
//! at most [`MAX_NOTES_PER_BAR`], and prime plus continuation within the model's context.
//! Otherwise the discriminator would learn to spot what the generator is not allowed to do,
//! and its reward would teach nothing.

use crate::generation::{prime_budget, MAX_NOTES_PER_BAR};
use crate::time::Ticks;
use crate::tokenizer::{NoteDecoder, Token, TokenId, TokenKind, Tokenizer};

/// One prime and its true continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The prime's `P` bars as in the document (starting with `Bar`, no `BOS`).
    pub prime: Vec<TokenId>,
    /// The true continuation as the generator would write it: the `B` bars after the prime,
    /// without the first bar's `Bar TimeSig` (the prime ends on those when generating).
    pub continuation: Vec<TokenId>,
    /// Where the prime stops (the continuation's first bar line), on the prime's timeline.
    pub end: Ticks,
}

/// How pairs are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairShape {
    pub prime_bars: u32,
    pub bars: u32,
    /// The model's context: prime, the continuation's bar line and the continuation must fit.
    pub context: usize,
}

/// Every usable pair of one document (`BOS … EOS` as in the id cache), one per bar line.
pub fn cut(doc: &[TokenId], tok: &Tokenizer, shape: PairShape) -> Vec<Pair> {
    let (p, b) = (shape.prime_bars as usize, shape.bars as usize);
    if p == 0 || b == 0 {
        return Vec::new();
    }
    let body_end = doc
        .iter()
        .position(|&id| id == tok.eos_id())
        .unwrap_or(doc.len());
    let doc = &doc[..body_end];
    let mut bars: Vec<usize> = doc
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == tok.bar_id())
        .map(|(i, _)| i)
        .collect();
    // The document's end closes its last bar.
    bars.push(doc.len());
    let mut out = Vec::new();
    for k in 0..bars.len().saturating_sub(p + b) {
        let prime = &doc[bars[k]..bars[k + p]];
        let cont = &doc[bars[k + p]..bars[k + p + b]];
        if let Some(pair) = make_pair(prime, cont, tok, shape) {
            out.push(pair);
        }
    }
    out
}

fn make_pair(
    prime: &[TokenId],
    cont: &[TokenId],
    tok: &Tokenizer,
    shape: PairShape,
) -> Option<Pair> {
    // One meter throughout, and a meter the vocabulary can continue in.
    let mut meters = prime
        .iter()
        .chain(cont)
        .filter_map(|&id| match tok.token(id) {
            Some(Token::TimeSig(ts)) => Some(ts),
            _ => None,
        });
    let meter = meters.next()?;
    if meters.any(|m| m != meter) || !tok.supports(meter) {
        return None;
    }
    if cont.len() < 2 || tok.kind(cont[1]) != Some(TokenKind::TimeSig) {
        return None;
    }
    let notes = |s: &[TokenId]| {
        s.iter()
            .filter(|&&id| tok.kind(id) == Some(TokenKind::Pitch))
            .count()
    };
    if notes(prime) == 0 {
        return None;
    }
    let every_bar_playable = cont
        .split(|&id| id == tok.bar_id())
        .skip(1)
        .all(|bar| (1..=MAX_NOTES_PER_BAR).contains(&notes(bar)));
    if !every_bar_playable {
        return None;
    }
    // BOS, prime, the continuation's bar line, the continuation.
    if 1 + prime.len() + 2 > prime_budget(shape.context)
        || 1 + prime.len() + cont.len() > shape.context
    {
        return None;
    }
    let mut d = NoteDecoder::new(tok, meter);
    for &id in prime {
        d.push(tok.token(id)?);
    }
    Some(Pair {
        prime: prime.to_vec(),
        continuation: cont[2..].to_vec(),
        end: d.bar_start() + d.ticks_per_bar(),
    })
}

/// Training and validation pairs.
#[derive(Debug, Clone, Default)]
pub struct PairSet {
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
}

impl PairSet {
    /// Pairs of the training and of the validation documents.
    pub fn cut(
        train_docs: impl IntoIterator<Item = Vec<TokenId>>,
        val_docs: impl IntoIterator<Item = Vec<TokenId>>,
        tok: &Tokenizer,
        shape: PairShape,
    ) -> Self {
        let all = |docs: &mut dyn Iterator<Item = Vec<TokenId>>| {
            docs.flat_map(|d| cut(&d, tok, shape)).collect::<Vec<_>>()
        };
        Self {
            train: all(&mut train_docs.into_iter()),
            val: all(&mut val_docs.into_iter()),
        }
    }

    /// Pairs from a tokenized corpus (its own file-level split).
    pub fn from_corpus(
        corpus: &crate::training::Corpus,
        tok: &Tokenizer,
        shape: PairShape,
    ) -> Self {
        Self::cut(corpus.train_docs(), corpus.val_docs(), tok, shape)
    }

    /// At most `n` validation pairs spread evenly over all of them (a fixed set).
    pub fn val_subset(&self, n: usize) -> Vec<&Pair> {
        let m = self.val.len();
        if n >= m {
            return self.val.iter().collect();
        }
        (0..n).map(|k| &self.val[k * m / n]).collect()
    }
}
