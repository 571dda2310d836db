//! The floating-point types the training ops run on, and the vectorisable `exp` and `erf` they
//! use for f32.

use candle_core::WithDType;

/// The floating-point types the kernels run on.
pub(super) trait Real: WithDType {
    fn sqrt_(self) -> Self;
    /// `exp`; for f32 a polynomial that vectorises (libm's `expf` is an opaque scalar call).
    fn exp_(self) -> Self;
    /// `erf`; for f32 a rational approximation that vectorises (see [`erf_f32`]).
    fn erf_(self) -> Self;
    fn neg_infinity() -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn erf_(self) -> Self {
        erf_f32(self)
    }
    fn neg_infinity() -> Self {
        f32::NEG_INFINITY
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn erf_(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
    fn neg_infinity() -> Self {
        f64::NEG_INFINITY
    }
}

/// `e^x` in f32 to within a few ulp, written so that loops over it vectorise: `x = n·ln 2 + r`
/// with `|r| ≤ ln 2 / 2`, `e^r` by its degree-7 Taylor polynomial (truncation error < 1e-8),
/// `2^n` built in the exponent bits. Returns exactly 0 below −87 (masked attention scores are
/// −∞) instead of a subnormal.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HI` is exact for |n| < 256 (LN2_HI has 16 significant bits).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 · 2^23 rounds to an integer (no `round`, which is a libm call without SSE4.1)
    // and leaves that integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let k = xc * LOG2E + MAGIC;
    let n = k - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let e = (k.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32) + 127;
    let scale = f32::from_bits((e << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// `erf` for f32 inputs, within 6e-8 of the true value (under one f32 ulp) everywhere.
///
/// `erf(x) = x · P(x²) / Q(x²)` on `|x| ≤ 3.92` (beyond it erf rounds to ±1 in f32), with
/// degree-5/6 polynomials fitted for this module (weighted least squares against mpmath's
/// erf, P's constant term pinned to 2/√π). Evaluated in f64 so that the f32 result carries only
/// the fit's error, not f32 rounding of the evaluation (which alone costs ~3e-7). Branch-free
/// and call-free, so it vectorises; libm's `erff`, which candle's `gelu_erf` uses, does not.
#[inline(always)]
pub(super) fn erf_f32(x: f32) -> f32 {
    const P: [f64; 6] = [
        std::f64::consts::FRAC_2_SQRT_PI,
        0.188_115_346_822_431_14,
        0.054_179_955_506_979_06,
        0.003_909_121_901_986_895,
        0.000_363_628_551_969_782_77,
        5.051_524_439_979_998_6e-6,
    ];
    const Q: [f64; 7] = [
        1.0,
        0.500_046_248_069_165_4,
        0.114_697_602_563_120_24,
        0.015_502_391_918_585_002,
        0.001_295_340_582_533_667_4,
        6.022_413_519_683_224e-5,
        1.602_592_967_844_818e-7,
    ];
    let a = (x as f64).abs().min(3.92);
    let t = a * a;
    let p = P[0] + t * (P[1] + t * (P[2] + t * (P[3] + t * (P[4] + t * P[5]))));
    let q = Q[0] + t * (Q[1] + t * (Q[2] + t * (Q[3] + t * (Q[4] + t * (Q[5] + t * Q[6])))));
    ((a * p / q).min(1.0) as f32).copysign(x)
}
