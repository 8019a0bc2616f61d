//! Scalar maths written so that loops over slices vectorise.

/// `e^x` within 2 ulp for normal results, 0 below -87 and infinity above 88; branch-free.
#[inline(always)]
pub(crate) fn exp(x0: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let x = x0.clamp(-87.0, 88.0); // NaN stays NaN
                                   // `k`'s low mantissa bits hold the integer `n` (two's complement): the scale 2^n is built
                                   // from them with integer operations, which vectorise (a float-to-int cast does not: Rust's
                                   // saturating `as i32` is scalarised).
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    // Taylor polynomial of e^r on |r| <= ln2/2, degree 7.
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // n is in [-126, 127] after the clamp, so (n + 127) << 23 is a normal power of two.
    let scale = f32::from_bits((k.to_bits() << 23).wrapping_add(127 << 23));
    let v = p * scale;
    let v = if x0 < -87.0 { 0.0 } else { v };
    if x0 > 88.0 {
        f32::INFINITY
    } else {
        v
    }
}

/// Defines `fn $name(args)` that runs `$body(args)` compiled for AVX-512 or AVX2+FMA when the CPU
/// has them (so the compiler vectorises its loops and `mul_add` is one instruction), and as
/// plain code elsewhere. Every variant evaluates the same scalar expressions, so the result
/// does not depend on which one runs.
macro_rules! vectorised {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: each variant runs only where the CPU reports its features.
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use vectorised;

/// Eight partial sums combined in a fixed order (the same tree on every machine).
#[inline(always)]
pub(crate) fn combine8(p: [f32; 8]) -> f32 {
    ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]))
}

/// `sum_i f(i)` over `0..n` as eight running partial sums (element `i` into lane `i % 8`)
/// combined by [`combine8`]: vectorisable, and the same bits for any vector width.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the lane index is the point
pub(crate) fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut part = [0f32; 8];
    let full = n / 8 * 8;
    for i0 in (0..full).step_by(8) {
        for l in 0..8 {
            part[l] += f(i0 + l);
        }
    }
    for i in full..n {
        part[i - full] += f(i);
    }
    combine8(part)
}

/// Lanes of one AVX-512 register of f32; [`combine`] works in whole blocks of it.
pub(crate) const LANES: usize = 16;

/// `out[l] = sum_r coef[r] * m[r * ld + l]` for `l < width`: a combination of `coef.len()` rows
/// of `m` (row stride `ld`), `width` a multiple of [`LANES`]. Each lane is one fused
/// multiply-add chain over `r` in increasing order, starting from zero, on every path, so the
/// bits do not depend on the CPU. Up to four blocks of lanes are accumulated in registers at
/// once. Panics if the slices are too short for the arguments (a caller bug).
pub(crate) fn combine(
    kernel: crate::gemm::Kernel,
    coef: &[f32],
    m: &[f32],
    ld: usize,
    width: usize,
    out: &mut [f32],
) {
    assert!(width.is_multiple_of(LANES) && width <= ld && out.len() >= width, "combine: width");
    if let Some(last) = coef.len().checked_sub(1) {
        assert!(m.len() >= last * ld + width, "combine: rows");
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512` is only detected on CPUs with AVX-512F; the bounds were checked.
        crate::gemm::Kernel::Avx512 => unsafe { x86::combine_avx512(coef, m, ld, width, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only detected on CPUs with AVX2 and FMA.
        crate::gemm::Kernel::Avx2Fma => unsafe { x86::combine_avx2(coef, m, ld, width, out) },
        _ => combine_portable(coef, m, ld, width, out),
    }
}

#[inline(always)]
fn combine_portable(coef: &[f32], m: &[f32], ld: usize, width: usize, out: &mut [f32]) {
    let out = &mut out[..width];
    out.fill(0.0);
    for (r, &c) in coef.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&m[r * ld..r * ld + width]) {
            *o = c.mul_add(v, *o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn combine_avx2(
        coef: &[f32],
        m: &[f32],
        ld: usize,
        width: usize,
        out: &mut [f32],
    ) {
        super::combine_portable(coef, m, ld, width, out)
    }

    /// Bounds: `m` holds `coef.len()` rows of `ld` with `width <= ld`, `out` at least `width`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn combine_avx512(
        coef: &[f32],
        m: &[f32],
        ld: usize,
        width: usize,
        out: &mut [f32],
    ) {
        let mut w0 = 0;
        while w0 < width {
            let mp = m.as_ptr().add(w0);
            let op = out.as_mut_ptr().add(w0);
            match (width - w0) / LANES {
                1 => blocks::<1>(coef, mp, ld, op),
                2 => blocks::<2>(coef, mp, ld, op),
                3 => blocks::<3>(coef, mp, ld, op),
                _ => blocks::<4>(coef, mp, ld, op),
            }
            w0 += LANES * ((width - w0) / LANES).min(4);
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn blocks<const NB: usize>(coef: &[f32], m: *const f32, ld: usize, out: *mut f32) {
        let mut acc = [_mm512_setzero_ps(); NB];
        for (r, &c) in coef.iter().enumerate() {
            let c = _mm512_set1_ps(c);
            let row = m.add(r * ld);
            for (b, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(c, _mm512_loadu_ps(row.add(b * LANES)), *a);
            }
        }
        for (b, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(b * LANES), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::Kernel;

    #[test]
    fn exp_is_accurate_and_saturates() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn combine_is_the_same_bits_on_every_path_and_matches_f64() {
        let vals = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        for (rows, width, ld) in [(1, 16, 16), (7, 48, 64), (33, 80, 96), (64, 32, 32), (0, 16, 16)]
        {
            let coef = vals(rows, 3);
            let m = vals(rows.max(1) * ld, 5);
            let mut reference = vec![f32::NAN; width];
            combine(Kernel::Portable, &coef, &m, ld, width, &mut reference);
            for l in 0..width {
                let want: f64 = (0..rows).map(|r| coef[r] as f64 * m[r * ld + l] as f64).sum();
                assert!((reference[l] as f64 - want).abs() < 1e-5, "lane {l}");
            }
            let mut fast = vec![f32::NAN; width];
            combine(Kernel::detect(), &coef, &m, ld, width, &mut fast);
            assert!(fast.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
