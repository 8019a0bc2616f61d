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
