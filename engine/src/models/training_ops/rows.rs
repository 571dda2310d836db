//! The machinery the training ops share: row kernels split into tasks of whole rows (in parallel
//! when that pays), per-task partial sums of parameter gradients added in one fixed order (so
//! results do not depend on the thread count), access to CPU storage, and dispatch on the dtype.
//!
//! The macros (`multiversion!`, `by_dtype!`, `by_tensor_dtype!`) are used by the op files, which
//! bring into scope the names their expansions refer to (`Real`, `CpuStorage`, `DType`,
//! `bail`).

use super::real::Real;
use candle_core::{bail, CpuStorage, Device, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// Independent accumulators for a sum, so that the loop vectorises (float addition is not
/// associative, so the compiler will not split one accumulator itself).
pub(super) const LANES: usize = 8;

#[inline(always)]
fn lanes_total<T: Real>(acc: [T; LANES]) -> T {
    let mut s = T::zero();
    for v in acc {
        s += v;
    }
    s
}

/// `Σ f(a_i, b_i)` over two equally long slices, vectorisable.
#[inline(always)]
pub(super) fn sum2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let mut acc = [T::zero(); LANES];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let mut s = lanes_total(acc);
    for (&x, &y) in at.iter().zip(bt) {
        s += f(x, y);
    }
    s
}

/// Defines a generic kernel compiled twice: for the build's baseline x86-64 target (SSE2, four
/// f32 lanes) and for AVX2 + FMA (eight), picked at run time. Why: these loops are element-wise
/// work that vectorises, and the workspace builds for baseline x86-64. Rust never fuses a
/// multiply and an add into an FMA on its own, so both versions compute the same bits.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident<$T:ident>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        fn $name<$T: Real>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp<$T: Real>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$T: Real>($($a: $t),*) $(-> $r)? {
                    imp::<$T>($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2::<$T>($($a),*) };
                }
            }
            imp::<$T>($($a),*)
        }
    };
}

/// Rows per task: ~32 K elements, enough work to amortise scheduling.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (32 * 1024 / row_len.max(1)).max(1)
}

/// Whether to split `len` elements of work over rayon's threads. Only with more than one
/// thread and more than one task's worth: a parallel iterator started outside the pool hands
/// its work to a pool thread and sleeps until it is done, two context switches for nothing when
/// there is a single thread (`RAYON_NUM_THREADS=1`, as in the benchmarks) or a single task.
fn parallel(len: usize) -> bool {
    len > 32 * 1024 && rayon::current_num_threads() > 1
}

/// `f(task, out, a, b)` on consecutive chunks of `out`, `a` and `b` (chunk lengths `oc`, `ac`,
/// `bc`: the same rows in each), in parallel when [`parallel`].
#[allow(clippy::too_many_arguments)]
pub(super) fn for_chunks<T: Send, A: Sync, B: Sync>(
    out: &mut [T],
    oc: usize,
    a: &[A],
    ac: usize,
    b: &[B],
    bc: usize,
    f: impl Fn(usize, &mut [T], &[A], &[B]) + Sync + Send,
) {
    if parallel(out.len()) {
        out.par_chunks_mut(oc)
            .zip(a.par_chunks(ac))
            .zip(b.par_chunks(bc))
            .enumerate()
            .for_each(|(i, ((o, a), b))| f(i, o, a, b));
    } else {
        for (i, ((o, a), b)) in out
            .chunks_mut(oc)
            .zip(a.chunks(ac))
            .zip(b.chunks(bc))
            .enumerate()
        {
            f(i, o, a, b);
        }
    }
}

/// [`for_chunks`] where each chunk also returns a partial sum of width `width` (a parameter's
/// gradient): the partials are added up, so a reduction over all rows costs one row per task
/// instead of a strided pass over the whole tensor.
#[allow(clippy::too_many_arguments)]
pub(super) fn for_chunks_sum<T: Real, A: Sync, B: Sync>(
    out: &mut [T],
    oc: usize,
    a: &[A],
    ac: usize,
    b: &[B],
    bc: usize,
    width: usize,
    f: impl Fn(&mut [T], &[A], &[B]) -> Vec<T> + Sync + Send,
) -> Vec<T> {
    if parallel(out.len()) {
        let partials: Vec<Vec<T>> = out
            .par_chunks_mut(oc)
            .zip(a.par_chunks(ac))
            .zip(b.par_chunks(bc))
            .map(|((o, a), b)| f(o, a, b))
            .collect();
        sum_in_order(partials, width)
    } else {
        let partials = out
            .chunks_mut(oc)
            .zip(a.chunks(ac))
            .zip(b.chunks(bc))
            .map(|((o, a), b)| f(o, a, b));
        sum_in_order(partials, width)
    }
}

/// Adds per-task partial sums (each of `width`) first to last. Every path, parallel or not, adds
/// them in this one order: rayon's `reduce` would pair them in a tree shaped by the thread count
/// and work stealing, and float addition is not associative, so a run would not be reproducible
/// across (or even within) thread counts.
fn sum_in_order<T: Real>(partials: impl IntoIterator<Item = Vec<T>>, width: usize) -> Vec<T> {
    partials
        .into_iter()
        .fold(vec![T::zero(); width], |mut acc, p| {
            for (a, b) in acc.iter_mut().zip(p) {
                *a += b;
            }
            acc
        })
}

/// The data of a contiguous layout as a slice.
pub(super) fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// Runs `f` on the (contiguous) CPU data of `t`, for the backward passes.
pub(super) fn read<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout, "fused op backward")?),
        _ => bail!("fused ops run on the CPU only"),
    }
}

pub(super) fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused ops need a non-empty last dimension"),
    }
}

pub(super) fn tensor<T: WithDType>(v: Vec<T>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Dispatches a generic kernel on the dtype of a CPU storage.
macro_rules! by_dtype {
    ($storage:expr, $op:expr, |$t:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => bail!("{}: only f32 and f64 are supported", $op),
        }
    };
}

/// Dispatches a generic kernel on a tensor's dtype (backward passes).
macro_rules! by_tensor_dtype {
    ($tensor:expr, $op:expr, |$t:ident| $body:expr) => {
        match $tensor.dtype() {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            d => bail!("{}: unsupported dtype {:?}", $op, d),
        }
    };
}

/// The sum over rows of `g` (rows of `n`), via per-task partial sums.
pub(super) fn row_sum<T: Real>(g: &[T], n: usize) -> Vec<T> {
    let partial = |gc: &[T]| {
        let mut acc = vec![T::zero(); n];
        for gr in gc.chunks_exact(n) {
            for (a, &v) in acc.iter_mut().zip(gr) {
                *a += v;
            }
        }
        acc
    };
    let chunk = n * rows_per_task(n);
    if parallel(g.len()) {
        let partials: Vec<Vec<T>> = g.par_chunks(chunk).map(partial).collect();
        sum_in_order(partials, n)
    } else {
        sum_in_order(g.chunks(chunk).map(partial), n)
    }
}
