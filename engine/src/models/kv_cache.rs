//! Key/value caches for incremental decoding.
//!
//! Without a cache every new token re-runs attention over the whole prefix (quadratic work per
//! token); with it a step costs one token's projections plus one attention row. Keys are stored
//! *after* the rotary embedding, so cached positions never need re-rotating.
//!
//! Storage is a preallocated buffer per layer (candle's `kv_cache::KvCache`, which grows by its
//! initial capacity when full) rather than `Tensor::cat` per step, which would copy the whole
//! prefix every token.

use candle_core::{Result, Tensor};

/// One attention layer's cached keys and values, shape `(batch, heads, positions, dim_head)`.
///
/// The first positions may be *shared*: one batch-1 copy that every sequence of the batch
/// continues (the prime, when K variations decode from one prefill). Keeping them once instead of
/// K times saves the copy, the memory, and, in the decoding kernel, K − 1 of the K reads of the
/// longest part of the cache at every step. The positions each sequence adds are its *own*.
#[derive(Debug)]
pub struct LayerCache {
    shared: Option<(Tensor, Tensor)>,
    own: candle_nn::kv_cache::KvCache,
    capacity: usize,
}

/// A deep copy of the own positions (candle's cache writes new positions into its buffer in
/// place, so a shallow clone would let two branches of a generation overwrite each other's
/// keys); the shared positions are never written and are shared by the copy too.
impl Clone for LayerCache {
    fn clone(&self) -> Self {
        let mut out = Self::new(self.capacity.max(self.own_len()));
        out.shared = self.shared.clone();
        if let (Ok(Some(k)), Ok(Some(v))) = (self.own.k(), self.own.v()) {
            out.own
                .append(
                    &k.contiguous().expect("copying a cache"),
                    &v.contiguous().expect("copying a cache"),
                )
                .expect("copying a cache into a fresh one of the same shape cannot fail");
        }
        out
    }
}

impl LayerCache {
    fn new(capacity: usize) -> Self {
        Self {
            shared: None,
            own: candle_nn::kv_cache::KvCache::new(2, capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Appends this step's keys/values and returns all keys/values so far, shared positions
    /// included (broadcast over the batch and copied: the general path).
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.push(k, v)?;
        let (own_k, own_v) = self.own_views()?;
        match &self.shared {
            None => Ok((own_k, own_v)),
            Some((sk, sv)) => {
                let whole = |shared: &Tensor, own: &Tensor| -> Result<Tensor> {
                    let (b, h, _, d) = own.dims4()?;
                    let t = shared.dim(2)?;
                    let shared = shared.broadcast_as((b, h, t, d))?;
                    // cat along an inner dimension leaves strides matmul refuses.
                    Tensor::cat(&[&shared, own], 2)?.contiguous()
                };
                Ok((whole(sk, &own_k)?, whole(sv, &own_v)?))
            }
        }
    }

    /// Appends this step's keys/values without assembling the whole cache.
    pub(crate) fn push(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        self.own.append(&k.contiguous()?, &v.contiguous()?)?;
        Ok(())
    }

    /// The cache as segments of keys and values, in position order: the shared positions
    /// (batch 1) if any, then the batch's own (batch `b`, never empty after a [`Self::push`]).
    pub(crate) fn segments(&self) -> Result<Vec<(Tensor, Tensor)>> {
        let mut out = Vec::with_capacity(2);
        if let Some(s) = &self.shared {
            out.push(s.clone());
        }
        if self.own_len() > 0 {
            out.push(self.own_views()?);
        }
        Ok(out)
    }

    fn own_views(&self) -> Result<(Tensor, Tensor)> {
        match (self.own.k()?, self.own.v()?) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => candle_core::bail!("the KV cache has no positions of its own yet"),
        }
    }

    fn own_len(&self) -> usize {
        self.own.current_seq_len()
    }

    fn shared_len(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    fn len(&self) -> usize {
        self.shared_len() + self.own_len()
    }

    /// All positions of a batch-1 cache as one `(1, heads, positions, dim_head)` pair, or
    /// `None` when empty.
    fn batch1_contents(&self) -> Result<Option<(Tensor, Tensor)>> {
        let own = if self.own_len() > 0 {
            Some(self.own_views()?)
        } else {
            None
        };
        for (k, _) in self.shared.iter().chain(own.iter()) {
            let b = k.dim(0)?;
            if b != 1 {
                candle_core::bail!("only a batch-1 cache can be forked, this one has {b}");
            }
        }
        Ok(match (&self.shared, own) {
            (None, None) => None,
            (Some(s), None) => Some(s.clone()),
            // Views of the own buffer stay valid: candle's cache only ever writes positions
            // past the current length, and a reset drops the buffer instead of reusing it.
            (None, Some(o)) => Some(o),
            (Some((sk, sv)), Some((ok, ov))) => {
                Some((Tensor::cat(&[sk, &ok], 2)?, Tensor::cat(&[sv, &ov], 2)?))
            }
        })
    }
}

/// The cache of one network (decoder or adapter): one [`LayerCache`] per block plus the number
/// of positions already processed, which is the rotary offset of the next call.
///
/// Cloning makes an independent copy, so one prefilled prime can be continued several ways.
/// A cache belongs to one batch: all sequences in it have the same length. To decode several
/// variations of one prime, prefill the prime at batch 1 and [`KvCache::fork`] it.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `depth` blocks, preallocating room for `capacity` positions.
    pub fn new(depth: usize, capacity: usize) -> Self {
        Self {
            layers: (0..depth).map(|_| LayerCache::new(capacity)).collect(),
            capacity,
        }
    }

    /// Positions already processed (the next token's position).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Whether nothing has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.shared = None;
            l.own.reset();
        }
    }

    pub(crate) fn layers_mut(&mut self) -> &mut [LayerCache] {
        &mut self.layers
    }

    /// Number of blocks this cache was made for.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The same cache for the sequences `rows` of its batch only, in that order. Only each
    /// sequence's own positions are copied (the shared ones are the same for all): after a fork
    /// that is the few tokens generated so far.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let mut out = Self::new(self.layers.len(), self.capacity);
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        for (src, dst) in self.layers.iter().zip(out.layers.iter_mut()) {
            dst.shared = src.shared.clone();
            if src.own_len() > 0 {
                let (k, v) = src.own_views()?;
                let index = Tensor::from_slice(&rows, rows.len(), k.device())?;
                let pick = |t: &Tensor| t.contiguous()?.index_select(&index, 0);
                dst.push(&pick(&k)?, &pick(&v)?)?;
            }
        }
        Ok(out)
    }

    /// A cache whose every sequence continues this batch-1 cache: prefill a prime once, then
    /// decode one or K variations of it, as many as the next step feeds. The contents are not
    /// copied per sequence: they become the new cache's shared positions, and this cache stays
    /// usable (its later positions never show in the fork).
    pub fn fork(&self) -> Result<Self> {
        // Room for the positions still to come, not the shared ones again.
        let room = self.capacity.saturating_sub(self.len()).max(64);
        let mut out = Self::new(self.layers.len(), room);
        for (src, dst) in self.layers.iter().zip(out.layers.iter_mut()) {
            dst.shared = src.batch1_contents()?;
        }
        Ok(out)
    }
}
