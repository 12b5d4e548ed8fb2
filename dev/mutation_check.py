"""Mutation testing of the CPU C kernels (csrc/cpu/*.c): which faults do the CPU tests catch?

Each mutant below is one small, realistic fault in one kernel (an off-by-one, a dropped term, a skipped activation,
a state not written back, a removed argument check, another rounding order in bf16 / fp16): an exact snippet of
the file (it must occur there exactly once) and its replacement. The script makes a git worktree of HEAD in a
temporary directory, copies in the test files that differ from HEAD in this checkout (so new tests count before
they are committed), builds the unmutated extension there and runs the union of the mutants' test files (they
must pass), then per mutant: applies it, rebuilds (JAMBA_EXT_CUDA=0 python3 setup.py -q build_ext --inplace
--force, ~4 s), runs its tests

    python3 -m pytest -q -x -p no:cacheprovider -m "not cuda and not slow" <tests>

with cwd = the worktree and PYTHONPATH = the worktree (so `import jamba_ext` is the mutated build, not this
checkout's), restores the file and records
    KILLED     the tests failed (or crashed, or ran past the per-mutant timeout: a hang counts as caught),
    SURVIVED   the tests passed: a fault the tests miss (or an equivalent mutant, marked as such with the reason),
    BUILD-FAIL the mutant does not compile (a defect of this list: fix the mutant),
    NO-TESTS   pytest collected nothing (a defect of this list: fix the test selection).
The worktree is removed at the end, also on an error or Ctrl-C. Nothing in this checkout is built or changed (but
the --out log).

    python3 dev/mutation_check.py [--out benchmarks/results/mutation_cpu_<sha>.log] [--only id1,id2] [--list]
                                  [--timeout 300] [--python]

The whole list takes ~10-15 minutes on 2 cores (one build and one pytest run per mutant).

--python runs PY_MUTANTS instead: faults in the Python model code (jamba_ext/modeling_jamba.py: layer schedule,
attention / GQA / KV cache, the Mamba mixer's glue, residuals and norms, logits_to_keep, checkpoint names, generate();
beam_search.py, logits_filters.py, lora.py, moe.py, placement.py, tokenizer.py, continuous.py, batch.py), checked by
the model-level tests (tests/test_model.py, test_logits_filters.py, test_beam_search.py, ...). The extension is built
once; a .py mutant needs no rebuild. --only takes ids of either list (a C mutant rebuilds, a .py one does not). ~10
minutes on 2 cores.
"""
import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not cuda and not slow"]
BUILD_TIMEOUT_S = 600


@dataclass
class Mutant:
    id: str
    file: str                 # relative to the repository root
    orig: str                 # exact snippet, must occur exactly once in the file
    repl: str
    fault: str                # one line: what the fault is
    tests: List[str]          # pytest arguments: files, node ids, or "-k", "expr"
    equivalent: str = ""      # why a surviving mutant changes nothing observable ("" = not equivalent)


CPU = "csrc/cpu/"
T_NORM, T_ERR, T_CONV = "tests/test_rms_norm.py", "tests/test_errors.py", "tests/test_causal_conv1d.py"
T_SCAN, T_SCAN_BWD = "tests/test_selective_scan.py", "tests/test_selective_scan_bwd.py"
T_STEP, T_MOE, T_GEMV = "tests/test_mamba_step.py", "tests/test_moe.py", "tests/test_gemv.py"
T_CE, T_ATTN, T_FP8 = "tests/test_cross_entropy.py", "tests/test_decode_attention.py", "tests/test_fp8.py"
T_SR = "tests/test_sample_rows.py"

MUTANTS = [
    # ---- rms_norm.c ---------------------------------------------------------------------------------------------
    Mutant("rms_eps_dropped", CPU + "rms_norm.c",
           "const float inv = 1.0f / sqrtf(ss / (float)dim + eps);",
           "const float inv = 1.0f / sqrtf(ss / (float)dim);",
           "eps left out of rsqrt(mean(x^2) + eps)", [T_NORM]),
    Mutant("rms_lowp_one_rounding", CPU + "rms_norm.c",
           "row[i] = jamba_round_to(dt, row[i] * inv) * w[i];",
           "row[i] = row[i] * inv * w[i];",
           "bf16/fp16: x * r not rounded to the dtype before the weight multiply (HF rounds twice)", [T_NORM]),
    Mutant("add_rms_sum_unrounded", CPU + "rms_norm.c",
           "row[i] = jamba_round_to(dt, row[i] + tmp[i]);",
           "row[i] = row[i] + tmp[i];",
           "bf16/fp16 add_rms_norm: x + residual normalised unrounded (HF normalises the rounded sum)", [T_NORM]),
    Mutant("rms_eps_check_removed", CPU + "rms_norm.c",
           "    if (!(p->eps >= 0.0) || !isfinite(p->eps))\n"
           "        return jamba_set_error(JAMBA_ERR_ARG, \"%s: eps must be a finite number >= 0, got %g\", op, "
           "p->eps);\n",
           "",
           "rms_norm's check of eps (finite, >= 0) removed", [T_ERR, T_NORM]),
    # ---- rms_norm_bwd.c -----------------------------------------------------------------------------------------
    Mutant("rmsbwd_c_missing_r", CPU + "rms_norm_bwd.c",
           "const float c = (float)(sgx / (double)n) * r * r * r;",
           "const float c = (float)(sgx / (double)n) * r * r;",
           "dx: the projection term's r^3 taken as r^2", [T_NORM]),
    Mutant("rmsbwd_dw_segment_boundary", CPU + "rms_norm_bwd.c",
           "while (p->ends[s] <= i) s++;",
           "while (p->ends[s] < i) s++;",
           "dweight: the first column of each later segment uses the previous segment's r (off by one)", [T_NORM]),
    Mutant("rmsbwd_dw_xhat_unrounded", CPU + "rms_norm_bwd.c",
           "const float xh = jamba_round_to(dt, jamba_load(xr, dt, i) * rr[m * ns + seg[i - c0]]);",
           "const float xh = jamba_load(xr, dt, i) * rr[m * ns + seg[i - c0]];",
           "bf16/fp16 dweight: sum dy * x r instead of dy * round(x r) (the forward multiplies the rounded x r)",
           [T_NORM]),
    # ---- causal_conv1d.c ----------------------------------------------------------------------------------------
    Mutant("conv_init_tap_offbyone", CPU + "causal_conv1d.c",
           "const int64_t pos = S_in - (K - 1) + j; /* index into initial_state */",
           "const int64_t pos = S_in - K + j; /* index into initial_state */",
           "history taps read from initial_state one step too early", [T_CONV]),
    Mutant("conv_final_state_shift", CPU + "causal_conv1d.c",
           "const int64_t pos = S_in + L - S_out + j;",
           "const int64_t pos = S_in + L - S_out + j - 1;",
           "final_state taken one step too early (drops the last input)", [T_CONV]),
    Mutant("conv_update_fast_state_x", CPU + "causal_conv1d.c",
           "st[4 * c + 2] = h3, st[4 * c + 3] = xv;",
           "st[4 * c + 2] = h3, st[4 * c + 3] = h3;",
           "f32 decode fast path: the new input is not written into the conv state", [T_CONV]),
    Mutant("conv_update_window_oldest", CPU + "causal_conv1d.c",
           "win[j] = jamba_load(p->conv_state.data, dt, so + S - (K - 1) + j);",
           "win[j] = jamba_load(p->conv_state.data, dt, so + j);",
           "update: the window takes the oldest K-1 state entries instead of the newest (S > K-1)", [T_CONV]),
    Mutant("conv_init_width_check_removed", CPU + "causal_conv1d.c",
           "        if (p->initial_state.shape[2] < K - 1)\n            return",
           "        if (0)\n            return",
           "causal_conv1d's check that initial_state holds >= K-1 steps removed", [T_ERR, T_CONV]),
    # ---- causal_conv1d_bwd.c ------------------------------------------------------------------------------------
    Mutant("convbwd_silu_deriv", CPU + "causal_conv1d_bwd.c",
           "g[H + t] *= s * (1.f + pre * (1.f - s));",
           "g[H + t] *= s;",
           "backward: SiLU'(x) taken as sigmoid(x) (the x s (1 - s) term dropped)", [T_CONV]),
    Mutant("convbwd_dinit_shift", CPU + "causal_conv1d_bwd.c",
           "jamba_store(dr, dt, S_in - H + j, dh[j]);",
           "jamba_store(dr, dt, S_in - H + j, dh[j + 1]);",
           "dinitial_state read one position late from the history gradient", [T_CONV]),
    # ---- selective_scan.c ---------------------------------------------------------------------------------------
    Mutant("scan_D_dropped", CPU + "selective_scan.c",
           "if (p->D.data)\n                        for (int64_t t = 0; t < nt; t++) yb[t] += Dc * ub[t];",
           "if (0)\n                        for (int64_t t = 0; t < nt; t++) yb[t] += Dc * ub[t];",
           "selective_scan: the D * u skip term dropped", [T_SCAN]),
    Mutant("scan_delta_bias_dropped", CPU + "selective_scan.c",
           "for (int64_t t = 0; t < nt; t++) db[t] += dbias;",
           "(void)dbias;",
           "selective_scan: delta_bias not added to delta", [T_SCAN]),
    Mutant("scan_z_gate_no_silu", CPU + "selective_scan.c",
           "for (int64_t t = 0; t < nt; t++) yb[t] *= db[t];",
           "for (int64_t t = 0; t < nt; t++) yb[t] *= zb[t];",
           "selective_scan: output gated by z instead of silu(z)", [T_SCAN]),
    Mutant("scan_initial_state_ignored", CPU + "selective_scan.c",
           "        if (p->initial_state.data) {\n            for (int64_t c = 0; c < DI; c++)",
           "        if (0) {\n            for (int64_t c = 0; c < DI; c++)",
           "selective_scan: initial_state ignored (scan starts from zeros)", [T_SCAN]),
    Mutant("ssu_lowp_state_not_stored", CPU + "selective_scan.c",
           "        if (sdt != JAMBA_F32)\n            for (int64_t c = 0; c < nc; c++)\n"
           "                jamba_store_row(",
           "        if (0)\n            for (int64_t c = 0; c < nc; c++)\n                jamba_store_row(",
           "selective_state_update: a bf16/fp16 state is updated in a copy and never written back", [T_SCAN]),
    # ---- selective_scan_bwd.c -----------------------------------------------------------------------------------
    Mutant("sbwd_dA_no_decay", CPU + "selective_scan_bwd.c",
           "dA[n] += gn * ha * dt;",
           "dA[n] += gn * hp[n] * dt;",
           "dA: the exp(dt A) factor of d h_t / d A dropped", [T_SCAN_BWD]),
    Mutant("sbwd_softplus_deriv", CPU + "selective_scan_bwd.c",
           "dsp[t] = sp ? sb_sigmoid(xt) : 1.f;",
           "dsp[t] = 1.f;",
           "ddelta: softplus' derivative (sigmoid) dropped", [T_SCAN_BWD]),
    # ---- mamba_step.c -------------------------------------------------------------------------------------------
    Mutant("ms_B_C_swapped", CPU + "mamba_step.c",
           "q->ssu.Bm = cols_view(&nrm, R, N);\n    q->ssu.Cm = cols_view(&nrm, R + N, N);",
           "q->ssu.Bm = cols_view(&nrm, R + N, N);\n    q->ssu.Cm = cols_view(&nrm, R, N);",
           "mamba_inner_step: B and C taken from each other's columns of x_proj", [T_STEP]),
    Mutant("ms_dt_rank_check", CPU + "mamba_step.c",
           "if (R < 1 || R + 2 * N != NO)",
           "if (R < 1)",
           "mamba_inner_step: check dt_rank + 2 d_state == x_proj rows removed", [T_STEP]),
    # ---- moe.c --------------------------------------------------------------------------------------------------
    Mutant("route_ties_to_higher_id", CPU + "moe.c",
           "if (best < 0 || buf[e] > buf[best]) best = e;",
           "if (best < 0 || buf[e] >= buf[best]) best = e;",
           "moe_route: equal probabilities go to the higher expert id (documented: the lower)", [T_MOE]),
    Mutant("route_no_max_subtraction", CPU + "moe.c",
           "float v = expf((float)buf[e] - m);",
           "float v = expf((float)buf[e]);",
           "moe_route: softmax without subtracting the row max (exp overflows for logits > 88)", [T_MOE]),
    Mutant("route_renormalised", CPU + "moe.c",
           "        buf[best] = -1.0;\n    }\n}",
           "        buf[best] = -1.0;\n    }\n    float ws = 0.f;\n    for (int64_t j = 0; j < K; j++) ws += w[j];\n"
           "    for (int64_t j = 0; j < K; j++) w[j] /= ws;\n}",
           "moe_route: top-k weights renormalised to sum 1 (Jamba keeps the raw softmax)", [T_MOE]),
    Mutant("permute_unstable", CPU + "moe.c",
           "for (int64_t s = 0; s < slots; s++) { /* stable: slots in ascending order */",
           "for (int64_t s = slots - 1; s >= 0; s--) { /* stable: slots in ascending order */",
           "moe_permute: slots of one expert in descending token order (not stable)", [T_MOE]),
    Mutant("combine_weight_dropped", CPU + "moe.c",
           "const float o = jamba_round_to(dt, row[h] * wr);",
           "const float o = row[h];",
           "moe_combine: the routing weight not applied", [T_MOE]),
    Mutant("combine_weight_unrounded", CPU + "moe.c",
           "const float wr = jamba_round_to(dt, w[s]);",
           "const float wr = w[s];",
           "bf16/fp16 moe_combine: the fp32 routing weight not rounded to the dtype first (HF: weights.to(dtype))",
           [T_MOE]),
    Mutant("combine_permutation_check", CPU + "moe.c",
           "if (s < 0 || s >= slots || pos[s] >= 0)",
           "if (s < 0 || s >= slots)",
           "moe_combine: a repeated entry of sorted_slots (not a permutation) no longer refused", [T_MOE]),
    Mutant("silu_mul_one_rounding", CPU + "moe.c",
           "const float a = jamba_round_to(dt, g / (1.f + expf(-g)));",
           "const float a = g / (1.f + expf(-g));",
           "bf16/fp16 silu_mul: silu(g) not rounded to the dtype before * up (HF: two ops, two roundings)", [T_MOE]),
    Mutant("grad_rows_weight_index", CPU + "moe.c",
           "grad_rows_scale(g, jamba_round_to(dt, w[s]), H);",
           "grad_rows_scale(g, jamba_round_to(dt, w[q]), H);",
           "moe_grad_rows: routing weight indexed by sorted position instead of slot", [T_MOE]),
    # ---- gemv.c -------------------------------------------------------------------------------------------------
    Mutant("gemv_bias_dropped", CPU + "gemv.c",
           "const float b = p->bias.data ? jamba_load(p->bias.data, p->bias.dtype, n) : 0.f;",
           "const float b = 0.f;",
           "gemv: bias not added", [T_GEMV]),
    Mutant("gemv_tail_short", CPU + "gemv.c",
           "for (int j = 0; k + j < K; j++) s[j] += a[k + j] * b[k + j];",
           "for (int j = 0; k + j < K - 1; j++) s[j] += a[k + j] * b[k + j];",
           "gemv: the last product of a K that is not a multiple of 8 dropped (tail loop off by one)", [T_GEMV]),
    # ---- cross_entropy.c ----------------------------------------------------------------------------------------
    Mutant("ce_ignore_index", CPU + "cross_entropy.c",
           "if (t != ign && (t < 0 || t >= V))",
           "if (t < 0 || t >= V)",
           "cross_entropy: targets equal to ignore_index refused as out of range", [T_CE]),
    Mutant("ce_no_max_subtraction", CPU + "cross_entropy.c",
           "#pragma omp simd reduction(max : m)\n    for (int64_t v = 0; v < V; v++) m = row[v] > m ? row[v] : m;",
           "m = 0.f; /* no max subtraction */",
           "cross_entropy: log-sum-exp without subtracting the row max", [T_CE]),
    Mutant("ce_nan_row_lse_neg_inf", CPU + "cross_entropy.c",
           "const float l = m == -INFINITY && s == 0.0 ? -INFINITY : m + (float)log(s);",
           "const float l = m == -INFINITY ? -INFINITY : m + (float)log(s);",
           "cross_entropy: a row of NaN logits gets lse -inf (the max skips NaNs) instead of NaN", [T_CE, "-k", "nan"]),
    Mutant("ce_bwd_nan_row_neg_inf_zero", CPU + "cross_entropy.c",
           "row[v] = z == -INFINITY ? 0.f * d : e;",
           "row[v] = row[v] == -INFINITY ? 0.f * d : e;",
           "cross_entropy_bwd: a -inf logit gets gradient 0 in a row whose lse is NaN or -inf (exp(-inf - lse) is NaN "
           "there)", [T_CE, "-k", "nan"]),
    # ---- sample_rows.c (session 51) -----------------------------------------------------------------------------
    Mutant("sr_select_boundary", CPU + "sample_rows.c",
           "h[by_mass ? j : 255 - j] <= target; j++)", "h[by_mass ? j : 255 - j] < target; j++)",
           "sample_rows: the radix selection's boundary digit one off (top_k one column short; top_p one short where "
           "the dropped mass reaches the limit exactly)", [T_SR]),
    Mutant("sr_select_no_carry", CPU + "sample_rows.c",
           "j++) target -= h[by_mass ? j : 255 - j];", "j++) {}",
           "sample_rows: the later radix passes do not subtract the digits passed (the wrong rank or mass inside "
           "the group)", [T_SR]),
    Mutant("sr_presence_sign", CPU + "sample_rows.c",
           "x = x - (c > 0 ? pres : 0.0f);", "x = x + (c > 0 ? pres : 0.0f);",
           "sample_rows: presence_penalty raises the tokens already given", [T_SR]),
    Mutant("sr_gumbel_sign", CPU + "sample_rows.c",
           "const float g = s[v] - logf(-logf(u));", "const float g = s[v] + logf(-logf(u));",
           "sample_rows: the Gumbel noise with the wrong sign (draws no longer follow the softmax)", [T_SR]),
    Mutant("sr_min_p_half", CPU + "sample_rows.c",
           "expf(s[v] - m) < min_p)", "expf(s[v] - m) < 0.5f * min_p)",
           "sample_rows: min_p keeps tokens down to half its threshold", [T_SR]),
    Mutant("sr_greedy_last_tie", CPU + "sample_rows.c",
           "if (x > s[best]) best = v;", "if (x >= s[best]) best = v;",
           "sample_rows: greedy rows take the last of tied maxima (torch.argmax: the first)", [T_SR]),
    Mutant("sr_nan_not_neg_inf", CPU + "sample_rows.c",
           "x = x == x ? x : -INFINITY;", "(void)x;",
           "sample_rows: a NaN logit not read as -inf (at column 0 it is the greedy argmax; its key is the largest, "
           "so top_k keeps it)", [T_SR, "-k", "nan"]),
    Mutant("sr_rng_row_word", CPU + "sample_rows.c",
           "rw = rng ? 0u : (uint32_t)r;", "rw = (uint32_t)r;",
           "sample_rows: a row with its own key still puts its row index in the counter (its draws depend on its "
           "place in the batch)", [T_SR, "-k", "rng"]),
    Mutant("sr_rng_key_ignored", CPU + "sample_rows.c",
           "const uint64_t seed = rng ? (uint64_t)rng[0] : p->seed,", "const uint64_t seed = p->seed,",
           "sample_rows: a row's own key ignored (the call's seed instead)", [T_SR, "-k", "rng"]),
    Mutant("sr_uniform_one", "csrc/common.h",
           "return u < 1.0f ? u : 0.99999994f;", "return u;",
           "sample_rows (session 53): the top uniform left at 1.0 (f32 rounding of (2^24 - 1) + 0.5): a Gumbel noise "
           "of +inf wins the draw", [T_SR, "-k", "uniform"]),
    # ---- decode_attention.c -------------------------------------------------------------------------------------
    Mutant("attn_scale_dropped", CPU + "decode_attention.c",
           "s[j] = d * scale;",
           "s[j] = d;",
           "decode_attention: scores not multiplied by the scale", [T_ATTN]),
    Mutant("attn_last_key_excluded", CPU + "decode_attention.c",
           "for (int64_t j = 0; j < S; j++) {\n                if (mask && !mask[j * ms]) continue;\n"
           "                const float e",
           "for (int64_t j = 0; j < S - 1; j++) {\n                if (mask && !mask[j * ms]) continue;\n"
           "                const float e",
           "decode_attention: the last key left out of the weighted sum", [T_ATTN]),
    Mutant("attn_no_max_subtraction", CPU + "decode_attention.c",
           "const float e = expf(s[j] - m);",
           "const float e = expf(s[j]);",
           "decode_attention: softmax without subtracting the max score (exp overflows for scores > 88)", [T_ATTN]),
    Mutant("attn_nan_score_skipped", CPU + "decode_attention.c",
           "m = (s[j] > m || s[j] != s[j]) ? s[j] : m;",
           "m = s[j] > m ? s[j] : m;",
           "decode_attention: the max skips NaN scores, so a row whose scores are all NaN (a NaN in q) gives 0, not "
           "NaN",
           [T_ATTN, "-k", "nan"]),
    # ---- fp8.c --------------------------------------------------------------------------------------------------
    Mutant("fp8_subnormal_exponent", CPU + "fp8.c",
           "v = ldexpf((float)m, -9);",
           "v = ldexpf((float)m, -10);",
           "e4m3 table: subnormals scaled by 2^-10 instead of 2^-9", [T_FP8]),
    Mutant("fp8_up_uses_gate_scale", CPU + "fp8.c",
           "const float u = jamba_round_to(dt, sgu[e * 2 * F + F + f] *",
           "const float u = jamba_round_to(dt, sgu[e * 2 * F + f] *",
           "moe_experts_fp8: the up row scaled by the gate row's scale", [T_FP8]),
    Mutant("fp8_dot_tail_short", CPU + "fp8.c",
           "for (int i = 0; k < K; k++, i++) s[i] += lut[w[k]] * x[k];",
           "for (int i = 0; k < K - 1; k++, i++) s[i] += lut[w[k]] * x[k];",
           "moe_experts_fp8: the last product of a dot whose length is not a multiple of 8 dropped", [T_FP8]),
]


# ---- the Python model code (--python) ------------------------------------------------------------------------------
# No rebuild: the worktree's extension is built once, each mutant only edits a .py file (PYTHONDONTWRITEBYTECODE=1
# in the tests' environment, so no stale bytecode is read).
MJ, LF, BS = "jamba_ext/modeling_jamba.py", "jamba_ext/logits_filters.py", "jamba_ext/beam_search.py"
T_MODEL, T_FILT, T_BEAM = "tests/test_model.py", "tests/test_logits_filters.py", "tests/test_beam_search.py"
T_LORA, T_PLACE, T_STATIC = "tests/test_lora.py", "tests/test_placement.py", "tests/test_static_decode.py"
T_CLI, T_CONT = "tests/test_generate_cli.py", "tests/test_continuous.py"
CB = "jamba_ext/continuous.py"
RS, T_RS = "jamba_ext/row_sampling.py", "tests/test_row_sampling.py"

# JambaForCausalLM._warp from its temperature line to the end of its top_p block
_WARP_TO_TOP_P = (
    "        V = scores.shape[-1]\n"
    "        if top_h is not None:\n"
    "            scores = _filters.top_h(scores, top_h)\n"
    "        if top_k and max(top_k, keep) < V:\n"
    "            kth = torch.topk(scores, max(top_k, keep), dim=-1).values[:, -1:]\n"
    "            scores = scores.masked_fill(scores < kth, float(\"-inf\"))\n"
    "        if top_p < 1.0:\n"
    "            srt, idx = torch.sort(scores, dim=-1, descending=False)\n"
    "            cum = torch.softmax(srt, dim=-1).cumsum(dim=-1)\n"
    "            drop = cum <= (1 - top_p)                     # the low tail whose mass is at most 1 - top_p\n"
    "            drop[:, -keep:] = False                       # always keep the most likely token(s)\n"
    "            scores = scores.masked_fill(drop.scatter(1, idx, drop), float(\"-inf\"))\n")

PY_MUTANTS = [
    # ---- modeling_jamba.py: config, layers, attention, cache --------------------------------------------------------
    Mutant("py_attn_layer_offset", MJ,
           '["attention" if i % self.attn_layer_period == self.attn_layer_offset else "mamba"',
           '["attention" if (i + 1) % self.attn_layer_period == self.attn_layer_offset else "mamba"',
           "layer schedule: attention layers one layer early (i + 1 against attn_layer_offset)",
           [T_MODEL, "-k", "schedule or prefill_decode_generate"]),
    Mutant("py_kv_grow_copy_short", MJ,
           "nk[:, :, :past].copy_(kb[:, :, :past])",
           "nk[:, :, :past - 1].copy_(kb[:, :, :past - 1])",
           "KV cache growth: the last stored key is not copied into the grown buffer (off by one)",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_static_position_sync", MJ,
           "            self.cache_position.fill_(self.seq_len)",
           "            self.cache_position.fill_(self.seq_len - 1)",
           "static cache: the device-side position after the prefill one short (the first step overwrites a key)",
           [T_STATIC, "-k", "matches_dynamic or host_path"]),
    Mutant("py_gqa_repeat_order", MJ,
           "k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)",
           "k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)",
           "GQA under a mask: KV heads tiled (h -> h % nkv) instead of repeated in place (h -> h // rep)",
           [T_MODEL, "-k", "padded_batch"]),
    Mutant("py_gqa_decode_rows_order", MJ,
           "o = _sdpa(q.reshape(Bsz, self.num_key_value_heads, rep, hd), k, v, step.attn_mask, False, False, drop)",
           "o = _sdpa(q.reshape(Bsz, rep, self.num_key_value_heads, hd).transpose(1, 2), k, v, step.attn_mask, "
           "False, False, drop)",
           "GQA one-token decode: query heads grouped as h = r * nkv + kv instead of kv * rep + r",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_causal_mask_strict", MJ,
           "causal = torch.arange(past + L, device=device)[None, :] <= q",
           "causal = torch.arange(past + L, device=device)[None, :] < q",
           "padded attention mask: a query does not attend to its own key (< instead of <=)",
           [T_MODEL, "-k", "padded_batch"]),
    Mutant("py_mamba_pad_mask_dropped", MJ,
           "        if mamba_mask is not None:                                        # 0. padding in",
           "        if False:                                                         # 0. padding in",
           "Mamba prefill: left-padding positions not zeroed before in_proj (pads leak into the state)",
           [T_MODEL, "-k", "padded_batch"]),
    Mutant("py_attn_pad_rows_kept", MJ,
           "        if step.mamba_mask is not None:  # padded queries",
           "        if False:  # padded queries",
           "attention: the outputs of padded queries not zeroed (transformers zeroes them; the loss sees it)",
           [T_MODEL, "-k", "padded"]),
    Mutant("py_conv_state_over_pads", MJ,
           "conv_state = _last_steps(x_in[..., :L], conv0, S)",
           "conv_state = _last_steps(x_in, conv0, S)",
           "Mamba prefill: the conv state taken from the padded time axis (its last steps are the zero pads)",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_xproj_B_C_swapped", MJ,
           "dtx, bx, cx = xdbl.split([R, N, N], dim=-1)",
           "dtx, cx, bx = xdbl.split([R, N, N], dim=-1)",
           "Mamba prefill: B and C taken from each other's columns of x_proj",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_dt_bias_twice_wrapped", MJ,
           "dt_bias = dt_bias if own else None",
           "dt_bias = dt_bias",
           "Mamba prefill with a wrapped dt_proj (LoRA): dt bias added by the module and again in the scan",
           [T_MODEL, "-k", "wrapped_mamba"]),
    Mutant("py_mixer_residual_dropped", MJ,
           "h, residual = _K.add_rms_norm(*_one_dtype(h, residual, self.pre_ff_layernorm.weight),",
           "h, residual = _K.add_rms_norm(*_one_dtype(h, torch.zeros_like(residual), self.pre_ff_layernorm.weight),",
           "decoder layer: the residual around the mixer dropped (h = mixer(x) instead of x + mixer(x))",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_wrong_norm_before_ffn", MJ,
           "h, residual = _K.add_rms_norm(*_one_dtype(h, residual, self.pre_ff_layernorm.weight),",
           "h, residual = _K.add_rms_norm(*_one_dtype(h, residual, self.input_layernorm.weight),",
           "decoder layer: the FFN input normed with input_layernorm's weight instead of pre_ff_layernorm's",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_final_norm_residual_dropped", MJ,
           "        if residual is None:\n            return self.final_layernorm(h)\n",
           "        return self.final_layernorm(h)\n",
           "final norm: the last block's residual not added (final_layernorm(ffn out) only)",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_logits_to_keep_first", MJ,
           "hk = h[:, -logits_to_keep:] if logits_to_keep > 0 else h",
           "hk = h[:, :logits_to_keep] if logits_to_keep > 0 else h",
           "logits_to_keep=n keeps the first n positions instead of the last n",
           [T_MODEL, "-k", "logits_to_keep"]),
    Mutant("py_ckpt_gate_up_swapped", MJ,
           'rows = {"gate_proj": slice(0, I), "up_proj": slice(I, 2 * I), "down_proj": slice(None)}[name]',
           'rows = {"gate_proj": slice(I, 2 * I), "up_proj": slice(0, I), "down_proj": slice(None)}[name]',
           "from_pretrained: a per-expert checkpoint's gate_proj / up_proj written into each other's fused rows",
           [T_MODEL, "-k", "from_pretrained"]),
    Mutant("py_fuse_keys_up_first", MJ,
           'state_dict[prefix + "experts.gate_up_proj"] = torch.cat([gate, up], dim=1)',
           'state_dict[prefix + "experts.gate_up_proj"] = torch.cat([up, gate], dim=1)',
           "load_state_dict of a per-expert (4.x) state dict: up rows fused before the gate rows",
           [T_MODEL, "-k", "state_dict"]),
    # ---- modeling_jamba.py: generate() ------------------------------------------------------------------------------
    Mutant("py_no_pad_after_eos", MJ,
           "nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))",
           "nxt = torch.where(unfinished, nxt, nxt)",
           "generate: a finished row keeps its picks instead of pad_token_id after its EOS",
           [T_MODEL, "-k", "prefill_decode_generate or stops_at_eos or pads_a_finished"]),
    Mutant("py_eos_not_finishing", MJ,
           "                unfinished &= ~torch.isin(nxt, eos_t)\n",
           "                pass\n",
           "generate: an EOS does not finish its row on the device (no padding after it)",
           [T_MODEL, "-k", "prefill_decode_generate or stops_at_eos or pads_a_finished"]),
    Mutant("py_criteria_not_finishing", MJ,
           "                unfinished &= ~stop\n",
           "",
           "generate: a row stopped by a stopping criterion (or a stop string) is not padded afterwards",
           [T_MODEL, "-k", "stopping_criteria or stop_strings"]),
    Mutant("py_lead_off_by_one", MJ,
           "(attention_mask.to(dev) != 0).int().argmax(dim=1)",
           "(attention_mask.to(dev) != 0).int().argmax(dim=1) + 1",
           "generate: a row's left padding counted one too long (repetition_penalty skips its first real token)",
           [T_FILT, "-k", "skips_left_padding"]),
    Mutant("py_top_p_one_too_few", MJ,
           "drop = cum <= (1 - top_p)",
           "drop = F.pad(cum[:, :-1], (1, 0)) <= (1 - top_p)",
           "top_p: the token that crosses the 1 - top_p tail is dropped too (one token too few kept)",
           [T_FILT, T_MODEL, "-k", "sampling_filters_match or sampling_seed"]),
    Mutant("py_temperature_after_top_p", MJ,
           "        scores = logits.float() / temperature\n" + _WARP_TO_TOP_P,
           "        scores = logits.float()\n" + _WARP_TO_TOP_P + "        scores = scores / temperature\n",
           "sampling: temperature applied after top_k / top_p instead of before (top_p sees the raw logits)",
           [T_FILT, "-k", "sampling_filters_match"]),
    # ---- logits_filters.py ------------------------------------------------------------------------------------------
    Mutant("py_penalty_sign_negative", LF,
           "torch.where(s < 0, s * penalty, s / penalty)",
           "torch.where(s < 0, s / penalty, s / penalty)",
           "repetition_penalty: negative logits divided (raised) instead of multiplied",
           [T_MODEL, T_FILT, "-k", "repetition_penalty or penalize_matches"]),
    Mutant("py_seen_lead_inclusive", LF,
           "seqs = seqs.masked_fill(pos[None, :] < lead[:, None], V)",
           "seqs = seqs.masked_fill(pos[None, :] <= lead[:, None], V)",
           "repetition_penalty: the first real token after the left padding not counted as seen",
           [T_FILT, "-k", "skips_left_padding"]),
    Mutant("py_ngram_short_row", LF,
           "    if n < 1 or S < n:\n        return scores",
           "    if n < 1 or S <= n:\n        return scores",
           "no_repeat_ngram_size: a row of exactly n tokens bans nothing (its one n-gram ignored)",
           [T_FILT, "-k", "ngram"]),
    Mutant("py_min_length_off_by_one", LF,
           "(self.T + i < self.min_length or i < self.min_new)",
           "(self.T + i < self.min_length - 1 or i < self.min_new)",
           "min_length: EOS allowed one step early (at length min_length - 1)",
           [T_FILT, "-k", "processor_arguments_match and min_length"]),
    Mutant("py_forced_eos_step", LF,
           "if self.forced_eos is not None and self.T + i == self.M - 1:",
           "if self.forced_eos is not None and self.T + i == self.M - 2:",
           "forced_eos_token_id forced one step before the last",
           [T_FILT, "-k", "processor_arguments_match and forced_eos"]),
    Mutant("py_eta_max_threshold", LF,
           "return _cut_below(scores, torch.minimum(e, e.sqrt() * torch.exp(-entropy)), keep)",
           "return _cut_below(scores, torch.maximum(e, e.sqrt() * torch.exp(-entropy)), keep)",
           "eta_cutoff: threshold max(eta, sqrt(eta) exp(-H)) instead of min",
           [T_FILT, "-k", "epsilon_and_eta or sampling_filters_match"]),
    # ---- beam_search.py ---------------------------------------------------------------------------------------------
    Mutant("py_beam_norm_total_length", BS,
           "hyp = top_score / float(cur + 1 - T) ** length_penalty",
           "hyp = top_score / float(cur + 1) ** length_penalty",
           "beam search: hypotheses normalised by the whole length (prompt included), not the new tokens",
           [T_BEAM, "-k", "matches_transformers"]),
    Mutant("py_beam_first_step_all_beams", BS,
           "    run_score[:, 1:] = _NEG                               # the beams are copies at first",
           "    run_score[:, 1:] = 0.0                                # the beams are copies at first",
           "beam search: at the first step every beam counts (n copies of each candidate compete)",
           [T_BEAM, "-k", "matches_transformers"]),
    Mutant("py_beam_reorder_shared_off", BS,
           "cache.reorder_rows(run_idx[:, :, i].reshape(-1), T)",
           "cache.reorder_rows(run_idx[:, :, i].reshape(-1), T + 1)",
           "beam search: the first new token's keys / values not reordered with their beams (off by one)",
           [T_BEAM, "-k", "matches_transformers"]),
    Mutant("py_beam_never_length", BS,
           'length = (M - T) if (early_stopping == "never" and length_penalty > 0.0) else (cur + 1 - T)',
           'length = (M - T - 1) if (early_stopping == "never" and length_penalty > 0.0) else (cur + 1 - T)',
           'beam search, early_stopping="never": the best reachable score taken one token short of max_new_tokens',
           [T_BEAM, "-k", "matches_transformers or never_counts"]),
    # ---- moe.py / lora.py / placement.py / tokenizer.py -------------------------------------------------------------
    Mutant("py_moe_renormalised", "jamba_ext/moe.py",
           "out = ops.moe_experts_trainable(x2, weights, ids,",
           "out = ops.moe_experts_trainable(x2, weights / weights.sum(-1, keepdim=True), ids,",
           "MoE: the top-k routing weights renormalised to sum 1 (Mixtral's; Jamba keeps the raw softmax)",
           [T_MODEL, "-k", "prefill_decode_generate"]),
    Mutant("py_lora_scale_inverted", "jamba_ext/lora.py",
           "self.base, self.r, self.alpha, self.scale = base, r, alpha, alpha / r",
           "self.base, self.r, self.alpha, self.scale = base, r, alpha, r / alpha",
           "LoRA: the update scaled by r / alpha instead of alpha / r",
           [T_LORA]),
    Mutant("py_save_lora_alpha_is_r", "jamba_ext/lora.py",
           '"r": ranks[0], "lora_alpha": alpha, "lora_dropout": 0.0,',
           '"r": ranks[0], "lora_alpha": ranks[0], "lora_dropout": 0.0,',
           "save_lora: adapter_config.json's lora_alpha written as r (PEFT would scale the adapters by 1)",
           ["tests/test_lora_peft.py"]),
    Mutant("py_load_lora_exclude_ignored", "jamba_ext/lora.py",
           "        if exclude:\n            chosen = [s for s in chosen if not _peft_match(exclude, s[1])]",
           "        if exclude and False:\n            chosen = [s for s in chosen if not _peft_match(exclude, s[1])]",
           "load_lora: exclude_modules ignored (adapters added to the excluded projections too)",
           ["tests/test_lora_peft.py"]),
    # session 66: the CLI's LoRA adapters (train --save-lora, generate --adapter) and the weight files' mode
    Mutant("py_cli_adapter_ignored", "jamba_ext/__main__.py",
           "    if adapter is not None:\n        _attach_adapter(model, adapter)",
           "    if adapter is None:\n        _attach_adapter(model, adapter)",
           "generate / serve --adapter: the adapter directory checked but never loaded onto the model",
           ["tests/test_cli_lora.py"]),
    Mutant("py_cli_adapter_unmerged", "jamba_ext/__main__.py",
           "    merge_lora(model)\n    sys.stderr.write(f\"adapter: ",
           "    sys.stderr.write(f\"adapter: ",
           "generate --adapter: the adapters left as modules (the plain-projection fast paths skipped)",
           ["tests/test_cli_lora.py"]),
    Mutant("py_cli_save_lora_unchecked", "jamba_ext/__main__.py",
           '            _make_out_dir("--save-lora", args.save_lora)',
           '            pass',
           "train --save-lora: the directory not made / checked before the weights load (a bad path fails after "
           "the training)",
           ["tests/test_cli_lora.py"]),
    Mutant("py_save_pretrained_mode_0600", "jamba_ext/modeling_jamba.py",
           "            os.chmod(os.path.join(path, fname), 0o666 & ~mask)",
           "            pass",
           "save_pretrained: the weight shards left with safetensors' mode 0600",
           ["tests/test_checkpoint_io.py"]),
    # session 67: bench_moe's kernel rows per launch (the MoE's gate_up and down on one kernel instance)
    Mutant("py_bench_kernel_times_merged", "benchmarks/bench_moe.py",
           'key = f"{n} #{k % per_call[n] + 1}" if per_call[n] > 1 else n',
           "key = n",
           "bench_moe.kernel_times: a kernel launched twice a call keeps one row (gate_up and down summed)",
           ["tests/test_benchmarks_smoke.py"]),
    Mutant("py_bench_kernel_times_per_call", "benchmarks/bench_moe.py",
           "out[key] = out.get(key, 0.0) + us / iters",
           "out[key] = out.get(key, 0.0) + us",
           "bench_moe.kernel_times: the kernels' times summed over the calls instead of per call",
           ["tests/test_benchmarks_smoke.py"]),
    Mutant("py_device_map_shortest_prefix", "jamba_ext/placement.py",
           "out[n] = keys[max(hits, key=len)]",
           "out[n] = keys[min(hits, key=len)]",
           "device_map dict: the shortest matching prefix wins instead of the longest",
           [T_PLACE]),
    Mutant("py_size_gb_as_gib", "jamba_ext/placement.py",
           '"gb": 10**9,',
           '"gb": 2**30,',
           'max_memory sizes: "GB" read as GiB (2^30 bytes) instead of 10^9',
           [T_PLACE, T_CLI, "-k", "max_memory"]),
    Mutant("py_stream_decoder_no_holdback", "jamba_ext/tokenizer.py",
           '        if text.endswith("\\ufffd"):\n            return ""\n',
           "",
           "StreamDecoder: text ending in a partial UTF-8 character printed at once (U+FFFD, then repeated)",
           [T_CLI, "-k", "stream_decoder or deterministic"]),
    # ---- continuous.py / batch.py (session 50) ---------------------------------------------------------------------
    Mutant("py_cont_mask_not_cleared", CB,
           "        c.static_mask[idx] = False\n", "",
           "continuous: a row taken over keeps its earlier prompt's key mask (the new prompt attends to old keys)",
           [T_CONT]),
    Mutant("py_cont_ssm_not_copied", CB,
           "for mine, theirs in ((c.conv_states, own.conv_states), (c.ssm_states, own.ssm_states)):",
           "for mine, theirs in ((c.conv_states, own.conv_states),):",
           "continuous: a prompt's SSM states not copied into its row (the earlier prompt's go on)",
           [T_CONT]),
    Mutant("py_cont_prefix_ssm_zero", CB,
           "own.ssm_states = [None if t is None else t.clone() for t in pre.ssm_states]",
           "own.ssm_states = [None if t is None else 0 * t for t in pre.ssm_states]",
           "continuous, shared prefix: a prompt starts from zero SSM states instead of the prefix's",
           [T_CONT, "-k", "take or prefix"]),
    Mutant("py_cont_shift_by_one_more", CB,
           "s = min((self.start[r] for r in running), default=p)",
           "s = min((self.start[r] + 1 for r in running), default=p)",
           "continuous: the keys move left one position too far (a running row loses its first key)",
           [T_CONT]),
    Mutant("py_cont_no_pos_jump", CB,
           "        if rows.pos < L:", "        if False:",
           "continuous: a prompt longer than pos is not given room (its keys written before position 0)",
           [T_CONT]),
    Mutant("py_cont_min_new_one_short", CB,
           "(self.count < self.min_new)[:, None]", "(self.count < self.min_new - 1)[:, None]",
           "continuous: min_new_tokens lets an EOS id through one token early",
           [T_CONT, "-k", "min_new"]),
    Mutant("py_cont_seen_not_reset", CB,
           "                self.seen[r] = False\n", "",
           "continuous: repetition_penalty's seen tokens carry over from a row's earlier prompt",
           [T_CONT, "-k", "repetition"]),
    # ---- row_sampling.py: each request's own settings (session 51) ---------------------------------------------------
    Mutant("py_rows_lazy_seen_no_prompt", CB,
           "self.seen[r, torch.tensor(self.prompt[r] + self.new[r], device=dev)] = True",
           "self.seen[r, torch.tensor(self.new[r] or [0], device=dev)] = True",
           "per-request repetition_penalty: the seen tokens made on first need leave out the row's prompt",
           [T_RS, "-k", "mixed"]),
    Mutant("py_rows_logprobs_not_cut", CB,
           "self.logprobs[self.seq[r]] = self.lps[r][:len(ended[-1][1])]", "self.logprobs[self.seq[r]] = self.lps[r]",
           "logprobs: a completion cut before an EOS id keeps the EOS token's entry", [T_RS, "-k", "logprobs"]),
    Mutant("py_rows_logprobs_of_max", CB,
           "(lsm.gather(1, nxt[:, None])[:, 0],)", "(lsm.amax(-1),)",
           "logprobs: the most likely token's log-probability given for the token drawn", [T_RS, "-k", "logprobs"]),
    Mutant("py_serve_score_shifted", "jamba_ext/server.py",
           "torch.tensor(ids[a + 1:b + 1], device=lsm.device)", "torch.tensor(ids[a:b], device=lsm.device)",
           "echo scoring: each token's log-probability taken at its own position, not given the tokens before it",
           ["tests/test_server.py", "-k", "echo"]),
    # ---- session 52: prefill_ahead, per-request seeds -----------------------------------------------------------
    Mutant("py_cont_place_wrong_row", CB,
           "def pick(t):\n            return t if sel is None else t.index_select(0, sel.to(t.device))",
           "def pick(t):\n            return t if sel is None else t.index_select(0, sel.flip(0).to(t.device))",
           "prefill_ahead: a subset of a group's prompts placed with one another's states", [T_CONT, "-k", "prefill"]),
    Mutant("py_cont_place_keys_from_start", CB,
           "pick(src[:, :, Lg - L:])", "pick(src[:, :, :L])",
           "prefill_ahead: a placed prompt's keys taken from the start of its group's padded row, not its end",
           [T_CONT, "-k", "prefill"]),
    Mutant("py_cont_stage_order", CB,
           "take = [(r, self.staged.popleft()) for r in idle[:n]]", "take = [(r, self.staged.pop()) for r in idle[:n]]",
           "prefill_ahead: prompts prefilled ahead take rows last in, first out (and the queue's order is lost)",
           [T_CONT, "-k", "prefill or added or matches"]),
    Mutant("py_cont_key_by_row", CB,
           "self.rng_host.copy_(torch.tensor([[self.key[r], len(self.new[r])] for r in range(self.B)]))",
           "self.rng_host.copy_(torch.tensor([[self.seed + r, len(self.new[r])] for r in range(self.B)]))",
           "per-request seeds: the draws keyed by the row, not by the prompt (completions change with the batch)",
           [T_CONT, "-k", "sampling"]),
    Mutant("py_cont_counter_fixed", CB,
           "[[self.key[r], len(self.new[r])] for r in range(self.B)]", "[[self.key[r], 0] for r in range(self.B)]",
           "per-request seeds: every token of a prompt drawn with the same counter (the same uniforms each step)",
           [T_CONT, "-k", "sampling"]),
    Mutant("py_serve_choice_same_key", "jamba_ext/server.py",
           "seed=_choice_key(req.seed, pi * k + j), logit_bias=req.bias) for j in range(k)]",
           "seed=_choice_key(req.seed, 0), logit_bias=req.bias) for j in range(k)]",
           "server seed: the n choices of a seeded request all draw with one key (n copies of one completion)",
           ["tests/test_server.py", "-k", "seeded"]),
    Mutant("py_cont_bias_not_cleared", CB,
           "            if r in self.biased:\n                self.bias[r] = 0\n",
           "            if False:\n                pass\n",
           "logit_bias: a row taken over keeps the bias of its earlier prompt", [T_CONT, "-k", "logit_bias"]),
    Mutant("py_cont_bias_after_pick", CB,
           "lg = logits if not self.biased else logits.float() + self.bias", "lg = logits",
           "logit_bias: never applied", [T_CONT, "-k", "logit_bias"]),
    Mutant("py_serve_best_of_least_likely", "jamba_ext/server.py",
           "order = sorted(order, key=lambda j: -mean[j])", "order = sorted(order, key=lambda j: mean[j])",
           "best_of: the least likely completions answered", ["tests/test_server.py", "-k", "best_of"]),
    Mutant("py_batch_budget_not_cut", "jamba_ext/batch.py",
           "rows[r] if isinstance(budgets, int) else rows[r][:budgets[i]]", "rows[r]",
           "generate_many: a prompt's own max_new_tokens not applied (its batch's largest instead)",
           [T_CONT, T_CLI, "-k", "continuous"]),
    # ---- session 54: dropped requests, metrics, the API key, stream_options -----------------------------------------
    Mutant("py_cancel_running_kept", CB,
           "        self._free(r)\n        self.pending.pop(r, None)\n        return True",
           "        return True",
           "cancel: a running prompt reported dropped but its row keeps decoding it", [T_CONT, "-k", "cancel"]),
    Mutant("py_cancel_staged_missed", CB,
           "        for i, (e, _) in enumerate(self.staged):\n            if e[0] == rid:",
           "        for i, (e, _) in enumerate(self.staged):\n            if e[0] == rid and False:",
           "cancel: a prompt prefilled ahead of a free row is not found", [T_CONT, "-k", "cancel"]),
    Mutant("py_serve_gone_never", "jamba_ext/server.py",
           "                return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b\"\"",
           "                return False",
           "serve: a client that closed its connection is never noticed while it waits",
           ["tests/test_server.py", "-k", "goes_away"]),
    Mutant("py_serve_key_prefix", "jamba_ext/server.py",
           "hmac.compare_digest(given[len(\"Bearer \"):].encode(), api_key.encode())",
           "api_key.encode().startswith(given[len(\"Bearer \"):].encode())",
           "serve: any prefix of the API key accepted (the empty one too)", ["tests/test_server.py", "-k", "api_key"]),
    Mutant("py_serve_usage_counts_prompt_twice", "jamba_ext/server.py",
           "\"total_tokens\": p + done}})", "\"total_tokens\": 2 * p + done}})",
           "stream_options.include_usage: the usage's total wrong", ["tests/test_server.py", "-k", "streamed"]),
    Mutant("py_stream_choice_index_zero", "jamba_ext/server.py",
           "choice = {\"index\": index, \"text\": text or \"\", \"finish_reason\": reason, \"logprobs\": None}",
           "choice = {\"index\": 0, \"text\": text or \"\", \"finish_reason\": reason, \"logprobs\": None}",
           "streams of several choices: every chunk named choice 0", ["tests/test_server.py", "-k", "streamed_choices"]),
    Mutant("py_metrics_prompt_not_counted", "jamba_ext/server.py",
           "                                               job.seed, job.bias)] = job\n"
           "                        self.prompt_tokens += len(job.ids)",
           "                                               job.seed, job.bias)] = job",
           "metrics: a completion's prompt tokens not counted", ["tests/test_server.py", "-k", "metrics"]),
]


# ---- running ------------------------------------------------------------------------------------------------------
class Log:
    """Prints lines and appends them to the --out file as they come."""

    def __init__(self, path):
        self.f = open(path, "w") if path else None

    def __call__(self, line=""):
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()

    def close(self):
        if self.f:
            self.f.close()


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass


def run(cmd, cwd, env, timeout):
    """(returncode, output, timed_out) of cmd in its own process group; the group is killed on a timeout or Ctrl-C."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out, False
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, _ = p.communicate()
        return p.returncode, out, True
    except BaseException:
        kill_group(p)
        p.wait()
        raise


def git(*args, cwd=REPO):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def check_snippets(mutants, root):
    """Each mutant's snippet occurs exactly once in its file under root (AssertionError naming the mutant)."""
    ids = [m.id for m in mutants]
    assert len(ids) == len(set(ids)), "mutant ids must be unique"
    for m in mutants:
        with open(os.path.join(root, m.file)) as f:
            n = f.read().count(m.orig)
        assert n == 1, f"mutant {m.id}: its snippet occurs {n} times in {m.file} (must be exactly once)"
        assert m.orig != m.repl, f"mutant {m.id}: replacement equals the original"


def overlay_tests(wt):
    """Copies the files under tests/ that differ from HEAD in this checkout (modified or new) into the worktree."""
    changed = git("ls-files", "--modified", "--others", "--exclude-standard", "tests").split()
    copied = []
    for rel in sorted(set(changed)):
        src = os.path.join(REPO, rel)
        if os.path.isfile(src) and rel.endswith(".py"):
            shutil.copy2(src, os.path.join(wt, rel))
            copied.append(rel)
    return copied


def build(wt, env):
    rc, out, timed_out = run(BUILD, wt, env, BUILD_TIMEOUT_S)
    return rc == 0 and not timed_out, out


def pytest_summary(out):
    """The last line of pytest's output that reports counts ('1 failed, 12 passed in 3.1s'), and the first FAILED id."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines)
                    if re.search(r"\b(passed|failed|error|errors|no tests ran|deselected)\b", ln)), "")
    first = next((ln.split()[1] for ln in lines if ln.startswith(("FAILED ", "ERROR "))), "")
    return summary, first


def run_tests(wt, env, tests, timeout):
    """(status, detail) of pytest on tests in the worktree."""
    rc, out, timed_out = run(PYTEST + tests, wt, env, timeout)
    summary, first = pytest_summary(out)
    if timed_out:
        return "KILLED", f"timeout: still running after {timeout} s (a hang counts as caught)"
    if rc == 0:
        return "SURVIVED", summary
    if rc == 1:
        return "KILLED", f"{first}  ({summary})" if first else summary
    if rc == 5:
        return "NO-TESTS", "pytest collected no tests: fix the mutant's test selection"
    if rc < 0:
        return "KILLED", f"crash: pytest died of signal {-rc} ({summary})"
    tail = " | ".join(out.strip().splitlines()[-3:])
    return "ERROR", f"pytest exit status {rc}: {tail}"


def union_files(mutants):
    """The test files the mutants' selections come from (node ids cut to their file, -k dropped)."""
    files = []
    skip = False
    for m in mutants:
        for a in m.tests:
            if skip:
                skip = False
                continue
            if a == "-k":
                skip = True
                continue
            f = a.split("::")[0]
            if f not in files:
                files.append(f)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutant ids to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--out", default="", help="also write the report to this file")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per mutant's pytest run (default 300)")
    ap.add_argument("--python", action="store_true",
                    help="the Python model code's mutants (PY_MUTANTS) instead of the C kernels' (no rebuilds)")
    args = ap.parse_args()

    listed = PY_MUTANTS if args.python else MUTANTS
    mutants = listed
    if args.only:
        want = [s.strip() for s in args.only.split(",") if s.strip()]
        every = MUTANTS + PY_MUTANTS
        unknown = [w for w in want if w not in {m.id for m in every}]
        if unknown:
            sys.exit(f"unknown mutant id(s): {', '.join(unknown)} (see --list)")
        mutants = [m for m in every if m.id in want]
    python_only = all(m.file.endswith(".py") for m in mutants)
    if args.list:
        check_snippets(MUTANTS + PY_MUTANTS, REPO)
        for m in mutants:
            print(f"{m.id:32} {os.path.basename(m.file):20} {m.fault}")
            print(f"{'':32} tests: {' '.join(m.tests)}" + (f"  [equivalent: {m.equivalent}]" if m.equivalent else ""))
        print(f"{len(mutants)} mutants over {len({m.file for m in mutants})} files")
        return 0

    log = Log(args.out)
    t_start = time.time()
    head = git("rev-parse", "--short", "HEAD").strip()
    tmp = tempfile.mkdtemp(prefix="jamba_cpu_mutants_")
    wt = os.path.join(tmp, "wt")
    env = dict(os.environ, PYTHONPATH=wt, JAMBA_EXT_CUDA="0", PYTHONDONTWRITEBYTECODE="1")
    results = []
    try:
        git("worktree", "add", "--detach", wt, "HEAD")
        check_snippets(mutants, wt)
        copied = overlay_tests(wt)
        what = "the Python model code (jamba_ext/*.py)" if python_only else "the CPU kernels (csrc/cpu/*.c)"
        log(f"mutation check of {what} at {head}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
        log(f"tests from the working tree (differ from HEAD): {', '.join(copied) if copied else 'none'}")
        log(f"build: {shlex.join(['python3'] + BUILD[1:])}"
            + (" (once: the mutants are .py files)" if python_only else "")
            + f"; tests: {shlex.join(['python3'] + PYTEST[1:])} <tests>; "
            f"cwd and PYTHONPATH: a worktree of HEAD in {tmp}")

        ok, out = build(wt, env)
        if not ok:
            log("the unmutated build FAILED: aborting\n" + out[-3000:])
            return 2
        probe = "import jamba_ext, torch; print(jamba_ext.__file__); print(torch.__version__)"
        rc, out, _ = run([sys.executable, "-c", probe], wt, env, 120)
        where, torch_version = (out.strip().splitlines() + ["", ""])[:2]
        assert rc == 0 and where.startswith(wt + os.sep), f"jamba_ext does not import from the worktree: {out}"
        log(f"python {platform.python_version()}, torch {torch_version}, {os.cpu_count()} CPUs; "
            f"{len(mutants)} mutants; per-mutant timeout {args.timeout} s; jamba_ext from the worktree")
        files = union_files(mutants)
        t0 = time.time()
        status, detail = run_tests(wt, env, files, 3 * args.timeout)
        log(f"baseline (unmutated, {' '.join(files)}): {'pass' if status == 'SURVIVED' else 'FAIL'}, {detail}, "
            f"{time.time() - t0:.0f} s")
        if status != "SURVIVED":
            log("the unmutated tests must pass: aborting")
            return 2
        log("")

        for i, m in enumerate(mutants):
            path = os.path.join(wt, m.file)
            with open(path) as f:
                original = f.read()
            t0 = time.time()
            try:
                with open(path, "w") as f:
                    f.write(original.replace(m.orig, m.repl, 1))
                ok, out = build(wt, env) if not m.file.endswith(".py") else (True, "")
                if not ok:
                    err = [ln for ln in out.splitlines() if "error" in ln.lower()]
                    status, detail = "BUILD-FAIL", (err[0] if err else out.strip()[-300:])
                else:
                    status, detail = run_tests(wt, env, m.tests, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            if status == "SURVIVED" and m.equivalent:
                detail = f"equivalent: {m.equivalent}"
            results.append((m, status))
            log(f"[{i + 1:2}/{len(mutants)}] {status:10} {m.id:30} {os.path.basename(m.file):19} "
                f"{time.time() - t0:5.1f} s  {m.fault}")
            log(f"{'':18}tests: {' '.join(m.tests)}  ->  {detail}")
    finally:
        try:
            git("worktree", "remove", "--force", wt)
        except subprocess.CalledProcessError as e:
            print(f"could not remove the worktree {wt}: {e.stderr}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    log("")
    counts = {s: sum(1 for _, st in results if st == s) for s in ("KILLED", "SURVIVED", "BUILD-FAIL", "NO-TESTS",
                                                                   "ERROR")}
    equivalent = sum(1 for m, st in results if st == "SURVIVED" and m.equivalent)
    live = len(results) - equivalent
    log("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("KILLED", "SURVIVED"))
        + (f" ({equivalent} of them equivalent)" if equivalent else "")
        + (f"; mutation score {counts['KILLED']}/{live} = {100.0 * counts['KILLED'] / live:.0f}%" if live else ""))
    for m, st in results:
        if st != "KILLED" and not (st == "SURVIVED" and m.equivalent):
            log(f"  {st}: {m.id} ({m.file}): {m.fault}")
    log(f"total time {time.time() - t_start:.0f} s")
    log.close()
    bad = counts["SURVIVED"] - equivalent + counts["BUILD-FAIL"] + counts["NO-TESTS"] + counts["ERROR"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
