"""The benchmark scripts run end to end in their --smoke mode (tiny shapes, CPU), so they cannot rot.

Each script checks its results against the reference before timing, so a smoke run that exits 0 also
means the ops agreed with the reference at the smoke shapes. Results go to a temporary folder
(JAMBA_BENCH_RESULTS), not into benchmarks/results/.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import package_env, transformers_usable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,args,result", [
    ("bench_cpu.py", [], "bench_cpu_smoke.json"),
    ("bench_kernels.py", [], "bench_kernels_smoke.json"),
    ("bench_moe.py", [], "bench_moe_smoke.json"),
    ("bench_model.py", ["--experts-fp8", "--act-fp8"], "bench_model_smoke.json"),  # with the fp8-experts rows
    ("bench_train.py", [], "bench_train_smoke.json"),
    ("bench_train.py", ["--dtype", "bfloat16", "--batches", "1", "--lengths", "32"], "bench_train_smoke.json"),
    ("bench_beam.py", [], "bench_beam_smoke.json"),
    ("bench_batch.py", [], "bench_batch_smoke.json"),
    ("bench_serve.py", [], "bench_serve_smoke.json"),
    ("bench_sampling.py", [], "bench_sampling_smoke.json"),
], ids=["cpu", "kernels", "moe", "model", "train", "train_bf16", "beam", "batch", "serve", "sampling"])
def test_benchmark_smoke(tmp_path, script, args, result):
    env = package_env(JAMBA_BENCH_RESULTS=str(tmp_path))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--smoke", *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads((tmp_path / result).read_text())
    assert data["rows"], "no result rows"
    assert data["meta"]["commit"] and data["meta"]["torch"]
    check = data["meta"].get("check", {})
    if script == "bench_train.py" and not transformers_usable():  # nothing to check against: the script says so
        assert check["ok"] is None, check
    elif script == "bench_train.py":  # the correctness check ran against transformers and passed (in bf16: each
        assert check["ok"] is True, check  # model against the fp32 step of the same weights)
        assert ("loss_fp32" in check) == ("--dtype" in args), check
    if script == "bench_batch.py":   # fp32 on the CPU: generate_many's tokens equal each prompt's own generate()
        assert check["ok"] is True and check["same_tokens_as_alone"] == 1.0, check
        assert check["continuous_same_as_static"] == 1.0 and check["continuous_lengths_are_budgets"], check
        assert check["shared_prefix_same_as_whole"] == 1.0, check
        assert {r["impl"] for r in data["rows"]} == {
            "generate_many", "generate, file order", "continuous", "generate_many, varied budgets",
            "continuous, varied budgets", "generate_many, shared prefix", "continuous, prefix prefilled whole",
            "continuous, shared prefix"}
    if script == "bench_serve.py":   # fp32 on the CPU: every checked answer equals the prompt's own generate()
        assert check["ok"] is True and check["same_as_alone"] == 1.0, check
        assert {r["impl"] for r in data["rows"]} == {"jamba-ext serve", "generate, one at a time"}
    if script == "bench_sampling.py":  # the kernel's kept columns and greedy tokens against the float64 reference
        assert check["ok"] is True, check
    if script == "bench_beam.py":    # the graph search equals the eager one; transformers' beams where installed
        assert check["graph_equals_eager"] is True, check
        assert check.get("transformers_same_sequences", True) is True, check
    if script == "bench_model.py":   # the routing-aware decode floor: distinct experts a MoE layer's step touched
        cfg = data["meta"]["config"]
        touched = [r["decode_experts_touched"] for r in data["rows"] if r.get("impl") == "jamba_ext"
                   and r.get("batch", 1) > 1]
        assert touched and all(cfg["num_experts_per_tok"] <= t <= cfg["num_experts"] for t in touched), touched
        fp8 = [r for r in data["rows"] if r.get("impl") == "jamba_ext fp8" and r.get("decode_tokens_per_s")]
        assert fp8 and 0 < check["fp8_vs_unquantized_norm_rel_err"] < 0.5, check


@pytest.mark.parametrize("config", ["smoke", "one_block"])
def test_bench_model_prefill_work_matches_parameter_shapes(config, monkeypatch):
    """bench_model's prefill floor counts the matrix products from the config; the same count from the model's
    parameter shapes (2 FLOP a weight a token for every 2-D projection weight and the routed share of the experts'
    3-D stacks; embedding, norms, A_log and conv taps excluded) must agree, and the attention and LM-head terms
    must scale as stated (quadratic in L, once per sequence)."""
    import torch
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["bench_model.py"])
    import bench_model as bm
    cfg = bm.JambaConfig(**(bm.SMOKE if config == "smoke" else bm.ONE_BLOCK))
    with torch.device("meta"):
        m = bm.JambaForCausalLM(cfg)
    per_tok = 0
    for name, p in m.named_parameters():
        if "embed_tokens" in name or "lm_head" in name or "A_log" in name or "conv1d" in name:
            continue
        if p.dim() == 2 and name.endswith("weight"):
            per_tok += 2 * p.numel()
        elif p.dim() == 3 and ".experts." in name:          # (E, out, in) stacks: top-k of E per token
            per_tok += 2 * p.numel() * cfg.num_experts_per_tok // cfg.num_experts
    n_attn = sum(1 for layer in m.model.layers if hasattr(layer, "self_attn"))
    n_mamba = cfg.num_hidden_layers - n_attn
    assert n_attn >= 1 and n_mamba >= 1 and per_tok > 0
    H = cfg.hidden_size
    for B, L in ((1, 1), (3, 17), (2, 1000)):
        flops, exps = bm.prefill_work(cfg, m, B, L)
        want = B * (L * per_tok + n_attn * 2 * H * L * (L + 1) + 2 * H * cfg.vocab_size)
        assert flops == want, (B, L, flops, want)
        assert exps == B * n_mamba * L * cfg.mamba_d_inner * cfg.mamba_d_state


def test_bench_moe_kernel_times_tells_repeated_kernels_apart(monkeypatch):
    """bench_moe.kernel_times: a kernel name launched twice a call (the MoE's gate_up and down on one persistent
    kernel instance) gives two rows, '#1' the first launch of each call and '#2' the second; names run once a call
    keep their name; a name whose count is not a multiple of the calls keeps one row; us are per call."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["bench_moe.py"])
    import bench_moe
    calls = [[("route", 3.0), ("gemm", 200.0 + c), ("gemm", 90.0 - c), ("combine", 5.0)] for c in range(3)]
    launches = [(10 * i + j, n, us) for i, call in enumerate(calls) for j, (n, us) in enumerate(call)]
    launches.append((1000, "odd", 6.0))
    out = bench_moe.kernel_times(launches[::-1], 3)   # any order in: sorted by start
    assert out == {"gemm #1": 201.0, "gemm #2": 89.0, "combine": 5.0, "route": 3.0, "odd": 2.0}, out
    assert list(out)[0] == "gemm #1"
