//! How close two runs of the same computation are, for comparing work done on another backend
//! (wgpu, CUDA) with the CPU reference, which is bitwise deterministic only against itself.
//!
//! Two figures, both scale-free: the relative L2 distance `|b - a| / |a|` (how large the error
//! is next to the value) and the cosine of the angle between them (whether it points the same
//! way; a tensor of the right size but the wrong direction, random values, has a cosine near 0).
//! Sums run in f64, so the figures do not depend on the order of a million f32 terms.

/// Relative L2 distance and cosine of `other` against `reference`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Closeness {
    /// `|other - reference| / |reference|` (0 when equal; infinite if the reference is zero
    /// and the other is not).
    pub rel_l2: f64,
    /// Cosine of the angle between them (1 when parallel; 0 if either is zero).
    pub cosine: f64,
}

impl Closeness {
    /// Compares two vectors of the same length; `None` if the lengths differ or a value is not
    /// finite.
    pub fn of(reference: &[f32], other: &[f32]) -> Option<Self> {
        if reference.len() != other.len() {
            return None;
        }
        let (mut aa, mut bb, mut ab, mut dd) = (0f64, 0f64, 0f64, 0f64);
        for (&a, &b) in reference.iter().zip(other) {
            if !a.is_finite() || !b.is_finite() {
                return None;
            }
            let (a, b) = (a as f64, b as f64);
            aa += a * a;
            bb += b * b;
            ab += a * b;
            dd += (b - a) * (b - a);
        }
        let rel_l2 = if aa > 0.0 {
            (dd / aa).sqrt()
        } else if dd == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let cosine = if aa > 0.0 && bb > 0.0 { ab / (aa.sqrt() * bb.sqrt()) } else { 0.0 };
        Some(Closeness { rel_l2, cosine })
    }

    /// The worse of two (larger distance, smaller cosine).
    pub fn worst(self, other: Self) -> Self {
        Closeness { rel_l2: self.rel_l2.max(other.rel_l2), cosine: self.cosine.min(other.cosine) }
    }

    /// True if within `tol` (distance at most `tol.rel_l2`, cosine at least `tol.cosine`).
    pub fn within(&self, tol: &Closeness) -> bool {
        self.rel_l2 <= tol.rel_l2 && self.cosine >= tol.cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_close_random_and_zero() {
        let a: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let same = Closeness::of(&a, &a).unwrap();
        assert_eq!(same, Closeness { rel_l2: 0.0, cosine: 1.0 });
        let close: Vec<f32> = a.iter().map(|x| x * (1.0 + 1e-6)).collect();
        let c = Closeness::of(&a, &close).unwrap();
        assert!(c.rel_l2 < 2e-6 && c.cosine > 0.999_999, "{c:?}");
        let other: Vec<f32> = (0..1000).map(|i| ((i * 53 % 97) as f32 - 48.0) / 7.0).collect();
        let r = Closeness::of(&a, &other).unwrap();
        assert!(r.rel_l2 > 0.5 && r.cosine.abs() < 0.3, "{r:?}");
        let zero = vec![0.0; 1000];
        assert_eq!(Closeness::of(&a, &zero).unwrap(), Closeness { rel_l2: 1.0, cosine: 0.0 });
        assert!(Closeness::of(&a, &a[1..]).is_none());
        let mut nan = a.clone();
        nan[3] = f32::NAN;
        assert!(Closeness::of(&a, &nan).is_none());
        let tol = Closeness { rel_l2: 1e-3, cosine: 0.9999 };
        assert!(c.within(&tol) && !r.within(&tol) && !c.worst(r).within(&tol));
    }
}
