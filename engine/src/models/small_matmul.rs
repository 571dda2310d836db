//! `x · Wᵀ` for a handful of rows on the CPU: the shape of every decoding step.
//!
//! Decoding one token (or one token for each of K variations) multiplies a few rows by every
//! weight matrix. A general GEMM repacks the whole weight matrix on each call for that shape
//! (measured: a third of a K = 4 step went to packing, and a K = 4 step cost five K = 1 steps),
//! while the work itself is one pass over the weights. This kernel makes that one pass: for each
//! weight row it computes the dot product with every input row while the row sits in L1, so K
//! variations cost about what one does, and the weight bytes are read once per step.
//!
//! It is a forward-only custom op: asking it for a gradient is an error from candle, never a
//! silent zero, and [`super::blocks::Linear`] only uses it for weights that are not training
//! variables.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;

/// Most rows worth sending here; above this a blocked GEMM wins.
pub(crate) const MAX_ROWS: usize = 8;

/// Output columns per task: enough work to pay for a task, few enough to split the logits and
/// feed-forward projections across cores.
const COLUMNS_PER_TASK: usize = 64;

/// Multiply-adds below which threads cost more than they save.
const PARALLEL_WORK: usize = 256 * 1024;

pub(crate) struct SmallMatmul;

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("small-matmul: x is {m}x{k} but the weight is {n}x{k2}");
        }
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("small-matmul needs contiguous operands");
        };
        let x = &xs.as_slice::<f32>()?[x0..x1];
        let w = &ws.as_slice::<f32>()?[w0..w1];
        // Column-major result (one block of `m` values per weight row), transposed at the end.
        let mut by_column = vec![0f32; n * m];
        let task = |(index, out): (usize, &mut [f32])| {
            let first = index * COLUMNS_PER_TASK;
            dots(x, m, k, &w[first * k..(first + out.len() / m) * k], out);
        };
        if n * k * m >= PARALLEL_WORK {
            by_column
                .par_chunks_mut(COLUMNS_PER_TASK * m)
                .enumerate()
                .for_each(task);
        } else {
            by_column
                .chunks_mut(COLUMNS_PER_TASK * m)
                .enumerate()
                .for_each(task);
        }
        if m == 1 {
            return Ok((CpuStorage::F32(by_column), Shape::from((m, n))));
        }
        let mut y = vec![0f32; m * n];
        for (j, column) in by_column.chunks_exact(m).enumerate() {
            for (r, &v) in column.iter().enumerate() {
                y[r * n + j] = v;
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// `out[j·m + r] = x[r] · w[j]` for every weight row `j` of `w` and input row `r` of `x`.
fn dots(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            unsafe { dots_avx2_fma(x, m, k, w, out) };
            return;
        }
    }
    dots_portable(x, m, k, w, out);
}

/// AVX2/FMA: each eight-float slice of a weight row is loaded once and multiplied into the
/// accumulators of all `m` input rows. With few rows, each row gets several accumulators along
/// `k`, so the FMAs do not wait on each other's latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2_fma(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    match m {
        1 => rows_avx2::<1, 4>(x, k, w, out),
        2 => rows_avx2::<2, 4>(x, k, w, out),
        3 => rows_avx2::<3, 2>(x, k, w, out),
        4 => rows_avx2::<4, 2>(x, k, w, out),
        5 => rows_avx2::<5, 1>(x, k, w, out),
        6 => rows_avx2::<6, 1>(x, k, w, out),
        7 => rows_avx2::<7, 1>(x, k, w, out),
        _ => rows_avx2::<8, 1>(x, k, w, out),
    }
}

/// `M` input rows, `U` accumulators per row (`M × U ≤ 8` ymm registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<const M: usize, const U: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= M * k);
    let step = 8 * U;
    for (w_row, out) in w.chunks_exact(k).zip(out.chunks_exact_mut(M)) {
        let mut acc = [[_mm256_setzero_ps(); U]; M];
        let mut i = 0;
        // SAFETY (all loads): every offset is below `k`, the length of `w_row` and of each of
        // the `M` rows of `x`.
        while i + step <= k {
            for u in 0..U {
                let wv = _mm256_loadu_ps(w_row.as_ptr().add(i + 8 * u));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(r * k + i + 8 * u));
                    a[u] = _mm256_fmadd_ps(xv, wv, a[u]);
                }
            }
            i += step;
        }
        while i + 8 <= k {
            let wv = _mm256_loadu_ps(w_row.as_ptr().add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(r * k + i)), wv, a[0]);
            }
            i += 8;
        }
        for (r, o) in out.iter_mut().enumerate() {
            let mut v = acc[r][0];
            for a in &acc[r][1..] {
                v = _mm256_add_ps(v, *a);
            }
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            let mut sum = _mm_cvtss_f32(s);
            for j in i..k {
                sum = x[r * k + j].mul_add(w_row[j], sum);
            }
            *o = sum;
        }
    }
}

fn dots_portable(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    for (w_row, out) in w.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        for (r, o) in out.iter_mut().enumerate() {
            *o = x[r * k..(r + 1) * k]
                .iter()
                .zip(w_row)
                .fold(0f32, |acc, (a, b)| a.mul_add(*b, acc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_matmul() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 256, 768), (4, 256, 373), (3, 37, 5), (8, 64, 130)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let got = x.apply_op2_no_bwd(&w, &SmallMatmul).unwrap();
            let diff = (want - got)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "{m}x{k}x{n}: max diff {diff}");
        }
    }

    #[test]
    fn refuses_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 9), candle_core::DType::F32, &dev).unwrap();
        assert!(x.apply_op2_no_bwd(&w, &SmallMatmul).is_err());
    }
}
