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
#[derive(Debug)]
pub struct LayerCache {
    inner: candle_nn::kv_cache::KvCache,
    capacity: usize,
}

/// A deep copy: candle's cache writes new positions into its buffer in place, so a shallow
/// clone would let two branches of a generation overwrite each other's keys.
impl Clone for LayerCache {
    fn clone(&self) -> Self {
        let mut out = Self::new(self.capacity.max(self.len()));
        if let (Ok(Some(k)), Ok(Some(v))) = (self.inner.k(), self.inner.v()) {
            out.append(&k, &v)
                .expect("copying a cache into a fresh one of the same shape cannot fail");
        }
        out
    }
}

impl LayerCache {
    fn new(capacity: usize) -> Self {
        Self {
            inner: candle_nn::kv_cache::KvCache::new(2, capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Appends this step's keys/values and returns all keys/values so far.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.inner.append(&k.contiguous()?, &v.contiguous()?)
    }

    fn len(&self) -> usize {
        self.inner.current_seq_len()
    }
}

/// The cache of one network (decoder or adapter): one [`LayerCache`] per block plus the number
/// of positions already processed, which is the rotary offset of the next call.
///
/// Cloning makes an independent (deep) copy, so one prefilled prime can be continued several
/// ways. A cache belongs to one batch: all sequences in it have the same length. To decode several
/// variations of one prime, prefill the prime at batch 1 and [`KvCache::repeat_batch`].
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

    /// Forgets everything (keeps the allocation).
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.inner.reset();
        }
    }

    pub(crate) fn layers_mut(&mut self) -> &mut [LayerCache] {
        &mut self.layers
    }

    /// Number of blocks this cache was made for.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// A cache whose batch is this (batch-1) cache's contents repeated `n` times: prefill once,
    /// then decode `n` variations in one batch.
    pub fn repeat_batch(&self, n: usize) -> Result<Self> {
        let mut out = Self::new(self.layers.len(), self.capacity.max(self.len()));
        for (src, dst) in self.layers.iter().zip(out.layers.iter_mut()) {
            if let (Some(k), Some(v)) = (src.inner.k()?, src.inner.v()?) {
                let (b, ..) = k.dims4()?;
                if b != 1 {
                    candle_core::bail!("repeat_batch needs a batch-1 cache, this one has {b}");
                }
                dst.append(&k.repeat((n, 1, 1, 1))?, &v.repeat((n, 1, 1, 1))?)?;
            }
        }
        Ok(out)
    }
}
