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
                                  [--timeout 300]

The whole list takes ~10-15 minutes on 2 cores (one build and one pytest run per mutant).
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
    args = ap.parse_args()

    mutants = MUTANTS
    if args.only:
        want = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in want if w not in {m.id for m in MUTANTS}]
        if unknown:
            sys.exit(f"unknown mutant id(s): {', '.join(unknown)} (see --list)")
        mutants = [m for m in MUTANTS if m.id in want]
    if args.list:
        check_snippets(MUTANTS, REPO)
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
        log(f"mutation check of the CPU kernels (csrc/cpu/*.c) at {head}, "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
        log(f"tests from the working tree (differ from HEAD): {', '.join(copied) if copied else 'none'}")
        log(f"build: {shlex.join(['python3'] + BUILD[1:])}; tests: {shlex.join(['python3'] + PYTEST[1:])} <tests>; "
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
                ok, out = build(wt, env)
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
