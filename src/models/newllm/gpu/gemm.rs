//! Row-major GEMMs on cuBLAS (column-major) by the usual transpose trick:
//! a row-major `r x c` matrix with row stride ld is, read column-major, its
//! transpose `c x r` with leading dimension ld. So `C = op(A) op(B)` in row
//! major is `C^T = op(B)^T op(A)^T` in column major, with the operands swapped.
//! The mapping is pure host logic, tested below against `ops::matmul`.

use crate::ops::Trans;

/// cuBLAS operation of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// Arguments of one column-major `cublasSgemm` call (pointers aside): the
/// first operand is our B, the second our A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColMajorGemm {
    pub op_first: Op,
    pub op_second: Op,
    /// Rows of the column-major result = columns n of our C.
    pub m: usize,
    /// Columns of the column-major result = rows m of our C.
    pub n: usize,
    pub k: usize,
    /// Leading dimension of the first operand (our ldb).
    pub ld_first: usize,
    /// Leading dimension of the second operand (our lda).
    pub ld_second: usize,
    pub ldc: usize,
}

/// Row-major `C (m x n, ldc) = op(A) op(B)` as a column-major sgemm
/// `C^T = op'(B) op'(A)`. Shapes as in `ops::matmul`: NN A m x k, B k x n;
/// NT B n x k; TN A k x m.
pub fn colmajor(
    t: Trans,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
) -> ColMajorGemm {
    let (op_first, op_second) = match t {
        Trans::NN => (Op::N, Op::N),
        Trans::NT => (Op::T, Op::N),
        Trans::TN => (Op::N, Op::T),
    };
    ColMajorGemm {
        op_first,
        op_second,
        m: n,
        n: m,
        k,
        ld_first: ldb,
        ld_second: lda,
        ldc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{self, Mat};

    /// Reference column-major sgemm: C = alpha op(X) op(Y) + beta C, as cuBLAS defines it.
    #[allow(clippy::too_many_arguments)]
    fn sgemm_ref(g: &ColMajorGemm, x: &[f32], y: &[f32], c: &mut [f32], beta: f32) {
        let at = |buf: &[f32], op: Op, ld: usize, i: usize, j: usize| match op {
            Op::N => buf[i + j * ld],
            Op::T => buf[j + i * ld],
        };
        for j in 0..g.n {
            for i in 0..g.m {
                let mut s = 0.0f32;
                for p in 0..g.k {
                    s +=
                        at(x, g.op_first, g.ld_first, i, p) * at(y, g.op_second, g.ld_second, p, j);
                }
                let o = i + j * g.ldc;
                c[o] = s + beta * c[o];
            }
        }
    }

    #[test]
    fn mapping_matches_ops_matmul_with_leading_dims() {
        let (m, n, k) = (5, 7, 3);
        for t in [Trans::NN, Trans::NT, Trans::TN] {
            for accumulate in [false, true] {
                // operand shapes (rows, cols) per transpose case, padded leading dims
                let (ar, ac) = if t == Trans::TN { (k, m) } else { (m, k) };
                let (br, bc) = if t == Trans::NT { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ac + 2, bc + 3, n + 1);
                let mut a = vec![0.0f32; ar * lda];
                let mut b = vec![0.0f32; br * ldb];
                let mut c0 = vec![0.0f32; m * ldc];
                ops::tests::fill(&mut a, 1);
                ops::tests::fill(&mut b, 2);
                ops::tests::fill(&mut c0, 3);
                let mut want = c0.clone();
                ops::matmul(
                    ops::Precision::F32,
                    &mut want,
                    ldc,
                    Mat {
                        data: &a,
                        rows: ar,
                        cols: ac,
                        ld: lda,
                        bf16: None,
                    },
                    Mat {
                        data: &b,
                        rows: br,
                        cols: bc,
                        ld: ldb,
                        bf16: None,
                    },
                    t,
                    accumulate,
                );
                let g = colmajor(t, m, n, k, lda, ldb, ldc);
                let mut got = c0.clone();
                sgemm_ref(&g, &b, &a, &mut got, if accumulate { 1.0 } else { 0.0 });
                for r in 0..m {
                    for col in 0..n {
                        let (x, y) = (got[r * ldc + col], want[r * ldc + col]);
                        assert!(
                            (x - y).abs() < 1e-5,
                            "{t:?} acc={accumulate} [{r},{col}] {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}
