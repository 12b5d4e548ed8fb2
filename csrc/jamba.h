/* jamba.h -- the C API of the jamba_ext native core.
 *
 * The core is plain C (CPU, C11 + OpenMP) and CUDA C (extern "C" launchers). It never includes a
 * torch/ATen header: every tensor reaches it as a jamba_tensor (pointer, dtype code, sizes and
 * element strides), every CUDA launch gets the device index and a cudaStream_t as void *.
 * Outputs, states and workspaces are allocated by the caller; the core never allocates on a hot path.
 *
 * Glossary (used in every file of csrc/):
 *   B batch   L seqlen   D hidden_size   DI d_inner (mamba_expand * D)   N d_state
 *   K conv width   R dt_rank   E num_experts   TOPK experts per token   F ffn_dim   T tokens (B*L)
 *
 * Conventions:
 *   - strides are in elements (as torch.Tensor.stride() gives them), int64_t;
 *   - every function returns a jamba_status; on error, jamba_last_error() holds a thread-local
 *     message "op: argument: expected ..., got ..." that the Python layer raises unchanged;
 *   - math is fp32 whatever the activation dtype; recurrent states are fp32 unless documented;
 *   - a missing optional tensor has data == NULL.
 */
#ifndef JAMBA_H
#define JAMBA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define JAMBA_MAX_DIMS 4
#define JAMBA_MIN_CONV_WIDTH 2
#define JAMBA_MAX_CONV_WIDTH 4     /* conv taps live in registers on both backends */
#define JAMBA_MAX_D_STATE 256      /* per-channel state lives in registers/shared memory */

/* Status codes: append only, values are part of the ABI. */
typedef enum {
    JAMBA_OK = 0,
    JAMBA_ERR_ARG = 1,      /* bad value of an argument (sizes, ranges) -> ValueError */
    JAMBA_ERR_SHAPE = 2,    /* mismatched shapes or strides            -> ValueError */
    JAMBA_ERR_DTYPE = 3,    /* unsupported dtype                       -> ValueError */
    JAMBA_ERR_CUDA = 4,     /* CUDA runtime error                      -> RuntimeError */
    JAMBA_ERR_UNSUPPORTED = 5 /* backend not built, feature missing    -> RuntimeError */
} jamba_status;

/* dtype codes: append only. */
typedef enum {
    JAMBA_F32 = 0,
    JAMBA_F16 = 1,
    JAMBA_BF16 = 2,
    JAMBA_F64 = 3,
    JAMBA_I32 = 4,
    JAMBA_I64 = 5,
    JAMBA_U8 = 6            /* one byte per element; torch.bool and torch.uint8 (masks) */
} jamba_dtype;

typedef struct {
    void *data;                        /* NULL: tensor absent (optional argument) */
    jamba_dtype dtype;
    int ndim;
    int64_t shape[JAMBA_MAX_DIMS];
    int64_t stride[JAMBA_MAX_DIMS];    /* elements */
} jamba_tensor;

/* Where a CUDA launch goes. Ignored by CPU functions. */
typedef struct {
    int device;                        /* CUDA device ordinal of every tensor of the call */
    void *stream;                      /* cudaStream_t of that device (torch's current stream) */
} jamba_launch;

const char *jamba_last_error(void);
const char *jamba_status_string(jamba_status s);
const char *jamba_dtype_name(jamba_dtype d);
int jamba_has_cuda(void);              /* 1 when the CUDA kernels were compiled in */

/* ------------------------------------------------------------------------------------------------
 * rms_norm / add_rms_norm                                              (csrc/{cpu,cuda}/rms_norm.*)
 *   x, residual, out, residual_out: (rows, dim), unit stride along dim, any row stride; f32|f16|bf16
 *   weight: (dim,), contiguous, f32 or x's dtype.
 *   add_rms_norm (residual != NULL): s = round_xdtype(x + residual), residual_out = s, x := s.
 *   out = round_xdtype( float(round_xdtype(x * rsqrt(mean(x^2) + eps))) * float(weight) )
 *   (HF JambaRMSNorm: statistics in fp32, cast back to the input dtype before the weight product.)
 */
typedef struct {
    jamba_tensor out, x, residual, residual_out, weight;
    double eps;
} jamba_rms_norm_params;

jamba_status jamba_rms_norm_check(const jamba_rms_norm_params *p);
jamba_status jamba_rms_norm_cpu(const jamba_rms_norm_params *p);
jamba_status jamba_rms_norm_cuda(const jamba_rms_norm_params *p, jamba_launch launch);

/* rms_norm_segments: the row is cut at ends[0] < ends[1] < ... < ends[nseg-1] = dim into nseg segments, each
 * RMS-normalised on its own (mean over the segment), same numerics as rms_norm, weight (dim,) = the segments'
 * weights concatenated. One launch for Mamba's dt / B / C norms of a decode step (three segments of x_proj's
 * output). x: (rows, dim), unit stride along dim, any row stride; out (rows, dim), same; 1 <= nseg <= 4. */
#define JAMBA_NORM_MAX_SEGS 4
typedef struct {
    jamba_tensor out, x, weight;
    int64_t nseg;
    int64_t ends[JAMBA_NORM_MAX_SEGS];
    double eps;
} jamba_rms_norm_segments_params;

jamba_status jamba_rms_norm_segments_check(const jamba_rms_norm_segments_params *p);
jamba_status jamba_rms_norm_segments_cpu(const jamba_rms_norm_segments_params *p);
jamba_status jamba_rms_norm_segments_cuda(const jamba_rms_norm_segments_params *p, jamba_launch launch);

/* rms_norm_bwd: gradients of rms_norm and rms_norm_segments (training; add_rms_norm's are built on it by
 *   jamba_ext/ops.py from its saved sum s). Per row m and segment of n elements (one segment: the whole row), x in
 *   fp32, r = rsqrt(mean(x^2) + eps), the forward's roundings passed straight through:
 *     gw_i = dy_i * w_i,  dx_i = r gw_i - x_i r^3 (sum_k gw_k x_k) / n
 *     dweight_i = sum_m dy[m, i] * round_xdtype(x[m, i] r_m)     (fp32, a fixed order: bit-identical run to run)
 *   Shapes: x, dy (rows, dim) f32|f16|bf16 (one dtype), unit stride along dim, any row stride; weight (dim,) f32 or
 *   x's dtype, contiguous; nseg / ends / eps as rms_norm_segments (nseg 1, ends[0] = dim for rms_norm). Outputs: dx
 *   (rows, dim) x's dtype, contiguous; dweight (dim,) f32. ws (CUDA only, absent on the CPU): f32,
 *   jamba_rms_norm_bwd_ws_elems(rows, dim) elements (the rows' r, then per-row-group partial sums of dweight). */
typedef struct {
    jamba_tensor dx, dweight, x, weight, dy, ws;
    int64_t nseg;
    int64_t ends[JAMBA_NORM_MAX_SEGS];
    double eps;
} jamba_rms_norm_bwd_params;

int64_t jamba_rms_norm_bwd_ws_elems(int64_t rows, int64_t dim);
jamba_status jamba_rms_norm_bwd_check(const jamba_rms_norm_bwd_params *p);
jamba_status jamba_rms_norm_bwd_cpu(const jamba_rms_norm_bwd_params *p);
jamba_status jamba_rms_norm_bwd_cuda(const jamba_rms_norm_bwd_params *p, jamba_launch launch);

/* ------------------------------------------------------------------------------------------------
 * causal_conv1d                                                   (csrc/{cpu,cuda}/causal_conv1d.*)
 *   x, out: (B, DI, L) f32|f16|bf16, unit stride along L (B and DI strides free); out contiguous.
 *   weight: (DI, K) f32 or x's dtype, K in 2..4, any strides.   bias: (DI,) or absent.
 *   initial_state: (B, DI, S_in) with S_in >= K-1, or absent (zeros); same dtype as x.
 *   final_state: (B, DI, S_out) or absent; same dtype as x.
 *   History h = concat(zeros, initial_state, x) along time; with t counted in x:
 *     out[b,c,t] = act(bias[c] + sum_{j<K} w[c,j] * h[t - (K-1) + j]),  act = silu or identity
 *     final_state[b,c,:] = the last S_out entries of h (zero-padded on the left).
 */
typedef struct {
    jamba_tensor out, x, weight, bias, initial_state, final_state;
    int silu;
} jamba_causal_conv1d_params;

jamba_status jamba_causal_conv1d_check(const jamba_causal_conv1d_params *p);
jamba_status jamba_causal_conv1d_cpu(const jamba_causal_conv1d_params *p);
jamba_status jamba_causal_conv1d_cuda(const jamba_causal_conv1d_params *p, jamba_launch launch);

/* causal_conv1d_bwd: gradients of causal_conv1d (training)         (csrc/{cpu,cuda}/causal_conv1d_bwd.*)
 *   From dout only (the final_state's gradient is a copy of entries of h, added by jamba_ext/ops.py). With h as
 *   above (x counted from t = 0, the K-1 entries before it from initial_state or zeros), recomputed in fp32:
 *     pre[t] = bias[c] + sum_{j<K} w[c,j] h[t-(K-1)+j],  g[t] = dout[t] * (silu ? s (1 + pre (1 - s)) : 1),
 *     s = sigmoid(pre);  dh[i] = sum_{j<K, 0 <= i+(K-1)-j < L} w[c,j] g[i+(K-1)-j],  -(K-1) <= i < L
 *     dx[b,c,t] = dh[t];  dinitial_state[b,c,S_in-(K-1)+i] = dh[i-(K-1)] (i < K-1), its earlier entries 0
 *     dweight[c,j] = sum_{b,t} g[t] h[t-(K-1)+j],  dbias[c] = sum_{b,t} g[t]   (fp32, a fixed order: bit-identical
 *     run to run)
 *   Shapes: x, dout (B, DI, L) f32|f16|bf16 (one dtype), unit stride along L; weight (DI, K) f32 or x's dtype, any
 *   strides; bias (DI,) or absent; initial_state (B, DI, S_in >= K-1) x's dtype, unit stride along S_in, or absent.
 *   Outputs, contiguous: dx (B, DI, L) x's dtype; dinitial_state (B, DI, S_in) x's dtype, present iff
 *   initial_state is; dweight (DI, K) f32; dbias (DI,) f32. ws: f32, jamba_causal_conv1d_bwd_ws_elems(B, DI, L)
 *   elements, contiguous (CUDA only: per-block partial sums of dweight and dbias; absent on the CPU). */
typedef struct {
    jamba_tensor dx, dinitial_state, dweight, dbias, x, weight, bias, initial_state, dout, ws;
    int silu;
} jamba_causal_conv1d_bwd_params;

int64_t jamba_causal_conv1d_bwd_ws_elems(int64_t B, int64_t DI, int64_t L);
jamba_status jamba_causal_conv1d_bwd_check(const jamba_causal_conv1d_bwd_params *p);
jamba_status jamba_causal_conv1d_bwd_cpu(const jamba_causal_conv1d_bwd_params *p);
jamba_status jamba_causal_conv1d_bwd_cuda(const jamba_causal_conv1d_bwd_params *p, jamba_launch launch);

/* causal_conv1d_update (decode)
 *   x: (B, DI, L) with L >= 1 new tokens (usually 1), any strides; out: (B, DI, L) contiguous;
 *   x's dtype. weight, bias as for causal_conv1d.
 *   conv_state: (B, DI, S) in x's dtype, S >= K-1, unit stride along S, updated in place (so it overlaps neither
 *     itself nor another operand):
 *     for each new token: h = concat(conv_state, x_t); out_t = act(bias + sum_j w[j]*h[S-K+1+j]);
 *     conv_state = last S entries of h.
 */
typedef struct {
    jamba_tensor out, x, conv_state, weight, bias;
    int silu;
} jamba_causal_conv1d_update_params;

jamba_status jamba_causal_conv1d_update_check(const jamba_causal_conv1d_update_params *p);
jamba_status jamba_causal_conv1d_update_cpu(const jamba_causal_conv1d_update_params *p);
jamba_status jamba_causal_conv1d_update_cuda(const jamba_causal_conv1d_update_params *p,
                                             jamba_launch launch);

/* ------------------------------------------------------------------------------------------------
 * selective_scan (Mamba-1 forward)                               (csrc/{cpu,cuda}/selective_scan.*)
 *   u, delta, z, out: (B, DI, L) f32|f16|bf16 (one dtype), unit stride along L; out contiguous.
 *   A: (DI, N) f32.   Bm, Cm: (B, N, L) f32 or u's dtype, any strides.
 *   D, delta_bias: (DI,) f32 or absent.   z absent: no gating.
 *   initial_state: (B, DI, N) f32 or absent (zeros).   last_state: (B, DI, N) f32 or absent.
 *   dt = delta + delta_bias; if delta_softplus: dt = dt <= 20 ? log1p(exp(dt)) : dt
 *   h[t] = exp(dt[t] * A) * h[t-1] + dt[t] * Bm[t] * u[t]        (h: (N,) per (b, c), fp32)
 *   y[t] = sum_n h[t,n] * Cm[t,n] + D * u[t];   if z: y *= z * sigmoid(z);   out = round(y)
 */
typedef struct {
    jamba_tensor out, u, delta, A, Bm, Cm, D, z, delta_bias, initial_state, last_state;
    int delta_softplus;
} jamba_selective_scan_params;

jamba_status jamba_selective_scan_check(const jamba_selective_scan_params *p);
jamba_status jamba_selective_scan_cpu(const jamba_selective_scan_params *p);
jamba_status jamba_selective_scan_cuda(const jamba_selective_scan_params *p, jamba_launch launch);

/* selective_scan_bwd: the gradients of selective_scan (training)        (csrc/{cpu,cuda}/selective_scan_bwd.*)
 *   u, delta, A, Bm, Cm, D, z, delta_bias, initial_state, delta_softplus: the forward's inputs, as above.
 *   dout: (B, DI, L) u's dtype, unit stride along L: the gradient of out.
 *   dlast_state: (B, DI, N) f32, unit stride along N, or absent (zero): the gradient of last_state.
 *   Outputs, all contiguous:
 *     du, ddelta: (B, DI, L) u's dtype;  dz: (B, DI, L) u's dtype, given iff z is;
 *     dBm, dCm: (B, N, L) f32;  dA: (DI, N) f32;  dD, ddelta_bias: (DI,) f32 or absent (not computed);
 *     dinitial_state: (B, DI, N) f32 or absent.
 *   ws: f32 workspace of at least jamba_selective_scan_bwd_ws_elems(B, DI, L, N) elements, contiguous (CUDA only;
 *   the CPU path allocates its own and ignores it).
 * With x = delta + delta_bias, dt = softplus(x) (or x), a[t] = exp(dt[t] A), y0[t] = sum_n C[t,n] h[t,n] + D u[t],
 * gz = silu(z) (1 without z), g[t] = dL/dh[t] = a[t+1] g[t+1] + dout[t] gz[t] C[t]  (g[L-1] adds dlast_state):
 *   dz    = dout y0 sigmoid(z) (1 + z (1 - sigmoid(z)));   dD = sum_{b,t} dout gz u
 *   du    = dout gz D + sum_n g dt B;   ddt = sum_n g (B u + h[t-1] a A);   ddelta = ddt * (softplus ? dt'(x) : 1)
 *   dA[n] = sum_{b,t} g h[t-1] a dt;    dB[t,n] = sum_c g dt u;   dC[t,n] = sum_c dout gz h[t]
 *   ddelta_bias = sum_{b,t} ddelta;     dinitial_state = a[0] g[0]
 * Every sum runs in a fixed order (no atomics): the gradients are bit-identical run to run. CUDA: N <= 32.
 */
typedef struct {
    jamba_tensor u, delta, A, Bm, Cm, D, z, delta_bias, initial_state, dout, dlast_state;
    jamba_tensor du, ddelta, dz, dBm, dCm, dA, dD, ddelta_bias, dinitial_state, ws;
    int delta_softplus;
} jamba_selective_scan_bwd_params;

#define JAMBA_SCAN_BWD_CUDA_MAX_N 32
int64_t jamba_selective_scan_bwd_ws_elems(int64_t B, int64_t DI, int64_t L, int64_t N);
jamba_status jamba_selective_scan_bwd_check(const jamba_selective_scan_bwd_params *p);
jamba_status jamba_selective_scan_bwd_cpu(const jamba_selective_scan_bwd_params *p);
jamba_status jamba_selective_scan_bwd_cuda(const jamba_selective_scan_bwd_params *p, jamba_launch launch);

/* selective_state_update (one decode step)
 *   state: (B, DI, N) f32|f16|bf16, unit stride along N, updated in place (math in fp32; it overlaps neither itself
 *     nor another operand).
 *   x, dt, z, out: (B, DI), unit stride along DI (batch stride free); out contiguous.
 *   A: (DI, N) f32.   Bm, Cm: (B, N), any strides, f32 or x's dtype.   D, dt_bias: (DI,) f32 or absent.
 *   Same math as one step of selective_scan, with dt_bias / dt_softplus for delta_bias / softplus.
 */
typedef struct {
    jamba_tensor out, state, x, dt, A, Bm, Cm, D, z, dt_bias;
    int dt_softplus;
} jamba_selective_state_update_params;

jamba_status jamba_selective_state_update_check(const jamba_selective_state_update_params *p);
jamba_status jamba_selective_state_update_cpu(const jamba_selective_state_update_params *p);
jamba_status jamba_selective_state_update_cuda(const jamba_selective_state_update_params *p,
                                               jamba_launch launch);

/* ------------------------------------------------------------------------------------------------
 * MoE: routing and fused expert dispatch                                     (csrc/{cpu,cuda}/moe.*)
 * (section owned by the MoE family; see the comments in csrc/cpu/moe.c)
 */
/* JAMBA_MOE_API_BEGIN */
/* Jamba routing (jamba-architecture.md 4.4): p = softmax_fp32(logits) over all E experts; the TOPK largest
 * p (ties: lower expert id first) with NO renormalisation. The permutation groups the T*TOPK token slots
 * (slot s = t*TOPK + j) by expert, stable: within an expert, slots keep token order.
 *   sorted_slots[expert_offsets[e] .. expert_offsets[e+1])  = slots routed to expert e, ascending
 *   counts[e] = expert_offsets[e+1] - expert_offsets[e];  expert_offsets[0] = 0
 *   sorted_slots[expert_offsets[E] .. T*TOPK)               = slots whose id is outside [0, E) (ascending),
 *   so sorted_slots is always a full permutation of 0 .. T*TOPK-1 (a gather with it never goes out of range).
 * Slots are int32: T*TOPK must stay below 2^31. */
#define JAMBA_MOE_MAX_EXPERTS 1024  /* CUDA routing keeps one softmax row per warp in shared memory */

typedef struct {
    jamba_tensor weights;         /* out (T, TOPK) f32, contiguous: the top-k softmax probabilities */
    jamba_tensor expert_ids;      /* out (T, TOPK) i32, contiguous: descending probability */
    jamba_tensor expert_offsets;  /* out (E+1,) i32, or absent (data NULL): no permutation */
    jamba_tensor sorted_slots;    /* out (T*TOPK,) i32; given iff expert_offsets is */
    jamba_tensor logits;          /* (T, E) f32|f16|bf16 (f64 on CPU), unit stride along E */
    int64_t top_k;                /* 1 <= TOPK <= E */
} jamba_moe_route_params;

jamba_status jamba_moe_route_check(const jamba_moe_route_params *p);
jamba_status jamba_moe_route_cpu(const jamba_moe_route_params *p);
jamba_status jamba_moe_route_cuda(const jamba_moe_route_params *p, jamba_launch launch);

/* The permutation alone, from given expert ids (ids outside [0, E) go to the tail, see above). */
typedef struct {
    jamba_tensor expert_offsets;  /* out (E+1,) i32 */
    jamba_tensor sorted_slots;    /* out (T*TOPK,) i32 */
    jamba_tensor expert_ids;      /* (T, TOPK) i32, contiguous */
    int64_t num_experts;          /* E >= 1 */
} jamba_moe_permute_params;

jamba_status jamba_moe_permute_check(const jamba_moe_permute_params *p);
jamba_status jamba_moe_permute_cpu(const jamba_moe_permute_params *p);
jamba_status jamba_moe_permute_cuda(const jamba_moe_permute_params *p, jamba_launch launch);

/* Fused expert dispatch (CUDA; the CPU build runs its GEMMs in torch, see jamba_ext/ops.py, and calls
 * jamba_moe_combine_cpu). With dt = x's dtype, round() = rounding to dt (HF semantics in model dtype):
 *   for each slot s = t*TOPK + j routed to e = expert_ids[s]  (position p in sorted_slots):
 *     g = round(x_t . w_gate_up[e, f, :]),  u = round(x_t . w_gate_up[e, F+f, :])      f < F
 *     act[p, f] = round(round(silu(g)) * u)
 *     slot_out[s, :] = round( round(act[p, :] . w_down[e, :, :]^T) * round(weights[s]) )
 *   out[t, :] = slot_out[t*TOPK] (+ slot_out[t*TOPK+1] ...), rounded after each add, j ascending.
 *   A token with an id outside [0, E) gets NaN (the device cannot raise without a host sync).
 * Shapes: x (T, H) contiguous; out (T, H) contiguous; weights (T, TOPK) f32 contiguous;
 *   expert_ids (T, TOPK) i32; expert_offsets (E+1,), sorted_slots (T*TOPK,) i32 (from route/permute);
 *   w_gate_up (E, 2F, H) and w_down (E, H, F) contiguous, x's dtype (gate rows first: transformers 5.x);
 *   workspaces act (T*TOPK, F) and slot_out (T*TOPK, H), contiguous, x's dtype; optional workspace sched (>= 2,)
 *   int32, any contents (the tile counters of the persistent Hopper GEMMs, zeroed on the device before use;
 *   without it impl wgmma runs its non-persistent kernel). */
typedef enum {
    JAMBA_MOE_IMPL_AUTO = 0,      /* by size and dtype */
    JAMBA_MOE_IMPL_MMA = 1,       /* tensor-core grouped GEMM (bf16/f16, H and F multiples of 8) */
    JAMBA_MOE_IMPL_GEMV = 2,      /* decode: weight-streaming GEMVs up to 4 tokens, then an mma kernel, split-K
                                     (bf16/f16, H, F % 8 == 0) */
    JAMBA_MOE_IMPL_SIMT = 3,      /* any dtype and size: fp32 CUDA-core tiles (slow; fp32 inputs, odd sizes) */
    JAMBA_MOE_IMPL_COMBINE = 4,   /* reserved (was: the combine alone; the torch-GEMM path now uses
                                     jamba_moe_combine below): rejected */
    JAMBA_MOE_IMPL_MMA64 = 5,     /* MMA with 64-deep k-tiles, 3 stages (96 KB shared) */
    JAMBA_MOE_IMPL_MMA256 = 6,    /* MMA with 256 W rows per block: 64x64 warp tiles (96 KB shared) */
    JAMBA_MOE_IMPL_WGMMA = 7      /* Hopper wgmma GEMM fed by TMA, 128x256x64 tiles (sm_90 only; x gathered into
                                     sorted order in slot_out first; csrc/cuda/moe_wgmma.cu) */
} jamba_moe_impl;

typedef struct {
    jamba_tensor out, x, weights, expert_ids, expert_offsets, sorted_slots, w_gate_up, w_down;
    jamba_tensor act, slot_out;   /* workspaces */
    jamba_tensor sched;           /* optional workspace (>= 2,) int32 */
    int impl;                     /* jamba_moe_impl */
} jamba_moe_experts_params;

jamba_status jamba_moe_experts_check(const jamba_moe_experts_params *p);
jamba_status jamba_moe_experts_cpu(const jamba_moe_experts_params *p);  /* always an error: the CPU runs the
                                                                         torch-GEMM path (jamba_ext/ops.py) */
jamba_status jamba_moe_experts_cuda(const jamba_moe_experts_params *p, jamba_launch launch);

/* The pieces around torch GEMMs (the CPU path, and on CUDA the torch._grouped_mm engine of jamba_ext/ops.py):
 * silu_mul: the SwiGLU activation of a fused gate/up projection, HF's roundings in the dtype dt of gate_up:
 *   out[m, f] = round(round(silu(g)) * u),  g = gate_up[m, f], u = gate_up[m, F + f], f < F,
 *   silu(g) = g / (1 + exp(-g)) in fp32 (CPU: expf and an IEEE division, as torch; CUDA: the fast exp and
 *   division, a few fp32 ulp: one unit of bf16/f16 apart from torch in ~1e-4 of the elements).
 * Shapes: gate_up (M, 2F) f32|f16|bf16, unit stride along the last axis, any row stride;
 *   out (M, F) contiguous, gate_up's dtype. */
typedef struct {
    jamba_tensor out, gate_up;
} jamba_silu_mul_params;

jamba_status jamba_silu_mul_check(const jamba_silu_mul_params *p);
jamba_status jamba_silu_mul_cpu(const jamba_silu_mul_params *p);
jamba_status jamba_silu_mul_cuda(const jamba_silu_mul_params *p, jamba_launch launch);

/* silu_mul_bwd: the gradient of silu_mul (training; the roundings of the forward are passed straight through):
 *   s = sigmoid(g), dgate_up[m, f] = round(dout[m, f] * u * s * (1 + g * (1 - s))),
 *   dgate_up[m, F + f] = round(dout[m, f] * g * s),  g = gate_up[m, f], u = gate_up[m, F + f], fp32 math
 *   (CPU: expf and an IEEE division; CUDA: the fast exp and division, a few fp32 ulp apart).
 * Shapes: gate_up (M, 2F) f32|f16|bf16 and dout (M, F) of its dtype, unit stride along the last axis, any row
 *   stride; dgate_up (M, 2F) contiguous, gate_up's dtype, overlapping neither input. */
typedef struct {
    jamba_tensor dgate_up, gate_up, dout;
} jamba_silu_mul_bwd_params;

jamba_status jamba_silu_mul_bwd_check(const jamba_silu_mul_bwd_params *p);
jamba_status jamba_silu_mul_bwd_cpu(const jamba_silu_mul_bwd_params *p);
jamba_status jamba_silu_mul_bwd_cuda(const jamba_silu_mul_bwd_params *p, jamba_launch launch);

/* moe_combine: the weighted combine of expert outputs kept in SORTED order (row p of y belongs to slot
 * sorted_slots[p], as the grouped GEMMs leave them):
 *   out[t, :] = round(...round(o_0 + o_1)...),  o_j = round(y[pos(s), :] * round(weights[s])),  s = t*TOPK + j,
 *   pos(s) = the p with sorted_slots[p] == s (written to the workspace slot_pos first).
 *   A token with an id outside [0, E) gets NaN on CUDA (no host sync); the CPU returns an error.
 * Shapes: y (T*TOPK, H) contiguous, x's dtype; out (T, H) contiguous, y's dtype; weights (T, TOPK) f32
 *   contiguous; expert_ids (T, TOPK) i32 contiguous; sorted_slots (T*TOPK,) i32 (a permutation, from
 *   route / permute); slot_pos (T*TOPK,) i32 workspace. */
typedef struct {
    jamba_tensor out, y, weights, expert_ids, sorted_slots, slot_pos;
    int64_t num_experts;          /* E >= 1 */
} jamba_moe_combine_params;

jamba_status jamba_moe_combine_check(const jamba_moe_combine_params *p);
jamba_status jamba_moe_combine_cpu(const jamba_moe_combine_params *p);
jamba_status jamba_moe_combine_cuda(const jamba_moe_combine_params *p, jamba_launch launch);
/* moe_grad_rows: where the MoE backward's grouped GEMMs start (training; jamba_ext/ops.py's torch._grouped_mm
 * backward): per sorted position p, with s = sorted_slots[p] and t = s / TOPK,
 *   dys[p, :] = round(round(go[t, :]) * round(weights[s]))     dL/d(expert output), the forward's rounding of the weight
 *   dws[p] = sum_h go[t, h] * y[p, h]  in fp32                   the routing weight's gradient (when y is given)
 * (round() = rounding to go's dtype.) One pass over go's gathered rows and y; nothing else is materialised.
 * An entry of sorted_slots outside [0, T*TOPK): the CPU returns an error; CUDA gives a NaN row and a NaN dws.
 * Shapes: go (T, H) f32|f16|bf16, unit stride along H, any row stride; weights (T, TOPK) f32 contiguous;
 *   sorted_slots (T*TOPK,) i32 contiguous; y (T*TOPK, H) go's dtype, contiguous, or absent; dys (T*TOPK, H) go's
 *   dtype contiguous; dws (T*TOPK,) f32 contiguous, present exactly when y is. Outputs overlap no input. */
typedef struct {
    jamba_tensor dys, dws, go, y, weights, sorted_slots;
} jamba_moe_grad_rows_params;

jamba_status jamba_moe_grad_rows_check(const jamba_moe_grad_rows_params *p);
jamba_status jamba_moe_grad_rows_cpu(const jamba_moe_grad_rows_params *p);
jamba_status jamba_moe_grad_rows_cuda(const jamba_moe_grad_rows_params *p, jamba_launch launch);
/* JAMBA_MOE_API_END */

/* JAMBA_FP8_API_BEGIN
 * ------------------------------------------------------------------------------------------------
 * fp8 weights (weight-only quantisation of the MoE experts)        (csrc/cpu/fp8.c, csrc/cuda/fp8.cu, moe_gemv.cu)
 *   q: float8 e4m3 bit patterns as u8 (OCP "e4m3fn" = torch.float8_e4m3fn: sign, 4 exponent bits with bias 7,
 *   3 mantissa bits, subnormals, no infinities, S.1111.111 = NaN); scale f32, one per row:
 *     w[r, k] = e4m3(q[r, k]) * scale[r]
 *
 * dequant_fp8: out[r, k] = round_out(e4m3(q[r, k]) * scale[r]) (the product in fp32)
 *   out (R, K) f32|f16|bf16 and q (R, K) u8, contiguous; scale (R,) f32, contiguous; group_offsets (G+1,) i32,
 *   optional (G >= 1 dividing R): rows [g R/G, (g+1) R/G) are left unwritten when group_offsets[g+1] ==
 *   group_offsets[g] (MoE: moe_route's expert offsets, so only the touched experts are converted).
 */
typedef struct {
    jamba_tensor out, q, scale, group_offsets;
} jamba_dequant_fp8_params;

jamba_status jamba_dequant_fp8_check(const jamba_dequant_fp8_params *p);
jamba_status jamba_dequant_fp8_cpu(const jamba_dequant_fp8_params *p);
jamba_status jamba_dequant_fp8_cuda(const jamba_dequant_fp8_params *p, jamba_launch launch);

/* moe_experts_fp8: moe_experts (JAMBA_MOE_API) with fp8 expert weights, per slot s = t*TOPK + j
 * of expert e = expert_ids[s] (fp32 sums, the row's scale applied to the sum):
 *     g = scale_gu[e, f] * sum_k e4m3(w_gate_up[e, f, k]) x[t, k],  u = the same with row F + f
 *     act[s, f] = round(round(silu(round(g))) * round(u))                         (act: a workspace, slot order)
 *     y = round(scale_d[e, h] * sum_f e4m3(w_down[e, h, f]) act[s, f]);  o_s = round(y * round(weights[s]))
 *     out[t, h] = o_{t*TOPK} (+ o_{t*TOPK+1} ...), rounded after each add, j ascending
 *   An id outside [0, E): the token's row is NaN on CUDA; the CPU returns JAMBA_ERR_ARG.
 * Shapes: out, x (T, H) contiguous, f32|f16|bf16; weights (T, TOPK) f32 and expert_ids (T, TOPK) i32, contiguous;
 *   w_gate_up (E, 2F, H) and w_down (E, H, F) u8, contiguous (gate rows first); s_gate_up (E, 2F) and s_down (E, H)
 *   f32, contiguous; act (T*TOPK, F) x's dtype, contiguous (a workspace: slot order, or sorted order with the
 *   permutation). Optional, all three or none: expert_offsets (E+1,) and sorted_slots (T*TOPK,) i32 (moe_route's
 *   permutation) and slot_out (T*TOPK, H) x's dtype (a workspace).
 *   CUDA: bf16 / f16, H and F multiples of 16, 16-byte aligned data. Without the permutation T <=
 *   JAMBA_FP8_GEMV_MAX_TOKENS: weight-streaming GEMVs, a weight row read once per slot that takes its expert
 *   (decode); with it any T: the ring kernels of moe_experts' decode engine on the e4m3 bytes, each weight row read
 *   once per pass over 8-32 of its expert's tokens (jamba_ext/ops.py uses them up to 512 tokens and dequantizes the
 *   touched experts for moe_experts' prefill GEMMs above). CPU: any T; the permutation is checked and not needed.
 * fp8 activations (W8A8): optional, all four or none, and only with the permutation: act8 (T*TOPK, F) u8, x_scale and
 *   act_scale (T*TOPK,) f32, sched (>= 2,) i32, contiguous workspaces. Given, x and act are quantized per row before
 *   their GEMM, s_x = amax|row| / 448 (1 for a zero row), q = e4m3_satfinite(round_f32(v * round_f32(448 / amax))),
 *   and the GEMMs multiply e4m3 by e4m3 (fp32 accumulation in the tensor cores' order):
 *     g = scale_gu[e, f] * s_x[s] * sum_k e4m3(w_gate_up[e, f, k]) qx[s, k]   (u likewise), act as above,
 *     y = round(scale_d[e, h] * s_act[s] * sum_f e4m3(w_down[e, h, f]) qact[s, f])
 *   (the two scales multiplied first). CUDA on Hopper only (moe_wgmma_gemm_q8); elsewhere JAMBA_ERR_UNSUPPORTED. */
#define JAMBA_FP8_GEMV_MAX_TOKENS 32

typedef struct {
    jamba_tensor out, x, weights, expert_ids, w_gate_up, s_gate_up, w_down, s_down, act;
    jamba_tensor expert_offsets, sorted_slots, slot_out; /* optional (data NULL): the permutation, a workspace */
    jamba_tensor act8, x_scale, act_scale, sched;        /* optional (data NULL): fp8 activations (W8A8) */
} jamba_moe_experts_fp8_params;

jamba_status jamba_moe_experts_fp8_check(const jamba_moe_experts_fp8_params *p);
jamba_status jamba_moe_experts_fp8_cpu(const jamba_moe_experts_fp8_params *p);
jamba_status jamba_moe_experts_fp8_cuda(const jamba_moe_experts_fp8_params *p, jamba_launch launch);
/* JAMBA_FP8_API_END */

/* ------------------------------------------------------------------------------------------------
 * gemv: out = x @ weight^T (+ bias) for a few rows of x: the decode step's projections   (csrc/{cpu,cuda}/gemv.*)
 *   x (M, K), weight (N, K), out (M, N): unit stride along the last dim, any row stride; f32|f16|bf16, one dtype
 *   for the three. bias (N,), contiguous, x's dtype or f32; optional.
 *   out[m, n] = round_x( sum_k float(x[m, k]) * float(weight[n, k]) + float(bias[n]) ), fp32 sums in a fixed order
 *   (deterministic). Any M is valid; the CUDA kernel reads the weight once per 8 rows of x, so it is meant for
 *   M <= 8 (larger M belongs to a GEMM).
 */
typedef struct {
    jamba_tensor out, x, weight, bias;
} jamba_gemv_params;

jamba_status jamba_gemv_check(const jamba_gemv_params *p);
jamba_status jamba_gemv_cpu(const jamba_gemv_params *p);
jamba_status jamba_gemv_cuda(const jamba_gemv_params *p, jamba_launch launch);

/* ------------------------------------------------------------------------------------------------
 * decode_attention: softmax attention of a few query rows per KV head over a KV cache (decode steps; GQA: the R
 * query heads sharing a KV head, for one new token, are its R rows)                (csrc/{cpu,cuda}/decode_attention.*)
 *   q, out (B, HKV, R, D); k, v (B, HKV, S, D): unit stride along D, any other strides; f32|f16|bf16, one dtype.
 *   key_mask (B, S) bool, any strides, optional: 1 = the key takes part (SDPA's boolean mask), absent = every key.
 *   out[b, h, r] = round_x( sum_j e_j v[b, h, j] / sum_j e_j ), e_j = exp(s_j - max_j s_j),
 *   s_j = scale * dot(q[b, h, r], k[b, h, j]) over the keys that take part, fp32 throughout; 0 when none does.
 *   CUDA workspace (unused on the CPU, may be absent there): part_ml (B * HKV, P, R, 2) f32 and part_o
 *   (B * HKV, P, R, D) f32, contiguous, for P >= 1 splits of S (the caller picks P; each split's running max / sum
 *   and output).
 *   CUDA: D in {64, 128, 256} and R <= 8 (other sizes: JAMBA_ERR_UNSUPPORTED).
 */
typedef struct {
    jamba_tensor out, q, k, v, key_mask, part_ml, part_o;
    double scale;
} jamba_decode_attention_params;

jamba_status jamba_decode_attention_check(const jamba_decode_attention_params *p);
jamba_status jamba_decode_attention_cpu(const jamba_decode_attention_params *p);
jamba_status jamba_decode_attention_cuda(const jamba_decode_attention_params *p, jamba_launch launch);

/* ------------------------------------------------------------------------------------------------
 * mamba_inner_step: a Mamba layer's decode step between in_proj and out_proj, with Jamba's dt / B / C norms
 * (the decode-step twin of mamba_ssm's mamba_inner_fn without the two projections)  (csrc/{cpu,cuda}/mamba_step.*)
 *   x, z (B, DI): the two halves of in_proj's output, unit stride along DI, any batch stride; f32|f16|bf16 = T.
 *   conv_state (B, DI, S) T, S >= K-1, unit stride along S, updated in place; conv_weight (DI, K) T, K in 2..4, rows
 *   contiguous; conv_bias (DI,) T or absent. xproj_weight (NO, DI) T, NO = R + 2N, contiguous; norm_weight (NO,) T
 *   (the dt, B and C norms' weights concatenated); dtproj_weight (DI, R) T, contiguous (no bias: dt_bias below).
 *   A (DI, N) f32; D, dt_bias (DI,) f32; ssm_state (B, DI, N) f32 contiguous, updated in place; out (B, DI) T
 *   contiguous.
 *   ws: (B * (2 DI + 2 NO),) T contiguous workspace (the intermediates: xc, xdbl, the normalised xdbl, delta).
 *   work: int64 CUDA workspace of at least jamba_mamba_inner_step_work_elems(DI, B, NO) elements, zero before its
 *   first use and kept between calls (it holds a grid barrier's counter), not used by two calls at once; absent:
 *   the CUDA path runs the five ops below one launch each (as on the CPU).
 * Math, exactly the chain of the existing ops (each rounding to T included):
 *   xc    = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, silu)          (B, DI)
 *   xdbl  = gemv(xc, xproj_weight)                                                      (B, NO)
 *   n     = rms_norm_segments(xdbl, norm_weight, ends {R, R + N, NO}, eps)               (B, NO)
 *   delta = gemv(n[:, :R], dtproj_weight)                                               (B, DI)
 *   out   = selective_state_update(ssm_state, xc, delta, A, n[:, R:R+N], n[:, R+N:], D, z, dt_bias, softplus)
 * CUDA with work: one kernel with two grid-wide barriers (mamba_step.cu) where its limits hold (see there:
 * B <= 2, N in {4, 8, 16}, R <= 256, NO <= 320, 16-byte aligned weights and state, every block resident at once),
 * else the five launches; the fused kernel's x_proj and dt_proj sums run in another order than gemv's, so its
 * results may differ from the chain's in the last bit of T.
 */
typedef struct {
    jamba_tensor out, x, z, conv_state, conv_weight, conv_bias, xproj_weight, norm_weight, dtproj_weight, A, D, dt_bias,
        ssm_state, ws, work;
    int64_t dt_rank;
    double eps;
} jamba_mamba_inner_step_params;

int64_t jamba_mamba_inner_step_work_elems(int64_t DI, int64_t B, int64_t NO);
jamba_status jamba_mamba_inner_step_check(const jamba_mamba_inner_step_params *p);
jamba_status jamba_mamba_inner_step_cpu(const jamba_mamba_inner_step_params *p);
jamba_status jamba_mamba_inner_step_cuda(const jamba_mamba_inner_step_params *p, jamba_launch launch);
/* the five ops' parameters over p's tensors and workspace (shared by both backends) */
typedef struct {
    jamba_causal_conv1d_update_params conv;
    jamba_gemv_params xproj, dtproj;
    jamba_rms_norm_segments_params norm;
    jamba_selective_state_update_params ssu;
} jamba_mamba_inner_step_parts;
void jamba_mamba_inner_step_split(const jamba_mamba_inner_step_params *p, jamba_mamba_inner_step_parts *q);

/* ------------------------------------------------------------------------------------------------
 * cross_entropy / cross_entropy_bwd: the language-model loss per row of logits (training)  (csrc/{cpu,cuda}/cross_entropy.*)
 *   logits (N, V) f32|f16|bf16, unit stride along V, any row stride; target (N,) i64 or i32, contiguous;
 *   loss, lse (N,) f32 contiguous; dloss (N,) f32 contiguous; dlogits (N, V) contiguous, logits' dtype,
 *   overlapping no input. V >= 1.
 *   lse[n] = log sum_v exp(x[n, v]) (fp32 math, the maximum subtracted first), loss[n] = lse[n] - x[n, target[n]];
 *   a row whose target is ignore_index gets loss 0 (and its lse).
 *   dlogits[n, v] = round_x( (exp(x[n, v] - lse[n]) - [v == target[n]]) * dloss[n] ), 0 on the ignored rows.
 *   A target outside [0, V) that is not ignore_index: the CPU returns an error; CUDA (no host sync) gives a NaN loss
 *   and a NaN row of dlogits.
 *   CUDA: one block per row, one read of the logits in the forward, one read and one write in the backward (the exps
 *   on the special-function unit: a few fp32 ulp apart from the CPU's expf).
 */
typedef struct {
    jamba_tensor loss, lse, logits, target;
    int64_t ignore_index;
} jamba_cross_entropy_params;

typedef struct {
    jamba_tensor dlogits, logits, target, lse, dloss;
    int64_t ignore_index;
} jamba_cross_entropy_bwd_params;

jamba_status jamba_cross_entropy_check(const jamba_cross_entropy_params *p);
jamba_status jamba_cross_entropy_cpu(const jamba_cross_entropy_params *p);
jamba_status jamba_cross_entropy_cuda(const jamba_cross_entropy_params *p, jamba_launch launch);
jamba_status jamba_cross_entropy_bwd_check(const jamba_cross_entropy_bwd_params *p);
jamba_status jamba_cross_entropy_bwd_cpu(const jamba_cross_entropy_bwd_params *p);
jamba_status jamba_cross_entropy_bwd_cuda(const jamba_cross_entropy_bwd_params *p, jamba_launch launch);

/* ------------------------------------------------------------------------------------------------
 * sample_rows: one token per row of logits, each row with its own sampling settings (a server's batch of requests,
 * jamba_ext.row_sampling)  (csrc/{cpu,cuda}/sample_rows.*)
 *   logits (R, V) f32|f16|bf16, unit stride along V, any row stride; params (R, 7) f32 contiguous, per row:
 *   temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty; seen (R, V) u8
 *   contiguous or absent; counts (R, V) i32 contiguous or absent; tokens (R,) i64 and tau (R,) f32 contiguous,
 *   overlapping no input. R >= 0, V >= 1. seed, offset: the draws' Philox key and counter (a new offset a step).
 *   Per row r and column v: x = logit; seen[r, v]: x = x < 0 ? x * rep : x / rep; counts c = counts[r, v]:
 *   x = x - freq * c - (c > 0 ? pres : 0). A NaN x counts as -inf (never the argmax, never kept while the row has a
 *   finite x); a row whose x are all -inf / NaN gives tokens[r] = 0 and tau[r] = -inf, greedy or not.
 *   temperature <= 0 (greedy): tokens[r] = the first argmax of x, tau[r] = its x.
 *   else s = x / temperature, m = max s, e = expf(s - m), key(s) = the order-preserving u32 of s, and kept:
 *     key >= K_k: top_k in [1, V): K_k is the top_k-th largest key (ties at it kept); else every column;
 *     key >= K_p: top_p < 1: among the columns kept by top_k, K_p is the smallest key whose mass of keys <= it
 *       exceeds floor((1 - top_p) * Z) (mass: e in fixed point, floor(e * 2^40), summed exactly as u64; Z: the
 *       mass of all those columns): transformers' top_p, which drops the least likely tokens while their summed
 *       probability stays <= 1 - top_p;
 *     e >= min_p when min_p > 0.
 *     tokens[r] = the first argmax over kept columns of s - log(-log(u)), u = (philox(seed; v, r, offset) >> 8 +
 *     0.5) / 2^24 rounded to f32 and at most 1 - 2^-24, Philox4x32-10's first word (a Gumbel-max draw: token v with
 *     probability softmax(s)[v] renormalised over the kept columns; the noise -log(-log(u)) is below 16.64);
 *     tau[r] = the smallest kept s (the kept columns are those with s >= tau[r]).
 *     With rng (R, 2) i64 given, row r draws philox(rng[r, 0]; v, 0, rng[r, 1]) instead: its draws depend on its
 *     own key and counter only, not on its place in the batch (a request's own seed; seed and offset unused).
 *   The CPU and CUDA keep the same columns and draw the same u; their expf and logf may differ by ulps.
 */
typedef struct {
    jamba_tensor tokens, tau, logits, params, seen, counts;
    jamba_tensor ws;                 /* CUDA: f32, >= jamba_sample_rows_ws_elems(R, V) elements (the CPU: unused) */
    jamba_tensor rng;                /* (R, 2) i64 contiguous or absent: each row's own Philox key and counter */
    uint64_t seed, offset;
} jamba_sample_rows_params;

int64_t jamba_sample_rows_ws_elems(int64_t R, int64_t V);

jamba_status jamba_sample_rows_check(const jamba_sample_rows_params *p);
jamba_status jamba_sample_rows_cpu(const jamba_sample_rows_params *p);
jamba_status jamba_sample_rows_cuda(const jamba_sample_rows_params *p, jamba_launch launch);

#ifdef __cplusplus
}
#endif
#endif /* JAMBA_H */
