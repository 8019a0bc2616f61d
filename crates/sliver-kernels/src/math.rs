//! Scalar maths written so that loops over slices vectorise.

/// `e^x` within 2 ulp for normal results, 0 below -87 and infinity above 88; branch-free.
#[inline(always)]
pub(crate) fn exp(x0: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let x = x0.max(-87.0).min(88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
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
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
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
