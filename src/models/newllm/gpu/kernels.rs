//! CUDA C kernels, compiled at run time by NVRTC (no toolkit at build time).
//!
//! Conventions: row-major f32 matrices; `rows x n` with row stride n unless
//! a parameter says otherwise; one block per row for row-wise reductions
//! (LayerNorm, softmax), 256 threads; column reductions are deterministic
//! (fixed order per launch shape, no atomics) so a rerun gives the same bits.
//! Row statistics of LayerNorm and the loss sums are in double, like the CPU.
//! Compiled with --fmad=false so elementwise arithmetic rounds like the CPU.

/// Every kernel the host code launches; a test checks each is defined.
pub const ENTRY_POINTS: [&str; 18] = [
    "ln_fwd_fused",
    "ln_bwd",
    "col_reduce",
    "add_bias",
    "gather_tokens",
    "gather_tokens_step",
    "gather_prev_wrap",
    "gather_src",
    "store_step",
    "gemv_rows",
    "gemv_rows4",
    "softmax_xent",
    "col_sum_f64",
    "p1_row_stats",
    "p1_grad",
    "sumsq_partial",
    "scale_f32",
    "adam_step",
];

/// Threads per block of the row kernels (a multiple of 32, at most 1024).
pub const ROW_THREADS: u32 = 256;
/// The kernels launched with (32, 32) blocks; every other one takes
/// ROW_THREADS. Each kernel's `__launch_bounds__` says the same, so ptxas
/// keeps its registers within what such a block may use (a launch that
/// needs more registers than the SM has fails).
pub const WIDE_KERNELS: [&str; 2] = ["col_reduce", "col_sum_f64"];
pub const WIDE_THREADS: u32 = 1024;

/// The most threads per block kernel `name` is compiled for.
pub fn launch_bound(name: &str) -> u32 {
    if WIDE_KERNELS.contains(&name) {
        WIDE_THREADS
    } else {
        ROW_THREADS
    }
}
/// Blocks of `sumsq_partial` (its partial sums are added on the host in f64).
pub const SUMSQ_BLOCKS: u32 = 1024;

pub const SOURCE: &str = r#"
#define ROW_THREADS 256
#define WIDE_THREADS 1024
// NVRTC compiles without system headers: no size_t, no INFINITY.
typedef unsigned long long u64;

// Block-wide sum of one value per thread; every thread gets the total.
// `sh` holds ROW_THREADS / 32 values.
template <typename T>
__device__ T block_sum(T v, T* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    T t = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += sh[w];
    return t;
}

// One layer's epilogue, one block per row:
//   h += bias; z = r + ReLU(h) with r = res (no projection) or
//   proj + pbias (proj = P res, already in y); y = LayerNorm(z) * g + beta.
// Keeps h (pre-activation), xhat and rstd for the backward.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) ln_fwd_fused(int rows, int n, float* h, const float* bias,
        const float* res, const float* pbias, int has_proj,
        const float* g, const float* beta, float* xhat, float* rstd, float* y) {
    __shared__ double sh[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    float* hr = h + (u64)r * n;
    float* yr = y + (u64)r * n;
    float* xr = xhat + (u64)r * n;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float hv = hr[i] + bias[i];
        hr[i] = hv;
        float act = hv > 0.0f ? hv : 0.0f;
        float z = has_proj ? yr[i] + (pbias[i] + act) : res[(u64)r * n + i] + act;
        yr[i] = z;
        s += (double)z;
    }
    double mean = block_sum<double>(s, sh) / (double)n;
    double v = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double d = (double)yr[i] - mean;
        v += d * d;
    }
    double var = block_sum<double>(v, sh) / (double)n;
    float sc = (float)(1.0 / sqrt(var + 1e-5));
    float m32 = (float)mean;
    if (threadIdx.x == 0) rstd[r] = sc;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float xh = (yr[i] - m32) * sc;
        xr[i] = xh;
        yr[i] = xh * g[i] + beta[i];
    }
}

// LayerNorm + ReLU backward, one block per row. On entry dy = dL/dy; on exit
// dz = dL/dz (the LayerNorm input) and dy is overwritten with dh = dz * (h > 0).
// (dg, db are accumulated separately by col_reduce before this runs.)
extern "C" __global__ void __launch_bounds__(ROW_THREADS) ln_bwd(int rows, int n, float* dy, const float* xhat,
        const float* rstd, const float* g, const float* h, float* dz) {
    __shared__ float sh[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    float* dyr = dy + (u64)r * n;
    const float* xr = xhat + (u64)r * n;
    const float* hr = h + (u64)r * n;
    float* dzr = dz + (u64)r * n;
    float md = 0.0f, mdx = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float d = dyr[i] * g[i];
        md += d;
        mdx += d * xr[i];
    }
    md = block_sum<float>(md, sh) / (float)n;
    mdx = block_sum<float>(mdx, sh) / (float)n;
    float s = rstd[r];
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float z = s * (dyr[i] * g[i] - md - xr[i] * mdx);
        dzr[i] = z;
        dyr[i] = hr[i] > 0.0f ? z : 0.0f;
    }
}

// Column sums over rows: sum_ab[i] += sum_r a*b (when sum_ab and b are given),
// sum_a[i] += sum_r a (when sum_a is given). Block (32, 32): 32 columns per
// block, the 32 thread rows stride over the rows, then a fixed-order combine.
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) col_reduce(int rows, int n, const float* a, const float* b,
        float* sum_ab, float* sum_a) {
    __shared__ float s_ab[32][33];
    __shared__ float s_a[32][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    float ab = 0.0f, aa = 0.0f;
    if (col < n) {
        for (int r = threadIdx.y; r < rows; r += 32) {
            float av = a[(u64)r * n + col];
            aa += av;
            if (b) ab += av * b[(u64)r * n + col];
        }
    }
    s_ab[threadIdx.y][threadIdx.x] = ab;
    s_a[threadIdx.y][threadIdx.x] = aa;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        float tab = 0.0f, ta = 0.0f;
        for (int k = 0; k < 32; ++k) { tab += s_ab[k][threadIdx.x]; ta += s_a[k][threadIdx.x]; }
        if (sum_ab && b) sum_ab[col] += tab;
        if (sum_a) sum_a[col] += ta;
    }
}

extern "C" __global__ void __launch_bounds__(ROW_THREADS) add_bias(int rows, int n, float* y, const float* bias) {
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < (u64)rows * n) y[idx] += bias[idx % n];
}

// Token inputs of positions start..start+rows: the last k token vectors,
// oldest first, zeros before the stream start (Model::token_input).
extern "C" __global__ void __launch_bounds__(ROW_THREADS) gather_tokens(int rows, int e, int k, const unsigned* ids,
        long long start, const float* tv, float* x) {
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 ke = (u64)k * e;
    if (idx >= (u64)rows * ke) return;
    u64 r = idx / ke, c = idx % ke;
    long long slot = (long long)(c / e);
    long long t = start + (long long)r + slot - (k - 1);
    x[idx] = t >= 0 ? tv[(u64)ids[t] * e + c % e] : 0.0f;
}

// Recurrent-pass variant: the position is *step + t_off, read on the device,
// so one captured CUDA graph serves every chunk of tokens.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) gather_tokens_step(int e, int k, const unsigned* ids,
        const long long* step, int t_off, const float* tv, float* x) {
    long long j = *step + t_off;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < k * e; c += gridDim.x * blockDim.x) {
        long long t = j + c / e - (k - 1);
        x[c] = t >= 0 ? tv[(u64)ids[t] * e + c % e] : 0.0f;
    }
}

// Counter-based N(0, 1) draw for index i (splitmix64 + Box-Muller): any
// launch shape gives the same noise for the same (seed, i).
__device__ unsigned long long mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ float normal_at(unsigned long long seed, unsigned long long i) {
    unsigned long long a = mix64(seed ^ mix64(2 * i)), b = mix64(seed ^ mix64(2 * i + 1));
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
    // cospi(2 u2) = cos(2 pi u2) without cos's large-argument reduction,
    // whose local array would put a stack frame on this kernel.
    return (float)(sqrt(-2.0 * log(u1)) * cospi(2.0 * u2));
}

// Phase-1 input contexts of rows start..start+rows: prev[j - 1], wrapping to
// prev[n - 1] for j = 0, plus N(0, noise^2) drawn at index noise_off + r*c + i.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) gather_prev_wrap(int rows, int c, long long n, long long start,
        const float* prev, float* ctx, float noise, unsigned long long seed,
        unsigned long long noise_off) {
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * c) return;
    u64 r = idx / c, i = idx % c;
    long long j = (start + (long long)r + n - 1) % n;
    float v = prev[(u64)j * c + i];
    if (noise > 0.0f) v += normal_at(seed, noise_off + idx) * noise;
    ctx[idx] = v;
}

// Phase-2 input contexts from a cache source: zero for j = 0, else src[j - 1].
extern "C" __global__ void __launch_bounds__(ROW_THREADS) gather_src(int rows, int c, long long start, const float* src,
        float* ctx) {
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * c) return;
    long long j = start + (long long)(idx / c);
    ctx[idx] = j == 0 ? 0.0f : src[(u64)(j - 1) * c + idx % c];
}

// End of one recurrent token step (single block): outs[*step + t_off] = ctx;
// the last step of a chunk (advance > 0) moves *step on by `advance`.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) store_step(int c, const float* ctx, float* outs, long long* step,
        int t_off, int advance) {
    __shared__ long long j;
    if (threadIdx.x == 0) j = *step + t_off;
    __syncthreads();
    for (int i = threadIdx.x; i < c; i += blockDim.x) outs[(u64)j * c + i] = ctx[i];
    __syncthreads();
    if (threadIdx.x == 0 && advance > 0) *step += advance;
}

// One-row layer product for the recurrent pass, a warp per output row:
// rows 0..out-1: h = W [a ; b] (W is out x (in_a + in_b));
// rows out..2out-1 (when P is given): y = P res (P is out x res_in).
// Weights stream through once per token (the pass is bandwidth-bound).
extern "C" __global__ void __launch_bounds__(ROW_THREADS) gemv_rows(int out, int in_a, int in_b, const float* W,
        const float* a, const float* b, float* h, const float* P, int res_in,
        const float* res, float* y) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    int total = P ? 2 * out : out;
    if (warp >= total) return;
    float acc = 0.0f;
    if (warp < out) {
        const float* w = W + (u64)warp * (in_a + in_b);
        for (int i = lane; i < in_a; i += 32) acc += w[i] * a[i];
        for (int i = lane; i < in_b; i += 32) acc += w[in_a + i] * b[i];
    } else {
        const float* p = P + (u64)(warp - out) * res_in;
        for (int i = lane; i < res_in; i += 32) acc += p[i] * res[i];
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) {
        if (warp < out) h[warp] = acc; else y[warp - out] = acc;
    }
}

// gemv_rows with 16-byte loads, for when every row start and vector is
// 16-byte aligned and in_a, in_b, res_in are multiples of 4 (the host checks):
// a quarter of the loop trips and four loads in flight per lane, so the
// pass is bound by bandwidth rather than load latency.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) gemv_rows4(int out, int in_a, int in_b, const float* W,
        const float* a, const float* b, float* h, const float* P, int res_in,
        const float* res, float* y) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    int total = P ? 2 * out : out;
    if (warp >= total) return;
    float acc = 0.0f;
    if (warp < out) {
        const float4* w = (const float4*)(W + (u64)warp * (in_a + in_b));
        const float4* a4 = (const float4*)a;
        #pragma unroll 4
        for (int i = lane; i < in_a / 4; i += 32) {
            float4 u = w[i], v = a4[i];
            acc += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
        }
        const float4* wb = w + in_a / 4;
        const float4* b4 = (const float4*)b;
        #pragma unroll 4
        for (int i = lane; i < in_b / 4; i += 32) {
            float4 u = wb[i], v = b4[i];
            acc += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
        }
    } else {
        const float4* p = (const float4*)(P + (u64)(warp - out) * res_in);
        const float4* r4 = (const float4*)res;
        #pragma unroll 4
        for (int i = lane; i < res_in / 4; i += 32) {
            float4 u = p[i], v = r4[i];
            acc += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
        }
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) {
        if (warp < out) h[warp] = acc; else y[warp - out] = acc;
    }
}

// Softmax cross-entropy, one block per row (ops::cross_entropy): per-row
// loss (double) and argmax hit; with grad, the row becomes
// d(mean loss)/d(logits) = (softmax - onehot) * inv_rows.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) softmax_xent(int rows, int V, float* logits, const unsigned* targets,
        float inv_rows, int grad, double* loss, int* correct) {
    __shared__ float smax[ROW_THREADS];
    __shared__ int sidx[ROW_THREADS];
    __shared__ double sh[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    float* row = logits + (u64)r * V;
    float best = __int_as_float(0xff800000); int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float x = row[i];
        if (x > best || (x == best && i < bi)) { best = x; bi = i; }
    }
    smax[threadIdx.x] = best; sidx[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float o = smax[threadIdx.x + s]; int oi = sidx[threadIdx.x + s];
            if (o > smax[threadIdx.x] || (o == smax[threadIdx.x] && oi < sidx[threadIdx.x])) {
                smax[threadIdx.x] = o; sidx[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    float mx = smax[0]; int arg = sidx[0];
    int t = (int)targets[r];
    float tl = row[t];
    __syncthreads(); // every thread has read row[t] before the row is overwritten
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float e = expf(row[i] - mx);
        s += (double)e;
        if (grad) row[i] = e;
    }
    double tot = block_sum<double>(s, sh);
    if (grad) {
        float scale = (float)(1.0 / tot) * inv_rows;
        for (int i = threadIdx.x; i < V; i += blockDim.x) row[i] *= scale;
        __syncthreads();
        if (threadIdx.x == 0) row[t] -= inv_rows;
    }
    if (threadIdx.x == 0) {
        loss[r] = log(tot) - (double)(tl - mx);
        correct[r] = arg == t ? 1 : 0;
    }
}

// Column sums in double (Phase-1 column means): out[i] = sum_r a[r, i].
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) col_sum_f64(int rows, int n, const float* a, double* out) {
    __shared__ double s[32][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (col < n)
        for (int r = threadIdx.y; r < rows; r += 32) acc += (double)a[(u64)r * n + col];
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        double t = 0.0;
        for (int k = 0; k < 32; ++k) t += s[k][threadIdx.x];
        out[col] = t;
    }
}

// Phase-1 per-row statistics (loss::phase1_losses), one block per row:
// row_sq = sum (out - prev)^2, row_fr = sum (out - colmean)^2, conv = row MSE < threshold.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) p1_row_stats(int rows, int n, const float* out, const float* prev,
        const double* colsum, double threshold, double* row_sq, double* row_fr, int* conv) {
    __shared__ double sh[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* o = out + (u64)r * n;
    const float* p = prev + (u64)r * n;
    double sq = 0.0, fr = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double d = (double)(o[i] - p[i]);
        sq += d * d;
        double m = (double)o[i] - colsum[i] / (double)rows;
        fr += m * m;
    }
    sq = block_sum<double>(sq, sh);
    fr = block_sum<double>(fr, sh);
    if (threadIdx.x == 0) {
        row_sq[r] = sq;
        row_fr[r] = fr;
        conv[r] = sq / (double)n < threshold ? 1 : 0;
    }
}

// dout = a (out - prev) - b (out - mean32), mean32 = (float)(colsum / rows).
extern "C" __global__ void __launch_bounds__(ROW_THREADS) p1_grad(int rows, int n, const float* out, const float* prev,
        const double* colsum, float a, float b, float* dout) {
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * n) return;
    int i = (int)(idx % n);
    float m = (float)(colsum[i] / (double)rows);
    dout[idx] = a * (out[idx] - prev[idx]) - b * (out[idx] - m);
}

// Squared-norm partial sums in double, one per block (grid-stride).
extern "C" __global__ void __launch_bounds__(ROW_THREADS) sumsq_partial(long long n, const float* g, double* partial) {
    __shared__ double sh[32];
    double s = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        double v = (double)g[i];
        s += v * v;
    }
    s = block_sum<double>(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(ROW_THREADS) scale_f32(long long n, float* g, float c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] *= c;
}

// ops::Adam::step, elementwise with the same f32 expressions.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) adam_step(long long n, float* p, const float* g, float* m, float* v,
        float step, float bc2) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = 0.9f * m[i] + 0.1f * gi;
    float vi = 0.999f * v[i] + 0.001f * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step * mi / (sqrtf(vi) / bc2 + 1e-8f);
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's Adam literals are ops::ADAM_* as f32, so CPU and GPU
    /// take the same step.
    #[test]
    fn adam_kernel_uses_the_cpu_constants() {
        use crate::ops::{ADAM_BETA1, ADAM_BETA2, ADAM_EPS};
        let f = |v: f64| format!("{:?}f", v as f32);
        for line in [
            format!("{} * m[i] + {} * gi", f(ADAM_BETA1), f(1.0 - ADAM_BETA1)),
            format!(
                "{} * v[i] + {} * gi * gi",
                f(ADAM_BETA2),
                f(1.0 - ADAM_BETA2)
            ),
            format!("/ bc2 + {:e}f)", ADAM_EPS),
        ] {
            assert!(SOURCE.contains(&line), "adam_step lacks {line}");
        }
    }

    #[test]
    fn every_entry_point_is_defined_once_extern_c_with_its_launch_bound() {
        for name in ENTRY_POINTS {
            let bound = match launch_bound(name) {
                WIDE_THREADS => "WIDE_THREADS",
                _ => "ROW_THREADS",
            };
            let def = format!("extern \"C\" __global__ void __launch_bounds__({bound}) {name}(");
            assert_eq!(SOURCE.matches(&def).count(), 1, "kernel {name}");
        }
        assert_eq!(
            SOURCE.matches("__global__").count(),
            ENTRY_POINTS.len(),
            "a kernel is missing from ENTRY_POINTS"
        );
        for k in WIDE_KERNELS {
            assert!(ENTRY_POINTS.contains(&k), "{k}");
        }
        assert!(SOURCE.contains(&format!("#define ROW_THREADS {ROW_THREADS}")));
        assert!(SOURCE.contains(&format!("#define WIDE_THREADS {WIDE_THREADS}")));
    }

    /// Compiles every kernel to a CUBIN for sm_80 and sm_90 with NVRTC 12
    /// and 13 through the runtime's own `nvrtc::Api::compile` (no GPU or
    /// driver needed), and checks ptxas's report: each entry point built,
    /// no spills, no stack, registers within its launch bound. CI installs
    /// both NVRTCs from PyPI and sets NEWLLM_REQUIRE_CUDA_LIBS=1, which
    /// makes a missing library a failure; elsewhere it is skipped.
    #[test]
    fn kernels_compile_to_cubin_with_nvrtc_12_and_13() {
        use crate::models::newllm::gpu::nvrtc::{parse_usage, Api, Target};
        let required = std::env::var("NEWLLM_REQUIRE_CUDA_LIBS").is_ok_and(|v| v == "1");
        for major in [12, 13] {
            let api = match Api::load(&[major]) {
                Ok(a) => a,
                Err(e) if !required => {
                    eprintln!("skipped NVRTC {major}: {e}");
                    continue;
                }
                Err(e) => panic!("NEWLLM_REQUIRE_CUDA_LIBS=1: {e}"),
            };
            let (v, _) = api.version().unwrap();
            assert_eq!(v as u32, major, "{}", api.lib.path);
            for sm in [80, 90] {
                assert!(api.supported_archs().unwrap().contains(&sm));
                let c = match api.compile(SOURCE, Target::Cubin(sm)) {
                    Ok(c) => c,
                    Err(e) => panic!("NVRTC {major}, sm_{sm}: {e}"),
                };
                assert_eq!(&c.image[..4], b"\x7fELF", "NVRTC {major}: not a CUBIN");
                let usage = parse_usage(&c.log);
                eprintln!("NVRTC {major} sm_{sm} ({}):", api.lib.path);
                for k in &usage {
                    eprintln!(
                        "  {:20} {:3} registers, {} B stack, {} B spilled",
                        k.name,
                        k.registers,
                        k.stack_bytes,
                        k.spill_stores + k.spill_loads
                    );
                }
                let mut names: Vec<&str> = usage.iter().map(|k| k.name.as_str()).collect();
                names.sort_unstable();
                let mut want = ENTRY_POINTS.to_vec();
                want.sort_unstable();
                assert_eq!(
                    names, want,
                    "NVRTC {major} sm_{sm}: entry points\n{}",
                    c.log
                );
                for k in &usage {
                    let bound = launch_bound(&k.name);
                    // 64K registers per SM on sm_80 and sm_90, 255 per thread.
                    let most = (65536 / bound).min(255);
                    assert!(
                        k.registers > 0 && k.registers <= most,
                        "{} uses {} registers, over {most} for {bound} threads",
                        k.name,
                        k.registers
                    );
                    assert_eq!(
                        (k.spill_stores, k.spill_loads, k.stack_bytes),
                        (0, 0, 0),
                        "{} spills (NVRTC {major}, sm_{sm})",
                        k.name
                    );
                }
                let ptx = api.compile(SOURCE, Target::Ptx(sm)).unwrap();
                let text = String::from_utf8(ptx.image).unwrap();
                assert!(text.contains(&format!(".target sm_{sm}")), "PTX target");
                for name in ENTRY_POINTS {
                    assert!(text.contains(&format!(".entry {name}(")), "PTX: no {name}");
                }
            }
        }
    }

    #[test]
    fn braces_and_parentheses_balance() {
        for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
            let o = SOURCE.matches(open).count();
            let c = SOURCE.matches(close).count();
            assert_eq!(o, c, "{open} vs {close}");
        }
    }
}
