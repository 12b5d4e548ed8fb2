/* moe_gemv.cu -- the MoE experts of a few tokens on CUDA (decode): two weight-streaming GEMV kernels.
 *
 * Called by experts_launch (moe.cu) for impl gemv / auto when T <= MG_MAX_TOKENS; same math and roundings as the
 * other engines (moe.cuh: moe_act, moe_scaled; the combine's order), fp32 sums in a fixed order (deterministic;
 * the order differs from the other engines', so results agree to rounding, not bit for bit).
 *
 * Kernels (8 warps a block; the dot-product loop is gemv_warp_dot of gemv.cuh: 16-byte weight loads with
 * L1::no_allocate, U = 4 chunks' loads in flight per warp, kw warps along the reduction, slices added in order):
 *   moe_gemv_gate_up_kernel<T>: x (T, H) contiguous, w_gate_up (E, 2F, H) (gate rows [0, F), up rows [F, 2F)),
 *     act (T*TOPK, F) in SLOT order (row s: slot s; a workspace only these two kernels read). grid (T*TOPK,
 *     ceil(F / NR)), NR = 8 / kw outputs a block: warp group q of the block computes output f = by NR + q of slot
 *     s = bx (the slots of one row block are neighbours in the launch order, so an expert's rows that several slots
 *     read can come from L2), i.e. the gate row f and the up row F + f of expert ids[s] against x row s / TOPK;
 *     act[s, f] = moe_act(gate, up). Slots with an id outside [0, E) are skipped.
 *   moe_gemv_down_kernel<T>: act as above, w_down (E, H, F), out (T, H) contiguous, weights (T*TOPK) f32 slot order.
 *     grid (T, ceil(H / (2 NR))): warp group q computes rows h0 + 2q, h0 + 2q + 1 of w_down[ids[s]] against act
 *     row s for each slot s = t TOPK + j in turn (the weights of all of the token's slots stream through the same
 *     warps, no wait between slots); out[t, h] = round(...round(o_0 + o_1)...), o_j = moe_scaled(y_j, weights[s])
 *     (the combine of moe_combine_kernel, fused); NaN where an id of the token is out of range. A weight row is
 *     read once per slot that takes its expert (from DRAM or, when the slots' blocks run close enough, from L2): fine
 *     while the tokens are few (MG_MAX_TOKENS).
 * Why: at one token the op is a read of 2 experts x 3 matrices (705 MB at Jamba-v0.1 sizes). The shared-memory
 * ring + mma kernel that ran it (moe_decode_persist_kernel, since removed) streamed at ~85% of the copy-bandwidth
 * floor (195.6 us; gate_up 122, down 64, combine 2); these kernels at 98% (168.7 us; 105 + 61),
 * benchmarks/results/moe_t1_741609f.log.
 * In turns against the ring kernels (dev/moe_gemv_ab.py, moe_gemv_ab_ea608ec.log; CUDA graphs, us per call, % of
 * the touched weights' floor): 1 token 167.9 vs 196.6 (97.8 vs 83.6%), 2: 314.7 vs 364.1 (101 vs 87%), 4: 568.1
 * vs 624.8 (97.6 vs 88.7%), but 8: 1046 vs 919 and 16: 2025 vs 1219 (slots sharing an expert: its rows are read
 * per slot, the L2 catches only part of it). So up to 4 tokens. An expert-grouped form (each weight row against up
 * to 2 / 4 / 8 of its expert's tokens, then the combine kernel; EXPERIMENT 7efb8ac, 9cc3ed5, reverted) lost to the
 * slot kernels at 1-4 tokens and to the ring kernels at 6-12 (e.g. 8 tokens 1054 / 1072 / 1189 us against 892;
 * moe_gemv_ab_7efb8ac.log, moe_gemv_ab_9cc3ed5.log): the token rows' loads and FMAs in the dependent path.
 * fp8 expert weights (moe_experts_fp8, csrc/jamba.h JAMBA_FP8_API): the same kernels with F8 = true read e4m3 bytes
 * (16 a load, gemv_warp_dot_f8) and scale each row's fp32 sum before the rounding; up to JAMBA_FP8_GEMV_MAX_TOKENS
 * (32) tokens, because the other fp8 path converts the touched experts to bf16 first (5 bytes of traffic a weight
 * against these kernels' 1 per slot that reads the row): 1 token 106 us against 171 for the bf16 kernels, and at
 * 8 / 64 tokens the converting path took 3.0 / 4.1 ms against 1.1 / 1.3 for bf16 (bench_moe_fp8_cd6237a.json), so
 * the slot kernels (~0.7 ms at 8 tokens by their bytes) win well beyond 4 tokens.
 * The fp8 dot loop's batches inside K run unchecked (gemv.cuh gemv_warp_dot_f8, sm_89+; session 41): 1 token 95.0 against
 * 100.2 us with every chunk checked, the down kernel 32.2 against 36.2 us (fp8_gemv_fast_8dcf79b.log): it was issue-bound.
 * Launch: moe_gemv_decode (declared in moe.cuh); kw from gemv_pick_kw; env JAMBA_EXT_MOE_GEMV = "0" turns the path
 * off (the ring kernels of moe.cu run), "g,d" forces the warps along K of the two kernels (A/B).
 */
#include "gemv.cuh"
#include "moe.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MG_WARPS 8
#define MG_U 4     /* chunks per batch of loads */
#define MG_SLOTS 8 /* slots of a token reduced per pass of the down kernel's shared buffer */
#define MG_MAX_TOKENS 4 /* tokens up to which experts_launch runs these kernels (the A/B above) */
#define MG_DOWN_MINB 3  /* the down kernel's resident blocks per SM (its launch bounds: <= 80 registers) */

struct moe_gemv_args {
    const void *x, *wgu, *wd;
    void *act, *out;
    const int32_t *ids;
    const float *weights;
    const float *sgu, *sd; /* F8: the rows' scales (E, 2F) and (E, H); NULL otherwise */
    int64_t H, F;
    int K, E, kw;
    int slow; /* JAMBA_EXT_FP8_GEMV_FAST=0 (A/B): the fp8 dot loop without its unchecked path, every chunk checked */
};

/* one warp's part of R rows' dot products with x (K elements): rows[r] of the weight matrix at W (element type T,
 * or e4m3 bytes when F8) */
template <typename T, bool F8, int R, int U>
__device__ __forceinline__ void mg_dot(const void *W, const int64_t (&rows)[R], const bool (&ok)[R], const T *x,
                                       int64_t K, int ks, int kw, int lane, float (&acc)[R][1], bool fast = true) {
    if constexpr (F8) {
        const uint8_t *wr[R];
#pragma unroll
        for (int r = 0; r < R; r++) wr[r] = (const uint8_t *)W + rows[r] * K;
        gemv_warp_dot_f8<T, R, U>(wr, ok, x, K, ks, kw, lane, acc, fast);
    } else {
        const T *wr[R];
#pragma unroll
        for (int r = 0; r < R; r++) wr[r] = (const T *)W + rows[r] * K;
        gemv_warp_dot<T, R, 1, U>(wr, ok, x, 0, 1, K, ks, kw, lane, acc);
    }
}

template <typename T, bool F8, int U>
__global__ void __launch_bounds__(MG_WARPS * 32) moe_gemv_gate_up_kernel(moe_gemv_args a) {
    jamba_pdl_begin();
    __shared__ float red[MG_WARPS][2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kw = a.kw, ks = warp % kw, nr = MG_WARPS / kw;
    const int64_t s = blockIdx.x;
    const int e = a.ids[s];
    if (e < 0 || e >= a.E) return; /* whole block */
    const int64_t f = (int64_t)blockIdx.y * nr + warp / kw;
    const void *W = (const char *)a.wgu + (int64_t)e * 2 * a.F * a.H * (F8 ? 1 : (int64_t)sizeof(T));
    const bool ok = f < a.F;
    const int64_t rows[2] = {ok ? f : 0, ok ? a.F + f : 0};
    const bool wok[2] = {ok, ok};
    float acc[2][1] = {{0.f}, {0.f}};
    mg_dot<T, F8, 2, U>(W, rows, wok, (const T *)a.x + (s / a.K) * a.H, a.H, ks, kw, lane, acc, !a.slow);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float v = jamba_warp_sum(acc[r][0]);
        if (lane == 0) red[warp][r] = v;
    }
    __syncthreads();
    const int q = threadIdx.x;
    const int64_t fo = (int64_t)blockIdx.y * nr + q;
    if (q < nr && fo < a.F) {
        float g = 0.f, u = 0.f;
        for (int j = 0; j < kw; j++) g += red[q * kw + j][0], u += red[q * kw + j][1];
        if (F8) g *= a.sgu[(int64_t)e * 2 * a.F + fo], u *= a.sgu[(int64_t)e * 2 * a.F + a.F + fo];
        ((T *)a.act)[s * a.F + fo] = jamba_st<T>(moe_act<T>(g, u));
    }
}

template <typename T, bool F8, int U>
__global__ void __launch_bounds__(MG_WARPS * 32, MG_DOWN_MINB) moe_gemv_down_kernel(moe_gemv_args a) {
    jamba_pdl_begin();
    __shared__ float red[MG_SLOTS][MG_WARPS][2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kw = a.kw, ks = warp % kw, nr = MG_WARPS / kw;
    const int64_t t = blockIdx.x, h0 = (int64_t)blockIdx.y * 2 * nr, hw = h0 + 2 * (warp / kw);
    const int i = threadIdx.x; /* i < 2 nr: output row h0 + i of the block */
    float comb = 0.f;
    bool bad = false;
    for (int j0 = 0; j0 < a.K; j0 += MG_SLOTS) {
        const int j1 = a.K - j0 < MG_SLOTS ? a.K : j0 + MG_SLOTS;
        for (int j = j0; j < j1; j++) {
            const int64_t s = t * a.K + j;
            const int e = a.ids[s];
            if (e < 0 || e >= a.E) continue; /* whole block */
            const void *W = (const char *)a.wd + (int64_t)e * a.H * a.F * (F8 ? 1 : (int64_t)sizeof(T));
            int64_t rows[2];
            bool wok[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                wok[r] = hw + r < a.H;
                rows[r] = wok[r] ? hw + r : 0;
            }
            float acc[2][1] = {{0.f}, {0.f}};
            mg_dot<T, F8, 2, U>(W, rows, wok, (const T *)a.act + s * a.F, a.F, ks, kw, lane, acc, !a.slow);
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const float v = jamba_warp_sum(acc[r][0]);
                if (lane == 0) red[j - j0][warp][r] = v;
            }
        }
        __syncthreads();
        if (i < 2 * nr) {
            const int q = i / 2, r = i % 2;
            for (int j = j0; j < j1; j++) {
                const int64_t s = t * a.K + j;
                const int e = a.ids[s];
                if (e < 0 || e >= a.E) {
                    bad = true;
                    continue;
                }
                float y = 0.f;
                for (int k = 0; k < kw; k++) y += red[j - j0][q * kw + k][r];
                if (F8 && h0 + i < a.H) y *= a.sd[(int64_t)e * a.H + h0 + i];
                y = moe_scaled<T>(y, a.weights[s]);
                comb = j == 0 ? y : jamba_round<T>(comb + y);
            }
        }
        __syncthreads();
    }
    if (i < 2 * nr && h0 + i < a.H)
        ((T *)a.out)[t * a.H + h0 + i] = jamba_st<T>(bad ? __int_as_float(0x7fc00000) : comb);
}

/* "g,d" of JAMBA_EXT_MOE_GEMV (warps along K of the two kernels; 0: pick), -1 when the path is off; read once a
 * call, by moe_gemv_decode */
static int mg_env(int *kwg, int *kwd) {
    const char *s = getenv("JAMBA_EXT_MOE_GEMV");
    *kwg = *kwd = 0;
    if (s == NULL) return 0;
    if (s[0] == '0' && s[1] == '\0') return -1;
    if (sscanf(s, "%d,%d", kwg, kwd) != 2) *kwg = *kwd = 0;
    return 0;
}

static int mg_kw(int forced, int64_t K, int vn) {
    if (forced == 1 || forced == 2 || forced == 4 || forced == 8) return forced;
    return gemv_pick_kw(jamba_ceil_div(K, 32 * vn), MG_WARPS);
}

/* both kernels; a: the tensors, K, E, H, F set (kw is picked here); U: chunks per batch of loads */
template <typename T, bool F8, int U = MG_U>
static jamba_status mg_run(moe_gemv_args a, int64_t T_, int kwg, int kwd, int sms, cudaStream_t stream) {
    constexpr int VN = F8 ? 16 : 16 / (int)sizeof(T);
    if (F8) { /* one warp per row (kw 1) unless forced: fp8_ab_ce17227.log, Jamba-v0.1, us at 1 / 4 / 8 / 16 / 32
               * tokens, kw 1 vs the pick (2 and 4): 99.5 / 309 / 552 / 1054 / 2056 vs 101.5 / 336 / 633 / 1225 / 2422 */
        kwg = kwg ? kwg : 1;
        if (!kwd) { /* the down kernel: kw 4 (4x the blocks) where kw 1's grid would end in a wave less than half full
                     * (sms: the device's SM count; 0: unknown). Jamba-v0.1 on an H200, 2 tokens: 512 blocks for 396
                     * resident ones, 176.3 against 187.7 us for the op; 1 / 4 / 6 tokens (0.65 / 2.6 / 3.9 waves)
                     * 98.8 / 312.3 / 442.6 against 98.5 / 309.0 / 422.8 with kw 4 (fp8_gemv_kw_05df184.log) */
            const int64_t nb = T_ * jamba_ceil_div(a.H, 2 * MG_WARPS), slots = (int64_t)sms * MG_DOWN_MINB;
            kwd = (slots > 0 && nb > slots && nb % slots != 0 && 2 * (nb % slots) < slots) ? 4 : 1;
        }
    }
    a.kw = mg_kw(kwg, a.H, VN);
    const dim3 g1((unsigned)(T_ * a.K), (unsigned)jamba_ceil_div(a.F, MG_WARPS / a.kw));
    jamba_kernel_launch(moe_gemv_gate_up_kernel<T, F8, U>, g1, dim3(MG_WARPS * 32), 0, stream, a);
    JAMBA_LAUNCH_CHECK("moe_gemv_gate_up_kernel", stream);
    a.kw = mg_kw(kwd, a.F, VN);
    const dim3 g2((unsigned)T_, (unsigned)jamba_ceil_div(a.H, 2 * (MG_WARPS / a.kw)));
    jamba_kernel_launch(moe_gemv_down_kernel<T, F8, U>, g2, dim3(MG_WARPS * 32), 0, stream, a);
    JAMBA_LAUNCH_CHECK("moe_gemv_down_kernel", stream);
    return JAMBA_OK;
}

/* the kernels' arguments from either op's params (the same fields; the fp8 op adds the scales) */
template <typename P>
static moe_gemv_args mg_args(const P *p) {
    moe_gemv_args a;
    memset(&a, 0, sizeof a);
    a.x = p->x.data, a.wgu = p->w_gate_up.data, a.wd = p->w_down.data;
    a.act = p->act.data, a.out = p->out.data;
    a.ids = (const int32_t *)p->expert_ids.data, a.weights = (const float *)p->weights.data;
    a.H = p->x.shape[1], a.F = p->w_down.shape[2];
    a.K = (int)p->expert_ids.shape[1], a.E = (int)p->w_down.shape[0];
    return a;
}

template <typename T>
static jamba_status mg_launch(const jamba_moe_experts_params *p, int kwg, int kwd, cudaStream_t stream) {
    return mg_run<T, false>(mg_args(p), p->x.shape[0], kwg, kwd, 0, stream);
}

jamba_status moe_gemv_decode(int dtype, const jamba_moe_experts_params *p, cudaStream_t stream, int *ran) {
    int kwg, kwd;
    *ran = 0;
    const int64_t T_ = p->x.shape[0], H = p->x.shape[1], F = p->w_down.shape[2];
    /* grid.y: F / NR and H / (2 NR) blocks with NR >= 1 */
    if (mg_env(&kwg, &kwd) < 0 || T_ > MG_MAX_TOKENS || F == 0 || F > 65535 || H > 2 * 65535) return JAMBA_OK;
    *ran = 1;
    if (dtype == JAMBA_BF16) return mg_launch<__nv_bfloat16>(p, kwg, kwd, stream);
    if (dtype == JAMBA_F16) return mg_launch<__half>(p, kwg, kwd, stream);
    *ran = 0;
    return JAMBA_OK;
}

/* moe_experts_fp8 (csrc/jamba.h JAMBA_FP8_API): the same two kernels reading e4m3 weight bytes, each row's sum
 * scaled before the rounding, up to JAMBA_FP8_GEMV_MAX_TOKENS tokens; with the permutation given, moe.cu's ring
 * kernels on the e4m3 bytes instead (moe_fp8_ring; jamba_ext/ops.py picks by the token count) */
template <typename T>
static jamba_status mg_launch_fp8(const jamba_moe_experts_fp8_params *p, int kwg, int kwd, int sms,
                                  cudaStream_t stream) {
    moe_gemv_args a = mg_args(p);
    a.sgu = (const float *)p->s_gate_up.data, a.sd = (const float *)p->s_down.data;
    const char *fs = getenv("JAMBA_EXT_FP8_GEMV_FAST");
    a.slow = fs != NULL && fs[0] == '0';
    /* 4 chunks' loads in flight, as the bf16 kernels: 2 / 8 measured 101 / 140 us against 102 at one token, 348 / 513
     * against 336 at four (fp8_ab_ce17227.log, the EXPERIMENT knob removed after) */
    return mg_run<T, true>(a, p->x.shape[0], kwg, kwd, sms, stream);
}

extern "C" jamba_status jamba_moe_experts_fp8_cuda(const jamba_moe_experts_fp8_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_moe_experts_fp8_check(p));
    const int64_t T_ = p->x.shape[0], H = p->x.shape[1], F = p->w_down.shape[2];
    if (T_ == 0 || H == 0) return JAMBA_OK;
    const int dt = p->x.dtype;
    const bool ring = p->expert_offsets.data != NULL; /* the permutation given: moe.cu's ring kernels, any T */
    if ((dt != JAMBA_BF16 && dt != JAMBA_F16) || H % 16 || F % 16 || F == 0 ||
        (!ring && T_ > JAMBA_FP8_GEMV_MAX_TOKENS) || F > 65535 || H > 2 * 65535 || !jamba_aligned16(p->x.data) ||
        !jamba_aligned16(p->w_gate_up.data) || !jamba_aligned16(p->w_down.data) || !jamba_aligned16(p->act.data) ||
        (ring && !jamba_aligned16(p->slot_out.data)) || (p->act8.data != NULL && !jamba_aligned16(p->act8.data)))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED,
                               "jamba.moe_experts_fp8: the CUDA kernels take bf16 / f16 x, H and F multiples of 16 "
                               "(F <= 65535), 16-byte aligned data and, without the permutation, at most %d tokens; "
                               "got %s, H %lld, F %lld, %lld tokens (jamba_ext.ops.moe_experts_fp8 dequantizes for "
                               "the other cases)",
                               JAMBA_FP8_GEMV_MAX_TOKENS, jamba_dtype_name(p->x.dtype), (long long)H, (long long)F,
                               (long long)T_);
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    if (ring) return moe_fp8_ring(p, launch.device, stream);
    int kwg, kwd;
    mg_env(&kwg, &kwd);
    const int sms = jamba_cuda_sm_count(launch.device);
    if (dt == JAMBA_BF16) return mg_launch_fp8<__nv_bfloat16>(p, kwg, kwd, sms, stream);
    return mg_launch_fp8<__half>(p, kwg, kwd, sms, stream);
}
