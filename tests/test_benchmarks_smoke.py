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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,result", [("bench_cpu.py", "bench_cpu_smoke.json"),
                                           ("bench_kernels.py", "bench_kernels_smoke.json"),
                                           ("bench_moe.py", "bench_moe_smoke.json"),
                                           ("bench_model.py", "bench_model_smoke.json")])
def test_benchmark_smoke(tmp_path, script, result):
    env = dict(os.environ, JAMBA_BENCH_RESULTS=str(tmp_path), PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--smoke"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads((tmp_path / result).read_text())
    assert data["rows"], "no result rows"
    assert data["meta"]["commit"] and data["meta"]["torch"]
    if script == "bench_model.py":   # the routing-aware decode floor: distinct experts a MoE layer's step touched
        cfg = data["meta"]["config"]
        touched = [r["decode_experts_touched"] for r in data["rows"] if r.get("impl") == "jamba_ext"
                   and r.get("batch", 1) > 1]
        assert touched and all(cfg["num_experts_per_tok"] <= t <= cfg["num_experts"] for t in touched), touched
