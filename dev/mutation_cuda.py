"""Mutation test of the CUDA kernels' fast paths: do the CUDA tests catch realistic faults in the kernels?

Each mutant below is one small, plausible fault (an off-by-one in a tail, a dropped term, a wrong vector lane, a
skipped write-back, ...) in a csrc/cuda file, on the path that the selected CUDA tests actually dispatch to (read
the mutant's description for which test and which shape reaches it). A mutant is KILLED when its selection fails
(a test failure, a crash or a timeout), SURVIVED when it passes: a fault the tests would let through.

Run from the repo root:
  python3 dev/mutation_cuda.py --list                  the mutants and their test selections
  python3 dev/mutation_cuda.py --check-local           each mutant applied to a temp copy of its file and compiled
                                                       by nvcc (no GPU needed); also says whether the mutant's device
                                                       code (cubin) differs from the original's (else: equivalent)
  python3 dev/mutation_cuda.py --run --dry             the --run steps without builds and pytest runs: copies,
                                                       mutants applied, commands printed, tests collected per mutant
  python3 dev/mutation_cuda.py --run --out $OUT/mutation_cuda.log      on the GPU machine (one H200, 16 cores)
  --only id1,id2,...                                   with any of the above: only those mutants (e.g. a rerun)

--run: one copy of the sources per mutant plus an unmutated "base" copy under a temp dir (setup.py, pyproject.toml,
README.md, csrc/, jamba_ext/ without any built .so, tests/), the mutant applied in its copy. The base copy is built
first on every core (JAMBA_EXT_CUDA=1 JAMBA_EXT_ARCHS=90 JAMBA_EXT_REUSE_OBJECTS=1 python3 setup.py -q build_ext
--inplace); then each mutant's copy gets the base's build directory (objects and their nvcc-command stamps) and its
mutated file stamped newer, so setup.py's JAMBA_EXT_REUSE_OBJECTS=1 recompiles only that file before linking:
BUILD_PARALLEL (8) such builds at a time, BUILD_JOBS (2) nvcc jobs each, each under BUILD_TIMEOUT (until session 48's
second run every copy compiled all 18 files: 29 builds of ~65 s each, and 9 of 28 mutants did not fit the budget);
meanwhile, on the GPU, one after another as their builds finish: the
base copy's union of every selection (must pass, else "base failed" and stop), then each mutant's selection in its own
copy (cwd and PYTHONPATH = the copy; the log shows the jamba_ext and _C it imported): pytest -q -x -p no:cacheprovider
-m cuda --timeout=60 --timeout-method=thread FILES -k EXPR, under MUTANT_TIMEOUT seconds (a timeout or a crash counts
as KILLED, and says so). Prints one line per mutant (id, KILLED / SURVIVED / BUILD-FAIL / ERROR / NOT-RUN, seconds,
the first failing test), then a summary; --out FILE tees all of it to FILE and keeps each copy's build / test log in
FILE's directory (mutation_cuda_logs/). No new work starts after --budget seconds (default 450; a mutant's tests are
cut at it too), so the whole run ends within about 7.5 minutes. Expected (not yet measured on the GPU machine): the
base build ~45 s, a mutant's build one .cu file (1-40 s) plus the C sources and the link, the base run (~40 s) and
each mutant's tests (5-20 s): ~4-5 minutes in all.
"""
import argparse
import collections
import concurrent.futures
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Builds: one copy's 18 .cu files take ~91 core-seconds of nvcc (a 2-core machine, 2 jobs: 52 s), the longest
# selective_scan.cu (21 s; the 15th file setup.py starts) and moe_wgmma.cu (17 s), so a build's last ~20 s run on one or
# two cores. On the H200 machine, when every copy built all files: 4 builds x 4 jobs took 48 s a build, 6 x 3 62-69 s,
# and 29 copies did not fit the 380 s budget (mutation_cuda_af4cb7b.log). Since aa505cd a mutant's build recompiles one
# file (1-16 s of nvcc here, the C sources and the link ~4 s).
BUILD_PARALLEL = 8       # mutant copies built at once (after the base copy, built alone on every core)
BUILD_JOBS = 2           # nvcc jobs per mutant build (one .cu file is recompiled there)
BUILD_TIMEOUT = 330      # seconds per build
MUTANT_TIMEOUT = 90      # seconds per mutant's pytest run
BASE_TIMEOUT = 240       # seconds for the base copy's union of the selections
TEST_TIMEOUT = 60        # pytest-timeout per test (when the plugin is installed)

Mutant = collections.namedtuple("Mutant", "id file old new desc tests k")

MUTANTS = [
    Mutant("scan_g4_D_lane", "selective_scan.cu",
           "float v0 = yc[j] + Dc * g4_lo(wu), v1 = yc[j + 1] + Dc * g4_hi(wu);",
           "float v0 = yc[j] + Dc * g4_lo(wu), v1 = yc[j + 1] + Dc * g4_lo(wu);",
           "g4 kernel (the bf16 default: N 16, L % 8 == 0, DI % 32 == 0, softplus, 16-byte rows) gate: the odd "
           "step's skip term D*u reads the even step's u (low bf16 of the word). test_selective_scan_g4_fp64[full]: "
           "7 shapes with D, the profiler asserts the g4 kernel ran; odd steps off by D*(u[t-1]-u[t]) ~ 0.5",
           ["tests/test_cuda_extra.py"], "test_selective_scan_g4_fp64 and full"),
    Mutant("conv_fwd_halo_lane", "causal_conv1d.cu",
           "if (QF <= 2) nb.z = __shfl_sync(JAMBA_FULL_MASK, v[j].z, src);",
           "if (QF < 2) nb.z = __shfl_sync(JAMBA_FULL_MASK, v[j].z, src);",
           "vectorised forward (16-byte rows, L % VN == 0), bf16/f16 (QF 2): word z of the left neighbour's vector "
           "is not shuffled, so h[t-3] of each vector (w[0]'s tap) reads 0. test_causal_conv1d_vector_path[bf16]: "
           "K 4 at L 1024 / 40 / 70000 (vectors past lane 0; aligned channel slices take the VEC kernel)",
           ["tests/test_cuda_extra.py"], "test_causal_conv1d_vector_path and bf16"),
    Mutant("rms_row_no_eps", "rms_norm.cu",
           "const float inv = rsqrtf(rms_row_sum(ss) / (float)a.dim + a.eps);\n    if (!active) return;\n"
           "    if (!EARLY_W)",
           "const float inv = rsqrtf(rms_row_sum(ss) / (float)a.dim);\n    if (!active) return;\n"
           "    if (!EARLY_W)",
           "rms_norm_row_kernel (16-byte rows, the default for aligned rows) drops eps. Existing tests run the row "
           "kernel only with |x| ~ 1 (eps invisible; test_rms_norm_eps_matters uses dim 33: the two-pass kernel), "
           "so the new tests/test_cuda_paths.py::test_rms_norm_row_kernel_eps (|x| ~ 1e-3, dims 64..16384) should "
           "be the first to fail: 40% off",
           ["tests/test_rms_norm.py", "tests/test_cuda_extra.py", "tests/test_cuda_paths.py"],
           "test_rms_norm_matches_fp64 or test_rms_norm_eps_matters or test_add_rms_norm_matches_fp64 or "
           "test_rms_norm_vector_path or test_rms_norm_row_kernel_eps"),
    Mutant("ssu_f32n16_writeback", "selective_state_update.cu",
           "if (j < nb) ssu_st_f4(st + j * a.ss0, h[j]);",
           "if (j + 1 < nb) ssu_st_f4(st + j * a.ss0, h[j]);",
           "selective_state_update_f32n16_kernel (fp32 state, N 16, 16-byte rows: the decode default) writes back the "
           "state of only nb-1 of its group's nb batch rows (the last row keeps its old state). "
           "test_selective_state_update_shapes_fp64[state_f32]: contiguous fp32 states, batch 1..256, state vs fp64",
           ["tests/test_cuda_extra.py"], "test_selective_state_update_shapes_fp64 and state_f32"),
    Mutant("mamba_step_no_dtbias", "mamba_step.cu",
           "const float d = jamba_cu_softplus(s_dl[b][scl] + dtb);",
           "const float d = jamba_cu_softplus(s_dl[b][scl]);",
           "fused decode step mamba_step_kernel: the state update drops dt_bias. "
           "test_mamba_inner_step_matches_chain_and_reference[cuda]: JAMBA_EXT_MAMBA_STEP_FUSED=force for B <= 2 "
           "and DI, R multiples of 16 bytes (5-6 of 8 cases a dtype), y within ~1 ulp of the five-launch chain",
           ["tests/test_mamba_step.py"], "test_mamba_inner_step_matches_chain_and_reference and cuda"),
    Mutant("gemv_ring_k_tail", "gemv.cu",
           "const bool kin = k < a.K;",
           "const bool kin = k + 8 < a.K;",
           "gemv_ring_kernel (tensor cores: bf16/f16, 2-8 rows from N 512, 1 row at N 512..8192) drops the last "
           "16-byte unit (8 elements) of K in every row. test_gemv_cuda_tensor_core_rows[default]: out_proj "
           "2x4096x8192, dt_proj 5x8192x256, odd 7x1000x4104, down 8x4096x14336 (+ 1 row each), vs the error model",
           ["tests/test_gemv.py"], "test_gemv_cuda_tensor_core_rows and default"),
    Mutant("moe_wgmma_epi_gate_up_swap", "moe_wgmma.cu",
           "const float g0 = P::f1(w[2 * q2] & 0xffffu), u0 = P::f1(w[2 * q2] >> 16);",
           "const float g0 = P::f1(w[2 * q2] >> 16), u0 = P::f1(w[2 * q2] & 0xffffu);",
           "persistent wgmma MoE kernel, its epilogue warps (wp_drain_box: gate_up outputs n0+64..n0+127 of each tile) "
           "swap the staged (gate, up) halves: SiLU(up)*gate. Reached above 16 slots per expert outside 128..191 "
           "(no merged tiles): test_moe_experts_gpu_impls[wgmma-*] at T 2048 E 16 k2 (256 / expert), T 300 E 4 k1 "
           "(75), T 130 E 4 k2 (65), F 96..1048 > 64",
           ["tests/test_moe.py"], "test_moe_experts_gpu_impls and wgmma"),
    Mutant("moe_gemv_combine_weight", "moe_gemv.cu",
           "y = moe_scaled<T>(y, a.weights[s]);",
           "y = moe_scaled<T>(y, a.weights[t]);",
           "decode MoE (moe_gemv.cu, T <= 4, bf16/f16, impl gemv / auto) fused combine: the router weight of token t "
           "(index t) instead of slot s = t*K + j. test_moe_decode_one_token[default]: 1 token, K 2..12 (slot 1.. "
           "gets slot 0's weight), and the 2-token pair",
           ["tests/test_moe.py"], "test_moe_decode_one_token and default and bf16"),
    Mutant("attn_mma_last_tile", "decode_attention.cu",
           "const int64_t ntiles = (j1 - j0 + 7) / 8;",
           "const int64_t ntiles = (j1 - j0) / 8;",
           "attn_mma_kernel (bf16/f16, D 64 / 128: the decode default) skips a split's last partial tile of 8 keys. "
           "test_decode_attention_cuda_kernels[mma]: S 1 (no key left: 0 out), 17, 300, 4500 (splits of 16..23 keys), "
           "33",
           ["tests/test_decode_attention.py"], "test_decode_attention_cuda_kernels and mma"),
    Mutant("ce_fwd_no_rescale", "cross_entropy.cu",
           "s = s * jamba_cu_exp2((m - mm) * JAMBA_LOG2E) + add;",
           "s = s + add;",
           "cross_entropy forward: a thread's running sum is not rescaled when its running max grows between rounds "
           "(online softmax). Needs > 1 round per thread (V > 1024 vectors): test_cross_entropy_matches_fp64[cuda] "
           "2x65536 (8 rounds), 5x8200; lse / loss within 1e-5",
           ["tests/test_cross_entropy.py"], "test_cross_entropy_matches_fp64 and cuda"),
    # ---- second round: state carry, gates, the non-g4 scans, conv states / update, bwd terms, MoE route /
    # permute / ring decode / combine, the wgmma tile forms, sum_mid ----
    Mutant("scan_g4_init_batch0", "selective_scan.cu",
           "h[i] = a.init ? a.init[b * a.si0 + c * a.si1 + n] : 0.f;",
           "h[i] = a.init ? a.init[c * a.si1 + n] : 0.f;",
           "g4 kernel's scan warps load initial_state without the batch stride: every batch row starts from batch 0's "
           "state. test_selective_scan_g4_fp64[full]: batch 2 / 3 cases (2x64x40, 3x64x264, 2x8192x72) with an "
           "initial state; outputs and last_state vs fp64 (5e-5) differ by O(1) in slowly decaying states",
           ["tests/test_cuda_extra.py"], "test_selective_scan_g4_fp64 and full"),
    Mutant("scan_softplus_no_abs", "selective_scan.cu",
           "const float e = jamba_cu_exp2(fabsf(v) * -JAMBA_LOG2E);",
           "const float e = jamba_cu_exp2(v * -JAMBA_LOG2E);",
           "pc_softplus (the pipelined kernel's, and the g4 converters' SHORT form) loses the |v|: for v < 0 "
           "(delta + bias ~ -4.5..-1.5 mostly) e = exp(|v|) > 1, outside the log1p polynomial's [0, 1]: dt far off. "
           "test_selective_scan_d_state_sweep[1 / 5 / 16]: f32, N <= 16: the pipelined kernel (the general loader, "
           "x_proj-strided B/C), softplus on, vs fp64 (the same selection as scan_fwd_tail_no_D: no extra base time)",
           ["tests/test_cuda_extra.py"], "test_selective_scan_d_state_sweep"),
    Mutant("scan_fwd_tail_no_D", "selective_scan.cu",
           "if (g == 0) sy[lc * TP + t] = fmaf(Dc, su[lc * TP + t], y);",
           "if (g == 0) sy[lc * TP + t] = y;",
           "selective_scan_fwd_kernel (the general kernel, dispatched only for N > 16): the steps after the last "
           "whole 8-step batch of a chunk drop D*u. test_selective_scan_d_state_sweep[33 / 128 / 256]: L 97, TC 32 / "
           "16 / 4 (N 33 / 128 / 256), so step 96 (and at N 256 every step) goes through that loop; off by D*u ~ 0.5",
           ["tests/test_cuda_extra.py"], "test_selective_scan_d_state_sweep"),
    Mutant("conv_fwd_init_row_stale", "causal_conv1d.cu",
           "if (init) init = (const T *)a.init + (int64_t)b * a.si0 + (int64_t)c * a.si1;",
           "if (init) init = (const T *)a.init + (int64_t)b * a.si0;",
           "conv forward: a warp that moves on to the next (b, c) row (4-segment warps: more segments than one "
           "resident wave) points its initial-state row at channel 0: that row's first 3 outputs take channel 0's "
           "halo. test_causal_conv1d_multi_wave: 2x1000x2056 S3 and 1x4000x4096 S5 (6000 / 16000 bf16 segments > "
           "3168 warps), all dtypes",
           ["tests/test_cuda_extra.py"], "test_causal_conv1d_multi_wave"),
    Mutant("conv_fin_init_edge", "causal_conv1d.cu",
           "else if (init && a.S_in + t >= 0) h = jamba_ld<T>(init[a.S_in + t]);",
           "else if (init && a.S_in + t > 0) h = jamba_ld<T>(init[a.S_in + t]);",
           "conv forward's final_state, where it reaches back into initial_state: its first entry (S_in + t == 0) "
           "is written as 0. test_causal_conv1d_vector_path[B3_DI4_L8_K4]: L 8, state_len 12, S_in 4 (t = -4 at "
           "entry 0), final_state compared exactly, 3 dtypes",
           ["tests/test_cuda_extra.py"], "test_causal_conv1d_vector_path and B3_DI4_L8_K4"),
    Mutant("conv_update_noshift", "causal_conv1d.cu",
           "const int64_t src = a.L + i; /* h index of the new state[i] */",
           "const int64_t src = a.L + i - 1; /* h index of the new state[i] */",
           "causal_conv1d_update_kernel (the per-channel kernel: every call but L 1 / S 4 / DI % 4 == 0), its state "
           "shift for S > 4 is one short: with L 1 the state is left unshifted and x never enters it. "
           "test_causal_conv1d_update_chain_equals_full[cuda-*-S=K+2] (K 3 / 4: S 5 / 6, DI 7): 9 chained steps "
           "against causal_conv1d, state compared exactly",
           ["tests/test_causal_conv1d.py"], "test_causal_conv1d_update_chain_equals_full and cuda"),
    Mutant("ssu_bf16_state_pack", "selective_state_update.cu",
           "q.x = hq[0] | (hq[1] << 16);",
           "q.x = hq[0] | (hq[0] << 16);",
           "selective_state_update_kernel (the general kernel: bf16 / f16 states), its 8-byte store of 4 16-bit "
           "states writes state 4q into 4q + 1. test_selective_state_update_shapes_fp64[state_bf16]: 5 shapes, "
           "contiguous bf16 state (vector stores), state vs fp64 within 1e-2",
           ["tests/test_cuda_extra.py"], "test_selective_state_update_shapes_fp64 and state_bf16"),
    Mutant("scan_bwd_dbias_overwrite", "selective_scan_bwd.cu",
           "pbs[cl * 32 + lane] += sdb;",
           "pbs[cl * 32 + lane] = sdb;",
           "scan_bwd_kernel: the per-channel ddelta_bias partials are overwritten per 256-step chunk instead of "
           "summed over the chunks (only chunk 0, the last one walked, is kept). "
           "test_selective_scan_bwd_matches_fp64[cuda-*-f32]: L 1100 / 300 / 520 / 257 with delta_bias (2-5 chunks), "
           "ddelta_bias within 1e-4 of the largest",
           ["tests/test_selective_scan_bwd.py"], "test_selective_scan_bwd_matches_fp64 and cuda and f32"),
    Mutant("conv_bwd_dbias_column", "causal_conv1d_bwd.cu",
           "const int k = j < K ? (int)j : CB_PART - 1;",
           "const int k = j < K ? (int)j : (int)K;",
           "conv_bwd_sum reads dbias from column K of the partials (where tap K would be) instead of the fixed last "
           "column: the same at K 4, dbias = 0 at K 2 / 3. test_causal_conv1d_bwd_matches_fp64[cuda]: "
           "B3_DI5_L3_K3 and B2_DI4_L7_K2 with a bias, every dtype (the K 2 / 3 cases selected)",
           ["tests/test_causal_conv1d.py"], "test_causal_conv1d_bwd_matches_fp64 and cuda and (K2 or K3)"),
    Mutant("rms_bwd_seg_boundary", "rms_norm_bwd.cu",
           "while (s + 1 < a.nseg && a.ends[s] <= i) s++;",
           "while (s + 1 < a.nseg && a.ends[s] < i) s++;",
           "nb_dw_kernel: the first column of each segment after the first takes the previous segment's 1/rms "
           "(dweight of columns 5 / 256 / 272, and 257 / 273 on the column-pair path). "
           "test_norm_bwd_aligned_rows[cuda-*-seg3 / seg_dtBC]: 70 rows of 288, splits [5, 6] and [256, 272]",
           ["tests/test_rms_norm.py"], "test_norm_bwd_aligned_rows and cuda and seg"),
    Mutant("moe_route_tie_high", "moe.cu",
           "if (oi >= 0 && (bi < 0 || ob > best || (ob == best && oi < bi))) { best = ob; bi = oi; }",
           "if (oi >= 0 && (bi < 0 || ob > best || (ob == best && oi > bi))) { best = ob; bi = oi; }",
           "moe_route_token's warp argmax breaks ties across lanes to the higher expert id (lower id is the "
           "contract). test_moe_route_nan_row_and_ties[cuda-*]: a row of equal logits must give ids 0..K-1 (T > 2: "
           "5 cases, both the one-block decode kernel and moe_route_kernel)",
           ["tests/test_moe.py"], "test_moe_route_nan_row_and_ties and cuda"),
    Mutant("moe_permute_inclusive", "moe.cu",
           "warp_eq[lane] = x - v;",
           "warp_eq[lane] = x;",
           "moe_permute_kernel: an inclusive instead of exclusive scan of the warps' bucket counts: each warp's "
           "first place in a bucket is shifted by its own count (slots written out of their bucket / past the end). "
           "test_moe_permute_matches_reference[cuda-*]: T 1..20001 slots with bad ids, vs the reference permutation",
           ["tests/test_moe.py"], "test_moe_permute_matches_reference and cuda"),
    Mutant("moe_decode_ntiles_floor", "moe.cu",
           "const int nt_act = (int)((cnt - t0 + 7) / 8 < NT ? (cnt - t0 + 7) / 8 : NT); /* warp-uniform */",
           "const int nt_act = (int)((cnt - t0) / 8 < NT ? (cnt - t0) / 8 : NT); /* warp-uniform */",
           "moe_decode_kernel (the ring decode engine: impl gemv from 5 tokens, or 1-4 with JAMBA_EXT_MOE_GEMV=0) "
           "counts its active 8-token n-tiles rounding down: an expert's last partial group of tokens (every expert "
           "with < 8) is never computed (poisoned act / slot_out rows: NaN). test_moe_decode_engine[bf16]: T 1..130",
           ["tests/test_moe.py"], "test_moe_decode_engine and bf16"),
    Mutant("moe_combine_row_stride", "moe.cu",
           "v.raw = *reinterpret_cast<const uint4 *>(slot_out + (t * K) * H + c * V);",
           "v.raw = *reinterpret_cast<const uint4 *>(slot_out + t * H + c * V);",
           "moe_combine_kernel (after the wgmma / mma / simt engines), 16-byte path: a token's first slot row is "
           "read at row t instead of t*K (the same at K 1). test_moe_experts_gpu_impls[wgmma]: top-2 cases with "
           "T > 1 (37 / 64 / 2048 / 130 tokens, H % 8 == 0)",
           ["tests/test_moe.py"], "test_moe_experts_gpu_impls and wgmma"),
    Mutant("wgmma_half_wbox", "moe_wgmma.cu",
           "const uint32_t ob = WG_BM * WG_BK * 2 + (FULL ? 0u : (uint32_t)(wgi * (WG_BN / 2) * WG_BK * 2));",
           "const uint32_t ob = WG_BM * WG_BK * 2;",
           "persistent wgmma kernel, half tiles (an expert's last <= 64 rows as 64 x 256: from 384 slots per expert, "
           "or JAMBA_EXT_WGMMA_HALF=1): warpgroup 1 multiplies W rows 0..127 instead of 128..255, so its outputs "
           "repeat warpgroup 0's. test_moe_wgmma_tiles: JAMBA_EXT_WGMMA_HALF=1 must give base's bits (experts with "
           "<= 64-row tails in most cases, e.g. the lopsided 2048-token E 16 case: ~290 rows per other expert)",
           ["tests/test_moe.py"], "test_moe_wgmma_tiles"),
    Mutant("wgmma_merged_tail_cols", "moe_wgmma.cu",
           "wg_epilogue<T, 16>(a, acc2, row0 + WG_BM, row_end, n0, wgi * (WG_BN / 2), warp, lane);",
           "wg_epilogue<T, 16>(a, acc2, row0 + WG_BM, row_end, n0, 0, warp, lane);",
           "merged tiles (128 + r <= 64 rows, the MG kernel: 128-191 slots per expert by size, or "
           "JAMBA_EXT_MOE_MERGE=1): the tail rows' m64n128 chain of warpgroup 1 is stored at warpgroup 0's columns "
           "(its own stay NaN-poisoned). No gpu_impls shape has 128-191 slots per expert; test_moe_wgmma_tiles forces "
           "MERGE=1 (>= 3 merged experts) and compares with base's bits",
           ["tests/test_moe.py"], "test_moe_wgmma_tiles"),
    Mutant("wgmma_down_weight_sorted", "moe_wgmma.cu",
           "const float w = jamba_round<T>(a.weights[slot]);",
           "const float w = jamba_round<T>(a.weights[p]);",
           "wgmma down GEMM epilogue (wg_epilogue, every tile form): the router weight indexed by the sorted row p "
           "instead of its slot. test_moe_experts_gpu_impls[wgmma]: 6 shapes, routing weights differ per slot",
           ["tests/test_moe.py"], "test_moe_experts_gpu_impls and wgmma"),
    Mutant("moe_swap_abox_rows", "moe_wgmma.cu",
           "tma_load_2d(sa + SW_A_BYTES + c * 32 * 128, m, kt * WG_BK, (int)(row0 + 32 * c), fb);",
           "tma_load_2d(sa + SW_A_BYTES + c * 32 * 128, m, kt * WG_BK, (int)(row0 + 32 * c + (g == 4 ? 32 : 0)), fb);",
           "swap-AB MoE kernel's producer (session 62's mixed A boxes): a 128-row box (4 chunks) reads its rows 32 "
           "further on. test_moe_swap_engine: every chunk count 1-10 (4 and more: 128-row boxes), against the "
           "128 x 256 tiles and the fp64 reference",
           ["tests/test_moe.py"], "test_moe_swap_engine"),
    Mutant("sum_mid_unrolled", "sum_mid.cu",
           "a3 += src[(k + 24) * J];",
           "a3 += src[(k + 16) * J];",
           "sum_mid_kernel's 4-loads loop (only with K >= 25 partials: a warp's terms k, k+8, k+16, k+24): the 4th "
           "load repeats the 3rd. No other CUDA test sums more than 10 partials (300 rows of rms_norm_bwd, d_inner "
           "<= 70 / batch <= 3 in selective_scan_bwd), so the path was unreached: tests/test_cuda_paths.py "
           "test_rms_norm_bwd_many_row_groups (2000 rows: 63 groups) and test_selective_scan_bwd_many_channel_blocks "
           "(d_inner 808: 26 blocks for dB / dC)",
           ["tests/test_cuda_paths.py"],
           "test_rms_norm_bwd_many_row_groups or test_selective_scan_bwd_many_channel_blocks"),
    # ---- third round: the vec gemv's split-K sum, the attention combine, the CE backward, the fused step's conv
    # window, the fp8 ring's up-row scale, the wgmma engine's gather ----
    Mutant("gemv_vec_kw_last_slice", "gemv.cu",
           "for (int j = 0; j < kw; j++) s += red[pair * kw + j][r][m];",
           "for (int j = 0; j + 1 < kw; j++) s += red[pair * kw + j][r][m];",
           "gemv_vec_kernel (CUDA cores: f32 always, bf16/f16 where gemv_ring_pick says no) adds only kw-1 of its "
           "kw K slices (the last slice's partial sums dropped). test_gemv_model_shapes[cuda]: x_proj 1x288x8192 "
           "(N < 512: vec kernel in every dtype, kw 8), 2x130x14336 (vec, kw 8), f32 4x1000x4096 / 1x4096x256 "
           "(kw >= 2): ~1/8 of the dot product lost, far above the 8 sqrt(K) ulp bound",
           ["tests/test_gemv.py"], "test_gemv_model_shapes and cuda"),
    Mutant("attn_combine_l_unscaled", "decode_attention.cu",
           "L = fmaf(ml[(p * a.R + r) * 2 + 1], c, L);",
           "L += ml[(p * a.R + r) * 2 + 1];",
           "attn_combine_kernel (after both split kernels) adds the splits' softmax sums without the factor "
           "2^(m_p - M) that it applies to their outputs: the denominator too large wherever the splits' maxima "
           "differ. test_decode_attention_cuda_kernels[mma]: S 17 / 33 / 300 / 4500 run 2 / 3 / 19 / 198 splits (S 1: "
           "one split, c = 1); split maxima of random scores differ by O(1): outputs ~10-50% small against the 1e-2 "
           "tolerance (the same selection as attn_mma_last_tile)",
           ["tests/test_decode_attention.py"], "test_decode_attention_cuda_kernels and mma"),
    Mutant("ce_bwd_onehot_unscaled", "cross_entropy.cu",
           "g[q] = ign ? 0.f : (p - (i * VN + q == t ? 1.f : 0.f)) * d;",
           "g[q] = ign ? 0.f : p * d - (i * VN + q == t ? 1.f : 0.f);",
           "ce_bwd_kernel (both the vector and the element path): the one-hot term is not scaled by dloss, so "
           "dlogits[target] is off by (1 - dloss). test_cross_entropy_matches_fp64[cuda]: every shape with a kept "
           "row (1x1 .. 2x65536, 3 dtypes), dloss ~ N(0, 0.3) per row against a bound of ~4e-6 |dloss| + half an "
           "ulp (the same selection as ce_fwd_no_rescale)",
           ["tests/test_cross_entropy.py"], "test_cross_entropy_matches_fp64 and cuda"),
    Mutant("mamba_step_conv_window", "mamba_step.cu",
           "const int hi = a.S + 1 - a.K + j;",
           "const int hi = a.S - a.K + j;",
           "fused decode step mamba_step_kernel: the conv window h[S + 1 - K .. S] of concat(state, x) starts one "
           "step early (h[S - K .. S - 1]: the new x never enters xc; at S = K - 1 the first tap reads the element "
           "before the channel's state row). test_mamba_inner_step_matches_chain_and_reference[cuda]: the fused "
           "cases (S 4 / 6 / 2 / 1, K 4 / 3 / 2) against the five-launch chain (y within ~1 ulp); xc off by O(1) "
           "(the same selection as mamba_step_no_dtbias)",
           ["tests/test_mamba_step.py"], "test_mamba_inner_step_matches_chain_and_reference and cuda"),
    Mutant("fp8_ring_up_scale", "moe.cu",
           "const float s = out < a.N ? sc[wrow] : 0.f;",
           "const float s = out < a.N ? sc[out] : 0.f;",
           "moe_decode_kernel F8 (the fp8 ring), gate_up pass: the up rows' sums take their gate row's scale "
           "(s_gate_up[out] instead of s_gate_up[F + out]; the down pass is unchanged, wrow == out there). "
           "test_moe_experts_fp8_ring_matches_fp64 (ring_everywhere: JAMBA_EXT_FP8_WGMMA=0, no gemv): T 7 / 64, "
           "E 1 / 8 / 16, bf16 and f16; per-row absmax scales of a gate and its up row differ by ~10%, so act and "
           "out are ~10% off against rtol 2e-2 / atol 4e-2",
           ["tests/test_fp8.py"], "test_moe_experts_fp8_ring_matches_fp64 and (T7H272F144 or T64H512F272)"),
    Mutant("moe_gather_tail_last_vec", "moe_wgmma.cu",
           "for (; v < nv; v += 32) dst[v] = src[v];",
           "for (; v + 1 < nv; v += 32) dst[v] = src[v];",
           "moe_gather_rows_kernel (x into sorted order before the wgmma GEMMs; it lives in moe_wgmma.cu, not "
           "moe_glue.cu): the tail loop skips a row's last 16-byte vector, so the gate_up GEMM reads 8 stale "
           "elements of each gathered row (slot_out, NaN-poisoned under the tests). "
           "test_moe_experts_gpu_impls[wgmma]: H 200 / 136 / 256 / 264 / 128 / 1096 "
           "(H / 8 vectors never a multiple of 128: the last vector is always in the tail loop): NaN outputs "
           "(~8/H of the dot products wrong without the poison; the same selection as wgmma_down_weight_sorted)",
           ["tests/test_moe.py"], "test_moe_experts_gpu_impls and wgmma"),
    # ---- NaN semantics (each fails only its new NaN test) ----
    Mutant("attn_combine_nan_max", "decode_attention.cu",
           "for (int64_t p = 0; p < a.P; p++) M = jamba_max_nan(M, ml[(p * a.R + r) * 2]);",
           "for (int64_t p = 0; p < a.P; p++) M = fmaxf(M, ml[(p * a.R + r) * 2]);",
           "attn_combine_kernel (after both split kernels) takes the splits' maximum with fmaxf, which skips NaN: a "
           "row whose every split is NaN (a NaN in q) gets M = -inf and the no-key 0. "
           "test_decode_attention_nan_propagates[cuda]: S 40 / 300 (3 / 19 splits), f32 (simt), bf16 / f16 (both)",
           ["tests/test_decode_attention.py"], "test_decode_attention_nan_propagates and cuda"),
    Mutant("ce_fwd_nan_max", "cross_entropy.cu",
           "for (int q = 0; q < VN; q++) vm = jamba_max_nan(vm, f[u][q]);",
           "for (int q = 0; q < VN; q++) vm = fmaxf(vm, f[u][q]);",
           "cross_entropy forward: a round's max skips NaN, so a thread that reads only NaN / -inf in it skips the "
           "round: a row of NaNs gets lse -inf, a NaN beside -inf only vanishes. test_cross_entropy_nan_rows[cuda]: "
           "V 1000 / 8200 (vector path), 1001 (element path)",
           ["tests/test_cross_entropy.py"], "test_cross_entropy_nan_rows and cuda"),
    Mutant("sr_pass1_nan_kept", "sample_rows.cu",
           "const float xp = sr_pen(xr[j], q, v), xv = xp == xp ? xp : -INFINITY;",
           "const float xp = sr_pen(xr[j], q, v), xv = xp;",
           "sample_rows pass 1 (both kernels) keeps a NaN penalised logit: a NaN first in a thread's fold sticks as "
           "its max (the greedy token), and a NaN's key is the largest (top_k keeps it). "
           "test_nan_logits_never_picked[cuda]: V 300 / 5000, greedy and sampled rows, NaN at column 0 and elsewhere",
           ["tests/test_sample_rows.py"], "test_nan_logits_never_picked and cuda"),
    # session 67 (host code of moe_wgmma.cu: --check-local reports the same cubin; the selection is what decides)
    Mutant("moe_swap_band_gate_up", "moe_wgmma.cu",
           "    if (!a.gate_up && slots >= (int64_t)MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT * a.E &&",
           "    if (a.gate_up && slots >= (int64_t)MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT * a.E &&",
           "moe_swap_on's 368-607 band puts gate_up, not down, on the swap engine. test_moe_swap_one_gemm[d]: the "
           "default's bits inside the band (E 4 at 450, E 16 at 375 slots an expert) against JAMBA_EXT_MOE_SWAP=d's",
           ["tests/test_moe.py"], "test_moe_swap_one_gemm"),
    Mutant("moe_swap_env_g_d_crossed", "moe_wgmma.cu",
           "return (env[0] == 'g') == (a.gate_up != 0);",
           "return (env[0] == 'd') == (a.gate_up != 0);",
           "JAMBA_EXT_MOE_SWAP=g / d run the swap engine in the other GEMM. test_moe_swap_one_gemm: the profiler's "
           "swap kernel instance (moe_swap_kernel<T, true> is gate_up's) for each mode",
           ["tests/test_moe.py"], "test_moe_swap_one_gemm"),
]


class Tee:
    """print() to stdout and, with --out, to a file"""

    def __init__(self, path=None):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.f = open(path, "w") if path else None

    def __call__(self, *args):
        line = " ".join(str(a) for a in args)
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()


def mutate(text, m):
    n = text.count(m.old)
    assert n == 1, f"{m.id}: the original snippet occurs {n} times in {m.file} (must be exactly once)"
    return text.replace(m.old, m.new)


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def pytest_args(tests, k):
    return ["-q", "-x", "-p", "no:cacheprovider", "-m", "cuda", "-rfE"] + list(tests) + ["-k", k]


def union_selection(mutants):
    files = []
    for m in mutants:
        files += [t for t in m.tests if t not in files]
    return files, " or ".join(f"({m.k})" for m in mutants)


def find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    nvcc = shutil.which("nvcc")
    if not nvcc:
        sys.exit("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    return nvcc


# ---- --check-local ----------------------------------------------------------------------------------------------
def check_local(out, mutants):
    """Each mutant on a temp copy of csrc/: nvcc -c (must compile), and the device code (cubin) of the original and
    the mutated file compared (identical cubins: the mutant is equivalent)."""
    nvcc = find_nvcc()
    tmp = tempfile.mkdtemp(prefix="jamba_mutcheck_")
    shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(tmp, "csrc"))
    failed = 0
    cubins = {}
    try:
        for m in mutants:
            src = os.path.join(tmp, "csrc", "cuda", m.file)
            orig = read(src)
            arch = "90a" if "jamba-build: sm90a" in orig[:4096] else "90"
            common = ["-O1", "-std=c++17", "-DJAMBA_WITH_CUDA", "--expt-relaxed-constexpr", "-I",
                      os.path.join(tmp, "csrc"), f"-gencode=arch=compute_{arch},code=sm_{arch}"]
            t0 = time.time()
            if m.file not in cubins:  # the original's device code, once per file
                r = subprocess.run([nvcc, "-cubin", src, "-o", os.path.join(tmp, "orig.cubin")] + common,
                                   capture_output=True, text=True)
                cubins[m.file] = open(os.path.join(tmp, "orig.cubin"), "rb").read() if r.returncode == 0 else None
            write(src, mutate(orig, m))
            try:
                r = subprocess.run([nvcc, "-c", src, "-o", os.path.join(tmp, "x.o"), "-Xcompiler", "-fPIC"] + common,
                                   capture_output=True, text=True)
                ok = r.returncode == 0
                same = None
                if ok and cubins[m.file] is not None:
                    r2 = subprocess.run([nvcc, "-cubin", src, "-o", os.path.join(tmp, "mut.cubin")] + common,
                                        capture_output=True, text=True)
                    if r2.returncode == 0:
                        same = open(os.path.join(tmp, "mut.cubin"), "rb").read() == cubins[m.file]
            finally:
                write(src, orig)
            verdict = "compiles" if ok else "DOES NOT COMPILE"
            diff = {None: "cubin not compared", True: "SAME CUBIN (equivalent mutant)", False: "cubin differs"}[same]
            out(f"{m.id:<28} {m.file:<26} sm_{arch:<4}{verdict:<17}{diff:<32}{time.time() - t0:6.1f} s")
            if not ok:
                out((r.stdout + r.stderr)[-3000:])
            failed += (not ok) or same is True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out(f"check-local: {len(mutants) - failed} of {len(mutants)} mutants compile and change the device code")
    return 1 if failed else 0


# ---- --run ------------------------------------------------------------------------------------------------------
def make_copy(dest):
    """The sources a build and the tests need (no built .so, no build/ or caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "build", ".pytest_cache", "*.egg-info")
    os.makedirs(dest)
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), dest)
    for name in ("csrc", "jamba_ext", "tests"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name), ignore=ignore)


def build_env(jobs=BUILD_JOBS):
    env = dict(os.environ, JAMBA_EXT_CUDA="1", JAMBA_EXT_ARCHS="90", JAMBA_EXT_JOBS=str(jobs),
               JAMBA_EXT_REUSE_OBJECTS="1")
    env.pop("JAMBA_EXT_PTX", None)
    return env


def seed_from_base(base, copy, m):
    """A mutant's copy starts from the base build's objects (setup.py's JAMBA_EXT_REUSE_OBJECTS=1 keeps every object
    newer than its file and the headers): the mutated file is stamped now, after them, so it alone is recompiled."""
    shutil.copytree(os.path.join(base, "build"), os.path.join(copy, "build"))   # copy2: the objects' times kept
    os.utime(os.path.join(copy, "csrc", "cuda", m.file), None)


ACTIVE = set()  # running build processes (killed when the run stops early)


def build(copy, log_path, timeout, jobs=BUILD_JOBS):
    """(ok, seconds, note) of one build of copy"""
    t0 = time.time()
    with open(log_path, "w") as log:
        p = subprocess.Popen([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=copy,
                             env=build_env(jobs), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ACTIVE.add(p)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(p)
            return False, time.time() - t0, f"timeout after {timeout:.0f} s"
        finally:
            ACTIVE.discard(p)
    built = [f for f in os.listdir(os.path.join(copy, "jamba_ext")) if f.startswith("_C") and f.endswith(".so")]
    if rc != 0 or not built:
        return False, time.time() - t0, f"rc {rc}" + ("" if built else ", no _C .so")
    return True, time.time() - t0, ""


def kill(p):
    """ends build process p and its nvcc children (its own session's process group)"""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    p.wait()


# runs pytest in the copy after printing which jamba_ext / _C it imported (argv: copy, pytest args...)
RUNNER = r"""
import os, sys
copy = os.path.realpath(sys.argv[1])
import torch, jamba_ext, jamba_ext._C as C
from jamba_ext import ops
print("imported jamba_ext from", jamba_ext.__file__, "| _C from", C.__file__, "| cuda kernels:",
      ops.has_cuda_kernels(), "| GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else None,
      flush=True)
if not os.path.realpath(C.__file__).startswith(copy + os.sep):
    print("WRONG IMPORT: _C is not the copy's", flush=True)
    sys.exit(99)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def test_env(copy):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAMBA_EXT_")}  # default dispatch only
    env["PYTHONPATH"] = copy + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def have_pytest_timeout():
    return importlib.util.find_spec("pytest_timeout") is not None


def run_tests(copy, args, timeout, log_path):
    """(status, seconds, first failing test or reason, import line) of one pytest run in copy"""
    t0 = time.time()
    cmd = [sys.executable, "-c", RUNNER, copy] + args
    try:
        r = subprocess.run(cmd, cwd=copy, env=test_env(copy), capture_output=True, text=True, timeout=timeout)
        text, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = None
    dt = time.time() - t0
    if log_path:
        write(log_path, " ".join(cmd[:2] + ["<RUNNER>"] + cmd[3:]) + "\n" + text)
    imp = next((line for line in text.splitlines() if line.startswith("imported jamba_ext")), "import line missing")
    first = next((line.split(" - ")[0] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))), "")
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if rc is None:
        return "KILLED", dt, f"timeout after {timeout:.0f} s (per-mutant limit) {first}".strip(), imp
    if rc == 0:
        passed = re.search(r"(\d+) passed", last)
        if not passed:
            return "ERROR", dt, f"no test ran: {last}", imp
        return "SURVIVED", dt, last, imp
    if rc == 1:
        if not first and "+ Timeout +" in text:
            return "KILLED", dt, f"a test ran past pytest-timeout's {TEST_TIMEOUT} s", imp
        return "KILLED", dt, first or last, imp
    if rc < 0:
        return "KILLED", dt, f"crash (signal {-rc}) {first}".strip(), imp
    if rc == 99:
        return "ERROR", dt, "wrong jamba_ext imported", imp
    return "ERROR", dt, f"pytest rc {rc}: {last}", imp


def collect(args):
    """node ids that pytest collects for args (in the repo root, whose jamba_ext is importable here)"""
    sel = [a for a in args if a not in ("-x", "-rfE")]
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only"] + sel, cwd=ROOT, capture_output=True,
                       text=True)
    return {line.strip() for line in r.stdout.splitlines() if "::" in line}, r


def run(out, dry, budget, log_dir, mutants):
    work = tempfile.mkdtemp(prefix="jamba_mutation_")
    try:
        return run_in(work, out, dry, budget, log_dir, mutants)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_in(work, out, dry, budget, log_dir, mutants):
    start = time.time()
    left = lambda: budget - (time.time() - start)  # noqa: E731
    out(f"work dir {work}; {len(mutants)} mutants; budget {budget:.0f} s; {BUILD_PARALLEL} builds at a time, "
        f"{BUILD_JOBS} nvcc jobs each; python {sys.executable}")
    copies = {"base": os.path.join(work, "base")}
    make_copy(copies["base"])
    for m in mutants:
        copies[m.id] = os.path.join(work, m.id)
        make_copy(copies[m.id])
        path = os.path.join(copies[m.id], "csrc", "cuda", m.file)
        write(path, mutate(read(path), m))
    out(f"copies made and mutants applied in {time.time() - start:.1f} s")
    timeout_opt = [f"--timeout={TEST_TIMEOUT}", "--timeout-method=thread"] if (dry or have_pytest_timeout()) else []
    if not timeout_opt:
        out("note: pytest-timeout is not installed: no per-test timeout (the per-mutant limit still holds)")
    files, k_union = union_selection(mutants)
    base_args = pytest_args(files, k_union) + timeout_opt
    build_cmd = (f"JAMBA_EXT_CUDA=1 JAMBA_EXT_ARCHS=90 JAMBA_EXT_REUSE_OBJECTS=1 JAMBA_EXT_JOBS=N {sys.executable} "
                 "setup.py -q build_ext --inplace")

    if dry:
        out(f"[dry] would build the base copy (N = {os.cpu_count()}), then {len(copies) - 1} mutant copies from its "
            f"objects, {BUILD_PARALLEL} at a time (N = {BUILD_JOBS}): (cd COPY && {build_cmd})")
        ids_union = set()
        for name, copy in copies.items():
            m = next((x for x in mutants if x.id == name), None)
            args = base_args if m is None else pytest_args(m.tests, m.k) + timeout_opt
            ids, r = collect([a for a in args if not a.startswith("--timeout")])
            if m is not None:
                ids_union |= ids
            out(f"[dry] {name:<28} cwd={copy} PYTHONPATH={copy} python3 -c RUNNER {copy} "
                + " ".join(repr(a) if " " in a else a for a in args))
            out(f"[dry] {name:<28} collects {len(ids)} tests" + ("" if ids else "  <-- NOTHING COLLECTED:\n"
                                                                  + r.stdout[-2000:] + r.stderr[-2000:]))
            if m is not None:
                diff = subprocess.run(["diff", os.path.join(ROOT, "csrc", "cuda", m.file),
                                       os.path.join(copy, "csrc", "cuda", m.file)], capture_output=True, text=True)
                out("\n".join("        " + line for line in diff.stdout.splitlines()))
        base_ids, _ = collect([a for a in base_args if not a.startswith("--timeout")])
        extra = len(base_ids - ids_union)
        out(f"[dry] base union collects {len(base_ids)} tests; union of the mutants' selections {len(ids_union)}"
            + (f"; {extra} tests only in the base run (a -k term matched another file)" if extra else "")
            + ("" if ids_union <= base_ids else "; SOME MUTANT TESTS ARE NOT IN THE BASE RUN"))
        return 0

    def logp(name, kind):
        return os.path.join(log_dir, f"{name}.{kind}.log") if log_dir else os.path.join(work, f"{name}.{kind}.log")

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=BUILD_PARALLEL)
    # the base copy first, on every core; then each mutant's copy from the base's objects (only its file recompiled)
    futs = {"base": pool.submit(build, copies["base"], logp("base", "build"), min(BUILD_TIMEOUT, max(left(), 1)),
                                os.cpu_count() or BUILD_JOBS)}
    results = []

    def wait_build(name):
        try:
            ok, dt, note = futs[name].result(timeout=max(left(), 0.1))
        except concurrent.futures.TimeoutError:
            return None, 0.0, "budget spent waiting for its build"
        if not ok:
            out(f"build of {name} FAILED ({note}, {dt:.0f} s); tail of its log:")
            out(read(logp(name, "build"))[-3000:])
        return ok, dt, note

    try:
        ok, dt, note = wait_build("base")
        out(f"base build {dt:.0f} s")
        if not ok:
            out(f"base failed (build: {note}): stop")
            return 2
        for m in mutants:
            seed_from_base(copies["base"], copies[m.id], m)
            futs[m.id] = pool.submit(build, copies[m.id], logp(m.id, "build"), min(BUILD_TIMEOUT, max(left(), 1)))
        out(f"base: union of the selections: pytest {' '.join(base_args)}")
        status, dt, info, imp = run_tests(copies["base"], base_args, min(BASE_TIMEOUT, left()), logp("base", "test"))
        out(f"  {imp}")
        out(f"base {'passed' if status == 'SURVIVED' else 'FAILED (' + status + ')'} {dt:.1f} s: {info}")
        if status != "SURVIVED":  # i.e. passed
            out("base failed: the unmutated copy does not pass the selections; stop")
            return 2
        for m in mutants:
            if left() < 15:
                results.append((m, "NOT-RUN", 0.0, "budget spent"))
                continue
            ok, bdt, note = wait_build(m.id)
            if ok is None:
                results.append((m, "NOT-RUN", 0.0, note))
            elif not ok:
                results.append((m, "BUILD-FAIL", bdt, note))
            else:
                args = pytest_args(m.tests, m.k) + timeout_opt
                status, dt, info, imp = run_tests(copies[m.id], args, min(MUTANT_TIMEOUT, max(left(), 1)),
                                                  logp(m.id, "test"))
                out(f"  {imp}")
                results.append((m, status, dt, info))
            m, status, dt, info = results[-1]
            out(f"{m.id:<28} {status:<10} {dt:6.1f} s  {info}")
    finally:
        for f in futs.values():
            f.cancel()
        for p in list(ACTIVE):
            kill(p)
        pool.shutdown(wait=True)

    out("")
    out("mutant                       result      time  first failing test / note")
    for m, status, dt, info in results:
        out(f"{m.id:<28} {status:<10} {dt:6.1f} s  {info}")
    counts = collections.Counter(status for _, status, _, _ in results)
    valid = counts["KILLED"] + counts["SURVIVED"]
    out(f"summary: {counts['KILLED']} killed, {counts['SURVIVED']} survived, {counts['BUILD-FAIL']} build-fail, "
        f"{counts['ERROR']} error, {counts['NOT-RUN']} not run; mutation score "
        f"{counts['KILLED']}/{valid}; total {time.time() - start:.0f} s")
    for m, status, _, _ in results:
        if status == "SURVIVED":
            out(f"SURVIVED: {m.id} ({m.file}): {m.desc}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants")
    ap.add_argument("--check-local", action="store_true", help="compile every mutant with nvcc (no GPU)")
    ap.add_argument("--run", action="store_true", help="build the copies and run the selections (GPU machine)")
    ap.add_argument("--dry", action="store_true", help="with --run: no builds, no test runs; collect the tests")
    ap.add_argument("--out", help="tee the output to this file (its directory also gets mutation_cuda_logs/)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds after which no new work starts")
    ap.add_argument("--only", help="comma-separated mutant ids: --list / --check-local / --run only these")
    a = ap.parse_args()
    out = Tee(a.out)
    ids = [m.id for m in MUTANTS]
    assert len(set(ids)) == len(ids), "duplicate mutant ids"
    for m in MUTANTS:  # every snippet once in the checkout's file
        mutate(read(os.path.join(ROOT, "csrc", "cuda", m.file)), m)
    mutants = MUTANTS
    if a.only:
        want = [x.strip() for x in a.only.split(",") if x.strip()]
        unknown = [x for x in want if x not in ids]
        if unknown:
            sys.exit(f"--only: unknown mutant ids {', '.join(unknown)} (--list shows them)")
        mutants = [m for m in MUTANTS if m.id in want]
    if a.list:
        for m in mutants:
            out(f"{m.id} ({m.file}): {m.desc}\n    old: {m.old!r}\n    new: {m.new!r}\n"
                f"    tests: {' '.join(m.tests)} -m cuda -k {m.k!r}")
        return 0
    if a.check_local:
        return check_local(out, mutants)
    if a.run:
        log_dir = None
        if a.out:
            log_dir = os.path.join(os.path.dirname(os.path.abspath(a.out)), "mutation_cuda_logs")
            os.makedirs(log_dir, exist_ok=True)
        return run(out, a.dry, a.budget, log_dir, mutants)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
