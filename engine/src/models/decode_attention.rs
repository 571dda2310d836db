//! Attention for one new query per sequence against the KV cache: the shape of every decoding
//! step.
//!
//! Done with general ops, a step's attention is a scale, two batched GEMMs of one row each,
//! a softmax and a transpose per layer, with the cached keys copied out of the cache's
//! preallocated buffer first (its positions are a strided view). For K variations the copies and
//! the per-(sequence, head) GEMM setup grow with K: measured, attention was a third of a K = 4
//! step with 8-bit weights. This kernel reads keys and values where the cache keeps them and makes
//! one pass per (sequence, head): scores, a stable softmax, and the weighted sum of values.
//!
//! It is forward-only (inference never asks for a gradient, and candle reports an error rather
//! than a silent zero if something does), f32 on the CPU, without masks: a decoding step's query
//! is the last position, which sees every cached key.

use candle_core::{Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Multiply-adds below which threads cost more than they save.
const PARALLEL_WORK: usize = 64 * 1024;

/// `softmax(q · kᵀ · scale) · v` for `q` `(b, h, 1, d)` against the cache's segments of keys
/// and values, in position order (see [`super::kv_cache::LayerCache::segments`]): each
/// `(b, h, t, d)`, or `(1, h, t, d)` for positions every sequence shares. Key and value rows must
/// be contiguous; everything else may be strided (the cache's buffers are views). The output is
/// `(b, 1, h · d)`: heads already merged, ready for the output projection.
///
/// Computed directly from the tensors' storage, so the result carries no gradient: inference
/// only, like every `Kernels::Inference` kernel.
pub(crate) fn decode_attention(
    q: &Tensor,
    segments: &[(Tensor, Tensor)],
    scale: f32,
) -> Result<Tensor> {
    let (b, h, one, d) = q.dims4()?;
    let shape_error = || {
        let shapes: Vec<_> = segments.iter().map(|(k, v)| (k.dims(), v.dims())).collect();
        candle_core::Error::Msg(format!(
            "decode-attention: q {:?} and keys/values {shapes:?} do not fit one query per sequence",
            q.dims()
        ))
    };
    if one != 1 || segments.is_empty() {
        return Err(shape_error());
    }
    let mut t = 0;
    for (k, v) in segments {
        let (kb, kh, kt, kd) = k.dims4()?;
        if (kb != 1 && kb != b) || (kh, kd) != (h, d) || v.dims() != k.dims() {
            return Err(shape_error());
        }
        t += kt;
    }
    // Hold every storage's read lock for the whole computation.
    let (q_storage, q_layout) = q.storage_and_layout();
    let guards: Vec<_> = segments
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
        .collect();
    let q_view = View::new(&q_storage, q_layout, "q")?;
    let views = guards
        .iter()
        .map(|((ks, kl), (vs, vl))| Ok((View::new(ks, kl, "k")?, View::new(vs, vl, "v")?)))
        .collect::<Result<Vec<_>>>()?;

    let mut out = vec![0f32; b * h * d];
    let mut scores = vec![0f32; b * h * t];
    let head = |(index, (out, scores)): (usize, (&mut [f32], &mut [f32]))| {
        let (bi, hi) = (index / h, index % h);
        let head = Head {
            q: q_view.row(bi, hi, 0, d),
            parts: views
                .iter()
                .map(|(k, v)| {
                    // A batch-1 segment is the same for every sequence.
                    let bj = if k.batch == 1 { 0 } else { bi };
                    Part {
                        k: k.rows(bj, hi),
                        v: v.rows(bj, hi),
                        k_stride: k.st,
                        v_stride: v.st,
                        len: k.len,
                    }
                })
                .collect(),
        };
        head.attend(scale, scores, out);
    };
    if b * h * t * d * 2 >= PARALLEL_WORK {
        out.par_chunks_mut(d)
            .zip(scores.par_chunks_mut(t))
            .enumerate()
            .for_each(head);
    } else {
        out.chunks_mut(d)
            .zip(scores.chunks_mut(t))
            .enumerate()
            .for_each(head);
    }
    Tensor::from_vec(out, (b, 1, h * d), q.device())
}

/// One operand's f32 data and layout: element `(b, h, j, i)` is at
/// `offset + b·sb + h·sh + j·st + i`.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    sb: usize,
    sh: usize,
    st: usize,
    batch: usize,
    len: usize,
}

impl<'a> View<'a> {
    fn new(storage: &'a Storage, layout: &Layout, what: &str) -> Result<Self> {
        let Storage::Cpu(cpu) = storage else {
            candle_core::bail!("decode-attention runs on the CPU only");
        };
        let stride = layout.stride();
        let dims = layout.dims();
        if stride.len() != 4 || stride[3] != 1 {
            candle_core::bail!("decode-attention: {what} rows must be contiguous, got {stride:?}");
        }
        Ok(Self {
            data: cpu.as_slice::<f32>()?,
            offset: layout.start_offset(),
            sb: stride[0],
            sh: stride[1],
            st: stride[2],
            batch: dims[0],
            len: dims[2],
        })
    }

    fn start(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.sb + h * self.sh
    }

    /// Row `j` (of width `d`) of sequence `b`, head `h`.
    fn row(&self, b: usize, h: usize, j: usize, d: usize) -> &'a [f32] {
        &self.data[self.start(b, h) + j * self.st..][..d]
    }

    /// Everything from row 0 of sequence `b`, head `h`.
    fn rows(&self, b: usize, h: usize) -> &'a [f32] {
        &self.data[self.start(b, h)..]
    }
}

/// One segment's keys and values for one (sequence, head): row `j` starts at `j · stride`.
struct Part<'a> {
    k: &'a [f32],
    v: &'a [f32],
    k_stride: usize,
    v_stride: usize,
    len: usize,
}

/// One (sequence, head): its query and its segments of the cache.
struct Head<'a> {
    q: &'a [f32],
    parts: Vec<Part<'a>>,
}

impl Part<'_> {
    fn key(&self, j: usize, d: usize) -> &[f32] {
        &self.k[j * self.k_stride..][..d]
    }

    fn value(&self, j: usize, d: usize) -> &[f32] {
        &self.v[j * self.v_stride..][..d]
    }
}

impl Head<'_> {
    /// Each part's rows with the offset of its first score.
    fn parts(&self) -> impl Iterator<Item = (usize, &Part<'_>)> {
        self.parts.iter().scan(0, |offset, part| {
            let at = *offset;
            *offset += part.len;
            Some((at, part))
        })
    }

    /// `scores` (one per cached position) is scratch space.
    fn attend(&self, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                unsafe {
                    match self.q.len() {
                        32 => return self.attend_avx2::<4>(scale, scores, out),
                        64 => return self.attend_avx2::<8>(scale, scores, out),
                        128 => return self.attend_avx2::<16>(scale, scores, out),
                        _ => {}
                    }
                }
            }
        }
        self.attend_portable(scale, scores, out);
    }

    fn attend_portable(&self, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let d = self.q.len();
        for (at, part) in self.parts() {
            for (j, s) in scores[at..at + part.len].iter_mut().enumerate() {
                let dot: f32 = self.q.iter().zip(part.key(j, d)).map(|(a, b)| a * b).sum();
                *s = scale * dot;
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (at, part) in self.parts() {
            for (j, &p) in scores[at..at + part.len].iter().enumerate() {
                let p = p / sum;
                for (o, &x) in out.iter_mut().zip(part.value(j, d)) {
                    *o += p * x;
                }
            }
        }
    }

    /// `D8` = head width / 8: the query and the output stay in `D8` ymm registers each while
    /// the keys and values stream past. Keys go four at a time so one horizontal reduction
    /// serves four scores.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2<const D8: usize>(&self, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let d = 8 * D8;
        // SAFETY (all loads and stores): `key`, `value` and `q` are slices of length `d`
        // (bounds-checked when sliced), the score stores stay below `at + part.len ≤ t`, the
        // length of `scores`, and `out` has length `d`.
        let mut q = [_mm256_setzero_ps(); D8];
        for (c, qc) in q.iter_mut().enumerate() {
            *qc = _mm256_mul_ps(
                _mm256_loadu_ps(self.q.as_ptr().add(8 * c)),
                _mm256_set1_ps(scale),
            );
        }
        let dot = |key: &[f32]| {
            let mut acc = _mm256_mul_ps(q[0], _mm256_loadu_ps(key.as_ptr()));
            for (c, qc) in q.iter().enumerate().skip(1) {
                acc = _mm256_fmadd_ps(*qc, _mm256_loadu_ps(key.as_ptr().add(8 * c)), acc);
            }
            acc
        };
        let hsum = |a: __m256| {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1)))
        };
        let mut max4 = _mm_set1_ps(f32::NEG_INFINITY);
        let mut max = f32::NEG_INFINITY;
        for (at, part) in self.parts() {
            let mut j = 0;
            while j + 4 <= part.len {
                let (a0, a1, a2, a3) = (
                    dot(part.key(j, d)),
                    dot(part.key(j + 1, d)),
                    dot(part.key(j + 2, d)),
                    dot(part.key(j + 3, d)),
                );
                // Pairwise sums of the four, then the two 128-bit halves: four scores.
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                let four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                _mm_storeu_ps(scores.as_mut_ptr().add(at + j), four);
                max4 = _mm_max_ps(max4, four);
                j += 4;
            }
            for i in j..part.len {
                let s = hsum(dot(part.key(i, d)));
                scores[at + i] = s;
                max = max.max(s);
            }
        }
        let m = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
        let max = max.max(_mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1))));
        // Softmax numerators, eight at a time.
        let t = scores.len();
        let mut sum8 = _mm256_setzero_ps();
        let mut j = 0;
        let vmax = _mm256_set1_ps(max);
        while j + 8 <= t {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(scores.as_ptr().add(j)), vmax));
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), e);
            sum8 = _mm256_add_ps(sum8, e);
            j += 8;
        }
        let mut sum = hsum(sum8);
        for s in &mut scores[j..] {
            *s = (*s - max).exp();
            sum += *s;
        }
        let mut acc = [_mm256_setzero_ps(); D8];
        for (at, part) in self.parts() {
            for (j, &p) in scores[at..at + part.len].iter().enumerate() {
                let p = _mm256_set1_ps(p);
                let value = part.value(j, d);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(p, _mm256_loadu_ps(value.as_ptr().add(8 * c)), *a);
                }
            }
        }
        let inv = _mm256_set1_ps(1.0 / sum);
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), _mm256_mul_ps(*a, inv));
        }
    }
}

/// `eˣ` for `x ≤ 0` in eight lanes (Cephes' `expf` scheme: `2ⁿ · e^r` with `|r| ≤ ln 2 / 2` and
/// a degree-5 polynomial; relative error about 2e-7, below f32's precision for softmax).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // Below this eˣ is under f32's smallest normal: flush to zero through the clamp.
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // r = x − n·ln 2, with ln 2 split in two so the subtraction stays exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let e_r = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_mul_ps(e_r, two_n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The reference: what the general path computes on whole `(b, h, t, d)` keys and values.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let (b, h, _, d) = q.dims4().unwrap();
        let scores = (q * scale).unwrap().matmul(&k.t().unwrap()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        p.matmul(v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, 1, h * d))
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Like the KV cache: the first `t` positions of a preallocated `(b, h, capacity, d)`
    /// buffer, a strided view.
    fn cache_view(b: usize, h: usize, t: usize, d: usize, std: f64) -> Tensor {
        let buffer = Tensor::randn(0f32, std as f32, (b, h, t + 13, d), &Device::Cpu).unwrap();
        buffer.narrow(2, 0, t).unwrap()
    }

    #[test]
    fn matches_the_general_path_on_shared_and_own_segments() {
        // Head widths with a vector kernel (32, 64) and without (24); lengths that leave
        // remainders after the groups of four keys and eight scores, and long enough to split
        // across threads; with and without a shared (batch-1) first segment.
        for (b, h, shared, own, d) in [
            (3, 4, 0, 37, 64),
            (1, 2, 0, 1, 32),
            (2, 3, 5, 6, 24),
            (4, 4, 298, 3, 64),
            (4, 4, 7, 1, 64),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, h, 1, d), &Device::Cpu).unwrap();
            let (ok, ov) = (cache_view(b, h, own, d, 3.0), cache_view(b, h, own, d, 1.0));
            assert!(!ok.is_contiguous());
            let mut segments = Vec::new();
            let (mut whole_k, mut whole_v) = (ok.clone(), ov.clone());
            if shared > 0 {
                let (sk, sv) = (
                    cache_view(1, h, shared, d, 3.0),
                    cache_view(1, h, shared, d, 1.0),
                );
                let many = |s: &Tensor, o: &Tensor| {
                    Tensor::cat(&[&s.broadcast_as((b, h, shared, d)).unwrap(), o], 2)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                };
                whole_k = many(&sk, &ok);
                whole_v = many(&sv, &ov);
                segments.push((sk, sv));
            }
            segments.push((ok, ov));
            let scale = 1.0 / (d as f64).sqrt();
            let got = decode_attention(&q, &segments, scale as f32).unwrap();
            let want = reference(&q, &whole_k, &whole_v, scale);
            assert_eq!(got.dims(), want.dims());
            let diff = max_diff(&got, &want);
            assert!(
                diff < 2e-5,
                "{b}x{h}x({shared}+{own})x{d}: max difference {diff}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_matches_the_library_exp() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f32;
        for i in 0..20_000 {
            let x = -(i as f32) * 0.005; // 0 down to -100, past the flush-to-zero point
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above; `out` holds eight floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp256(_mm256_set1_ps(x))) };
            let want = x.exp();
            let err = if want > 1e-30 {
                ((out[0] - want) / want).abs()
            } else {
                out[0].abs()
            };
            worst = worst.max(err);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    #[test]
    fn refuses_shapes_that_are_not_one_query_per_sequence() {
        let dev = Device::Cpu;
        let zeros = |s: (usize, usize, usize, usize)| {
            Tensor::zeros(s, candle_core::DType::F32, &dev).unwrap()
        };
        let k = zeros((1, 2, 5, 8));
        for (q, segments) in [
            (zeros((1, 2, 3, 8)), vec![(k.clone(), k.clone())]),
            (zeros((1, 2, 1, 8)), vec![]),
            (
                zeros((2, 2, 1, 8)),
                vec![(zeros((3, 2, 5, 8)), zeros((3, 2, 5, 8)))],
            ),
            (zeros((1, 2, 1, 16)), vec![(k.clone(), k.clone())]),
        ] {
            let err = decode_attention(&q, &segments, 1.0).unwrap_err();
            assert!(err.to_string().contains("one query"), "{err}");
        }
    }
}
