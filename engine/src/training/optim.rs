//! AdamW with decoupled weight decay and global-norm gradient clipping.
//!
//! candle_nn's `AdamW` keeps its moments private, so a checkpoint could not hold them and a
//! resumed run would restart the moment estimates (not bit-exact, and a loss spike). This one
//! keeps them as plain tensors in a fixed (name-sorted) order.

use candle_core::{DType, Tensor, Var};

use super::Result;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only: decaying norm gains and biases
    /// towards zero only hurts.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// The optimiser: parameters by name, their moments, and the update count.
#[derive(Debug)]
pub struct AdamW {
    pub(crate) params: Vec<(String, Var)>,
    pub(crate) m: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    /// Updates applied so far (for bias correction).
    pub(crate) t: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// Fresh moments (zeros) for `params`, which are sorted by name.
    pub fn new(mut params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        let m = params
            .iter()
            .map(|(_, p)| zeros(p))
            .collect::<candle_core::Result<_>>()?;
        let v = params
            .iter()
            .map(|(_, p)| zeros(p))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            cfg,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Global L2 norm of `grads` (one per parameter, in order).
    pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
        let mut total = 0f64;
        for g in grads {
            total += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`. `grads` (one per parameter, in order) are scaled
    /// down first when their global norm exceeds `clip`. Returns the norm before clipping.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, clip: f64) -> Result<f64> {
        let norm = Self::grad_norm(grads)?;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = (&grads[i] * scale)?;
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.cfg.eps)?)?;
            let decay = if p.rank() >= 2 {
                1.0 - lr * self.cfg.weight_decay
            } else {
                1.0
            };
            let next = ((p.as_tensor() * decay)? - (update * lr)?)?;
            p.set(&next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(norm)
    }
}
