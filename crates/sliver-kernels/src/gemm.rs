//! Packed f32 matrix product `C = A B` for the shapes of a small transformer's training step.
//!
//! A micro-kernel keeps an `MR x NR` tile of `C` in registers while it walks `k`, reading `A`
//! through any strides (row-major activations and the transposed `Aᵀ` of a weight gradient
//! alike) and `B` as panels of [`NR`] contiguous values per row. At the step's sizes (K of 128
//! to 768) the operands stay in the L2 cache, so they are read in place: only a `B` whose
//! columns are strided (a transposed weight in `dC Bᵀ`) is packed into panels, and partial
//! edge panels are packed with zero padding. With more than one thread (see `pool`), the rows of `C` are split
//! between threads in whole panels; `k` is never split.
//!
//! **Determinism.** Each `C[i][j]` is computed as `acc = fma(A[i][p], B[p][j], acc)` for
//! `p = 0, 1, ..., k-1`, starting from zero, by every kernel (AVX-512 or portable), in every
//! tile position and for any thread count. The result is therefore the same bits on every
//! machine whose `fma` is IEEE's (all of them: it is exactly rounded by definition).

use std::mem::MaybeUninit;

/// Rows of `C` a micro-kernel computes at once.
pub const MR: usize = 12;
/// Columns of `C` a micro-kernel computes at once (two AVX-512 vectors).
pub const NR: usize = 32;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// A shape or bounds problem in [`gemm`]'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gemm: {}", self.0)
    }
}

impl std::error::Error for ShapeError {}

/// A read-only strided view of a matrix inside a slice: element `(i, j)` is
/// `data[offset + i * row_stride + j * col_stride]`. Construction checks that every element is
/// inside `data`, so the kernels may read without further checks.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl<'a> MatRef<'a> {
    /// A view with explicit strides (in elements, possibly zero or negative).
    pub fn new(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: isize,
        col_stride: isize,
    ) -> Result<Self, ShapeError> {
        if rows > 0 && cols > 0 {
            let span = |n: usize, s: isize| -> Option<(isize, isize)> {
                let last = isize::try_from(n - 1).ok()?.checked_mul(s)?;
                Some((last.min(0), last.max(0)))
            };
            let bounds = span(rows, row_stride).zip(span(cols, col_stride)).and_then(
                |((rl, rh), (cl, ch))| {
                    let base = isize::try_from(offset).ok()?;
                    Some((
                        base.checked_add(rl)?.checked_add(cl)?,
                        base.checked_add(rh)?.checked_add(ch)?,
                    ))
                },
            );
            match bounds {
                Some((lo, hi)) if lo >= 0 && (hi as usize) < data.len() => {}
                _ => {
                    return Err(ShapeError(format!(
                        "a {rows}x{cols} view at offset {offset} with strides \
                         ({row_stride}, {col_stride}) does not fit in {} elements",
                        data.len()
                    )))
                }
            }
        }
        Ok(MatRef { data, offset, rows, cols, rs: row_stride, cs: col_stride })
    }

    /// A dense row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, ShapeError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(ShapeError(format!(
                "{} elements are not a {rows}x{cols} matrix",
                data.len()
            )));
        }
        Self::new(data, 0, rows, cols, cols as isize, 1)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        MatRef { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pointer to element `(i, j)`, which must be inside the view.
    fn ptr(&self, i: usize, j: usize) -> *const f32 {
        assert!(i < self.rows && j < self.cols, "gemm: ({i}, {j}) outside the view");
        let idx = self.offset as isize + i as isize * self.rs + j as isize * self.cs;
        // SAFETY: `new` checked that every (i < rows, j < cols) index is inside `data`.
        unsafe { self.data.as_ptr().offset(idx) }
    }

    /// Element `(i, j)`; bounds were checked at construction.
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        let idx = self.offset as isize + i as isize * self.rs + j as isize * self.cs;
        // SAFETY: `new` checked that every (i < rows, j < cols) index is inside `data`.
        unsafe { *self.data.get_unchecked(idx as usize) }
    }
}

/// `C = A B`, with `C` dense row-major `a.rows() x b.cols()`. Errors when the inner dimensions
/// differ or `c` has the wrong length.
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32]) -> Result<(), ShapeError> {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and `gemm_uninit` only writes
    // (initialised) values.
    let c = unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) };
    gemm_uninit(a, b, c)
}

/// [`gemm`] into memory that need not be initialised: every element of `c` is written (and
/// none read) when it returns `Ok`, so a fresh output buffer needs no zero-filling first.
pub fn gemm_uninit(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [MaybeUninit<f32>],
) -> Result<(), ShapeError> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        return Err(ShapeError(format!("inner dimensions differ: {m}x{k} times {}x{n}", b.rows)));
    }
    if m.checked_mul(n) != Some(c.len()) {
        return Err(ShapeError(format!("output has {} elements, not {m}x{n}", c.len())));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.fill(MaybeUninit::new(0.0));
        return Ok(());
    }
    let kernel = Kernel::detect();
    let np = n.div_ceil(NR);
    // B is read in place when its rows are contiguous; only a partial last panel (or every
    // panel of a B with strided columns, such as a transposed weight) is packed.
    let direct = b.cs == 1;
    let packed = if direct { usize::from(n % NR != 0) } else { np };
    with_scratch(&PACK_B, packed * k * NR, |pb| {
        for (i, panel) in pb.chunks_exact_mut(k * NR).enumerate() {
            let j = if direct { np - 1 } else { i };
            pack(&b.t(), j * NR, (n - j * NR).min(NR), NR, panel);
        }
        let bs = BSource { b: &b, direct, packed: pb, np };
        let mp = m.div_ceil(MR);
        let threads = rayon::current_num_threads().min(mp);
        if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_MACS {
            // About four parts per thread, so a thread slowed by other load hands its share on.
            let panels_per = mp.div_ceil(4 * threads);
            crate::pool::chunks_mut(c, panels_per * MR * n, |t, rows| {
                compute_rows(kernel, &a, &bs, t * panels_per * MR, rows, n, k)
            });
        } else {
            compute_rows(kernel, &a, &bs, 0, c, n, k);
        }
    });
    Ok(())
}

/// Where the column panels of `B` are: in `b` itself (`direct`, rows contiguous) except a
/// partial last panel, which is `packed`; or all in `packed`.
struct BSource<'a> {
    b: &'a MatRef<'a>,
    direct: bool,
    packed: &'a [f32],
    np: usize,
}

impl BSource<'_> {
    /// Panel `j`: a pointer to its first row (`NR` contiguous values) and the row stride.
    fn panel(&self, j: usize, k: usize) -> (*const f32, isize) {
        if self.direct && (j + 1 < self.np || self.packed.is_empty()) {
            (self.b.ptr(0, j * NR), self.b.rs)
        } else {
            let i = if self.direct { 0 } else { j };
            (self.packed[i * k * NR..(i + 1) * k * NR].as_ptr(), NR as isize)
        }
    }
}

/// Computes the rows `row0 ..` of `C` that `out` holds (whole panels except at the end). Full
/// row panels of `A` are read in place through its strides; a partial last one is packed.
fn compute_rows(
    kernel: Kernel,
    a: &MatRef<'_>,
    bs: &BSource<'_>,
    row0: usize,
    out: &mut [MaybeUninit<f32>],
    n: usize,
    k: usize,
) {
    let rows = out.len() / n;
    let full = rows / MR;
    let rest = rows - full * MR;
    with_scratch(&PACK_A, if rest > 0 { k * MR } else { 0 }, |edge| {
        if rest > 0 {
            pack(a, row0 + full * MR, rest, MR, edge);
        }
        for j in 0..n.div_ceil(NR) {
            let nr = (n - j * NR).min(NR);
            let (b, b_rs) = bs.panel(j, k);
            for i in 0..rows.div_ceil(MR) {
                let ops = if i < full {
                    Tile { a: a.ptr(row0 + i * MR, 0), a_rs: a.rs, a_cs: a.cs, b, b_rs }
                } else {
                    Tile { a: edge.as_ptr(), a_rs: 1, a_cs: MR as isize, b, b_rs }
                };
                let mr = (rows - i * MR).min(MR);
                // SAFETY: every A element (r < mr, p < k) and B row (p < k, NR values) of the
                // tile is inside its slice: `MatRef::new` checked the views, the packed panels
                // hold k x MR and k x NR values, and a direct B panel is a whole NR columns.
                unsafe { kernel.run(k, ops, &mut out[i * MR * n + j * NR..], n, mr, nr) };
            }
        }
    })
}

/// The operands of one tile: `A` element `(r, p)` at `a + r a_rs + p a_cs`, row `p` of the `B`
/// panel (`NR` contiguous values) at `b + p b_rs`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
}

impl Tile {
    #[inline(always)]
    unsafe fn a(&self, r: usize, p: usize) -> f32 {
        *self.a.offset(r as isize * self.a_rs + p as isize * self.a_cs)
    }

    #[inline(always)]
    unsafe fn b_row(&self, p: usize) -> *const f32 {
        self.b.offset(p as isize * self.b_rs)
    }
}

/// Packs rows `r0 .. r0 + count` of `m` as `m.cols` groups of `width` values (zero past
/// `count`): `A`'s row panels with `width` [`MR`], and `B`'s column panels as the row panels of
/// `Bᵀ` with `width` [`NR`].
fn pack(m: &MatRef<'_>, r0: usize, count: usize, width: usize, out: &mut [f32]) {
    let k = m.cols;
    if count < width {
        out.fill(0.0);
    }
    if m.rs == 1 && k > 0 {
        // Column-major source (a transposed row-major matrix): each group is contiguous.
        for p in 0..k {
            let start = (m.offset as isize + r0 as isize + p as isize * m.cs) as usize;
            out[p * width..p * width + count].copy_from_slice(&m.data[start..start + count]);
        }
    } else if m.cs == 1 && k > 0 {
        for r in 0..count {
            let start = (m.offset as isize + (r0 + r) as isize * m.rs) as usize;
            for (p, &v) in m.data[start..start + k].iter().enumerate() {
                out[p * width + r] = v;
            }
        }
    } else {
        for p in 0..k {
            for r in 0..count {
                out[p * width + r] = m.at(r0 + r, p);
            }
        }
    }
}

/// A scratch buffer of `len` values whose contents are unspecified (packing overwrites or
/// zero-fills every value it uses), reused across calls on the same thread.
fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a nested pool job): use a fresh buffer.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

thread_local! {
    static PACK_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PACK_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// x86-64 with AVX-512F.
    Avx512,
    /// x86-64 with AVX2 and FMA: the portable kernel compiled for them.
    Avx2Fma,
    /// Anything else: the portable kernel (`f32::mul_add`).
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Portable
    }

    /// One tile: `C[0..mr, 0..nr] = A B` over `k`, `C` with row stride `ldc`.
    ///
    /// # Safety
    /// `t` must address `MR` rows by `k` columns of `A` (only the first `mr` rows when `mr` is
    /// smaller, if the kernel is told so by a packed, zero-padded panel) and `k` rows of `NR`
    /// values of `B`; `c` must hold `(mr - 1) ldc + nr` values.
    #[inline]
    unsafe fn run(
        self,
        k: usize,
        t: Tile,
        c: &mut [MaybeUninit<f32>],
        ldc: usize,
        mr: usize,
        nr: usize,
    ) {
        assert!(c.len() >= (mr - 1) * ldc + nr, "gemm: tile outside the output");
        let mut tile = [[0f32; NR]; MR];
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                if mr == MR && nr == NR && c.len() >= (MR - 1) * ldc + NR {
                    return x86::kernel_avx512(k, t, c.as_mut_ptr().cast(), ldc);
                }
                x86::kernel_avx512(k, t, tile.as_mut_ptr().cast(), NR);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => x86::kernel_avx2(k, t, &mut tile),
            _ => portable_kernel(k, t, &mut tile),
        }
        for (r, row) in tile.iter().enumerate().take(mr) {
            for (o, &v) in c[r * ldc..r * ldc + nr].iter_mut().zip(&row[..nr]) {
                o.write(v);
            }
        }
    }
}

/// The reference kernel: the same fused multiply-add chain as the vector kernels.
///
/// # Safety
/// As [`Kernel::run`].
#[inline(always)]
unsafe fn portable_kernel(k: usize, t: Tile, acc: &mut [[f32; NR]; MR]) {
    for p in 0..k {
        let b: &[f32; NR] = &*t.b_row(p).cast();
        for (r, row) in acc.iter_mut().enumerate() {
            let a = t.a(r, p);
            for j in 0..NR {
                row[j] = a.mul_add(b[j], row[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, MR, NR};
    use std::arch::x86_64::*;

    /// The portable kernel compiled with AVX2 and FMA enabled.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_avx2(k: usize, t: Tile, acc: &mut [[f32; NR]; MR]) {
        super::portable_kernel(k, t, acc)
    }

    /// `MR x NR` tile in 24 zmm accumulators; stores the full tile at `c` (row stride `ldc`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_avx512(k: usize, t: Tile, c: *mut f32, ldc: usize) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let rows: [*const f32; MR] = std::array::from_fn(|r| t.a.offset(r as isize * t.a_rs));
        for p in 0..k {
            let b = t.b_row(p);
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            let off = p as isize * t.a_cs;
            for (r, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*rows[r].offset(off));
                row[0] = _mm512_fmadd_ps(a, b0, row[0]);
                row[1] = _mm512_fmadd_ps(a, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), row[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
        }
    }
}

/// `C = A B` by the portable kernel on one thread, whatever the CPU: the reference the
/// vector kernels must match bit for bit.
pub fn gemm_reference(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions");
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc = a.at(i, p).mul_add(b.at(p, j), acc);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    fn check(m: usize, k: usize, n: usize, transpose_a: bool, transpose_b: bool) {
        let av = values(m * k, 1 + m as u32);
        let bv = values(k * n, 7 + n as u32);
        let a = if transpose_a {
            MatRef::row_major(&av, k, m).unwrap().t()
        } else {
            MatRef::row_major(&av, m, k).unwrap()
        };
        let b = if transpose_b {
            MatRef::row_major(&bv, n, k).unwrap().t()
        } else {
            MatRef::row_major(&bv, k, n).unwrap()
        };
        let want = gemm_reference(a, b);
        let mut got = vec![f32::NAN; m * n];
        gemm(a, b, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{m}x{k}x{n} ta={transpose_a} tb={transpose_b} at {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_reference_bitwise_on_edges_and_transposes() {
        for &(m, k, n) in
            &[(1, 1, 1), (12, 3, 32), (13, 5, 33), (7, 17, 5), (25, 64, 70), (96, 128, 96)]
        {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(m, k, n, ta, tb);
                }
            }
        }
    }

    #[test]
    fn parallel_split_gives_the_same_bits() {
        // Large enough to take the parallel path on a pool of four threads.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let (m, k, n) = (200, 96, 100);
        let av = values(m * k, 3);
        let bv = values(k * n, 4);
        let a = MatRef::row_major(&av, m, k).unwrap();
        let b = MatRef::row_major(&bv, k, n).unwrap();
        let mut par = vec![0f32; m * n];
        pool.install(|| gemm(a, b, &mut par)).unwrap();
        let want = gemm_reference(a, b);
        assert!(par.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn portable_and_detected_kernels_agree() {
        let (m, k, n) = (24, 40, 64);
        let av = values(m * k, 5);
        let bv = values(k * n, 6);
        let a = MatRef::row_major(&av, m, k).unwrap();
        let b = MatRef::row_major(&bv, k, n).unwrap();
        // A read in place (row stride k), B read in place (row stride n).
        let t =
            Tile { a: a.ptr(0, 0), a_rs: k as isize, a_cs: 1, b: b.ptr(0, 0), b_rs: n as isize };
        let mut detected = vec![MaybeUninit::new(0f32); MR * NR];
        let mut portable = vec![MaybeUninit::new(0f32); MR * NR];
        // SAFETY: the tile's 12 rows of A and 32 columns of B are inside the matrices.
        let (detected, portable) = unsafe {
            Kernel::detect().run(k, t, &mut detected, NR, MR, NR);
            Kernel::Portable.run(k, t, &mut portable, NR, MR, NR);
            let read = |v: Vec<MaybeUninit<f32>>| v.iter().map(|x| x.assume_init()).collect();
            (read(detected), read(portable)) as (Vec<f32>, Vec<f32>)
        };
        assert_eq!(detected, portable, "kernel {:?}", Kernel::detect());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let v = vec![0f32; 12];
        assert!(MatRef::row_major(&v, 3, 5).is_err());
        assert!(MatRef::new(&v, 4, 3, 3, 3, 1).is_err());
        assert!(MatRef::new(&v, 0, 3, 4, -4, 1).is_err());
        assert!(MatRef::new(&v, 8, 3, 4, -4, 1).is_ok());
        let a = MatRef::row_major(&v, 3, 4).unwrap();
        let mut c = vec![0f32; 9];
        assert!(gemm(a, a, &mut c).is_err());
        assert!(gemm(a, a.t(), &mut c[..8]).is_err());
        assert!(gemm(a, a.t(), &mut c).is_ok());
        let empty = MatRef::row_major(&[], 3, 0).unwrap();
        let mut z = vec![1f32; 9];
        gemm(empty, empty.t(), &mut z).unwrap();
        assert!(z.iter().all(|&x| x == 0.0));
    }
}
