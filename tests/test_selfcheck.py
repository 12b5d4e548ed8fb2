"""`python -m jamba_ext check`: the installation self-check passes on a good build, and fails (exit 1, the op
named) when an op is wrong; a GPU that is not there is a clear exit-2 error."""
import subprocess
import sys

import pytest
import torch

from jamba_ext import ops, selfcheck
from jamba_ext.__main__ import main
from conftest import PACKAGE_PARENT, package_env


def test_check_cli_passes_on_cpu():
    r = subprocess.run([sys.executable, "-m", "jamba_ext", "check", "--device", "cpu"], capture_output=True,
                       text=True, env=package_env(), timeout=300, cwd=PACKAGE_PARENT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"all {3 * len(selfcheck.CASES)} checks passed" in r.stdout
    for op, *_ in selfcheck.CASES:                       # every op has a row, all three dtypes in it
        row = next(line for line in r.stdout.splitlines() if line.strip().startswith(op + " "))
        assert row.count(" ok ") == 3, row


def test_check_detects_a_wrong_op(monkeypatch, capsys):
    """A 1% error in one op (100x the fp32 tolerance) fails the check for that op and no other, exit status 1."""
    real = ops.rms_norm
    monkeypatch.setattr(ops, "rms_norm", lambda *a, **k: real(*a, **k) * 1.01)
    rc = main(["check", "--device", "cpu", "--dtype", "float32"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"1 of {len(selfcheck.CASES)} checks FAILED" in out and "rms_norm float32 on cpu" in out


def test_check_detects_a_crash_and_nan(monkeypatch):
    monkeypatch.setattr(ops, "moe_route", lambda logits, k: 1 / 0)
    res = selfcheck.run([torch.device("cpu")], [torch.float32])
    bad = {r["op"]: r for r in res if not r["ok"]}
    assert list(bad) == ["moe_route"] and "ZeroDivisionError" in bad["moe_route"]["error"]

    real = ops.causal_conv1d
    monkeypatch.undo()
    monkeypatch.setattr(ops, "causal_conv1d", lambda *a, **k: tuple(t * float("nan") for t in real(*a, **k)))
    res = selfcheck.run([torch.device("cpu")], [torch.bfloat16])
    assert [r["op"] for r in res if not r["ok"]] == ["causal_conv1d"]


def test_error_ratio_semantics():
    f32 = torch.float32
    r = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    tol = selfcheck.TOL
    assert selfcheck._error_ratio(r.float(), r, f32, tol) == 0.0
    # |d| = atol + rtol |ref| exactly at the bound on the first element: ratio 1
    a = r.clone()
    a[0] += 1e-4 + 1e-4 * 1.0
    assert selfcheck._error_ratio(a, r, torch.float64, {torch.float64: (1e-4, 1e-4), f32: (1e-4, 1e-4)}) == \
        pytest.approx(1.0, rel=1e-6)
    assert selfcheck._error_ratio(r[:2].float(), r, f32, tol) == float("inf")            # shape mismatch
    ids = torch.tensor([1, 2])
    assert selfcheck._error_ratio(ids, ids.clone(), f32, tol) == 0.0
    assert selfcheck._error_ratio(ids, ids.flip(0), f32, tol) == float("inf")            # integer outputs: exact


def test_check_detects_a_wrong_gradient(monkeypatch):
    """A backward op 5% off on one output (dweight) fails its check in every dtype, and no other check."""
    real = ops.rms_norm_bwd
    monkeypatch.setattr(ops, "rms_norm_bwd", lambda *a, **k: (lambda dx, dw: (dx, dw * 1.05))(*real(*a, **k)))
    res = selfcheck.run([torch.device("cpu")])
    assert sorted({r["op"] for r in res if not r["ok"]}) == ["rms_norm_bwd"]
    assert sum(not r["ok"] for r in res) == 3


def test_scale_tolerance_semantics():
    """Gradients are bounded by t x the largest reference gradient (t per activation dtype and output dtype)."""
    bf16, f32 = torch.bfloat16, torch.float32
    r = torch.tensor([4.0, -1.0, 0.0], dtype=torch.float64)
    a = r.clone()
    a[2] += selfcheck.GRAD_TOL[bf16][1] * 4.0          # an fp32 output of a bf16 op, at its bound on a zero entry
    assert selfcheck._error_ratio(a.float(), r, bf16, selfcheck.GRAD_TOL) == pytest.approx(1.0, rel=1e-3)
    b = r.clone()
    b[2] += 0.5 * selfcheck.GRAD_TOL[bf16][0] * 4.0    # a bf16 output at half its bound (0.04: 0.0400390625 in bf16)
    assert selfcheck._error_ratio(b.to(bf16), r, bf16, selfcheck.GRAD_TOL) == pytest.approx(0.5, rel=2e-3)
    assert selfcheck._error_ratio(a.float(), r, f32, selfcheck.GRAD_TOL) > 100     # fp32 op: 500x tighter


def test_mean_tolerance_semantics():
    """W8A8: the larger of mean |d| / (t_mean mean |ref|) and max |d| / (t_max max |ref|)."""
    bf16 = torch.bfloat16
    t_mean, t_max = selfcheck.W8A8_TOL[bf16]
    r = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)             # mean |r| 1, max |r| 2
    a = r.clone()
    a[3] += 4 * t_mean                                                          # mean error t_mean: at the bound
    assert selfcheck._error_ratio(a.float(), r, bf16, selfcheck.W8A8_TOL) == pytest.approx(1.0, rel=1e-5)
    r2 = torch.ones(100, dtype=torch.float64)
    r2[0] = 2.0                                                                 # max |r2| 2, mean |r2| 1.01
    b = r2.clone()
    b[1] += 2 * t_max * 2.0                                                     # one element at twice the max bound
    assert selfcheck._error_ratio(b.float(), r2, bf16, selfcheck.W8A8_TOL) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w8a8_check_rejects_the_weight_only_result(dtype):
    """The W8A8 case can fail: on its inputs the weight-only result is outside W8A8_TOL of the W8A8 reference, and a
    W8A8 result whose act rows all took the neighbouring scale (the worst the op's fp32 sums can do) is inside."""
    from jamba_ext import reference
    for s in (0, 1):
        d = selfcheck._moe_fp8_prefill(selfcheck._Gen(torch.device("cpu"), dtype, 7919 * s), s)
        want = reference.moe_experts_fp8_w8a8(**d)
        weight_only = reference.moe_experts_fp8(**d).to(dtype)
        assert selfcheck._error_ratio(weight_only, want, dtype, selfcheck.W8A8_TOL) > 1.5
        for ulps in (1, -1):
            flipped = reference.moe_experts_fp8_w8a8(**d, act_amax_ulps=ulps).to(dtype)
            assert selfcheck._error_ratio(flipped, want, dtype, selfcheck.W8A8_TOL) < 0.9


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_check_cuda_without_gpu_is_a_clear_error(capsys):
    assert main(["check", "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_check_unknown_device_is_a_clear_error(capsys):
    for dev in ("gpu", "mps"):
        assert main(["check", "--device", dev]) == 2
        assert f"--device: expected cpu, cuda[:N] or all, got '{dev}'" in capsys.readouterr().err


@pytest.mark.cuda
def test_check_passes_on_each_gpu(capsys):
    if not (torch.cuda.is_available() and ops.has_cuda_kernels()):
        pytest.skip("needs a GPU and the CUDA kernels")
    res = selfcheck.run([torch.device("cuda", i) for i in range(torch.cuda.device_count())])
    bad = [r for r in res if not r["ok"]]
    assert not bad, bad
    assert len(res) == 3 * len(selfcheck.CASES) * torch.cuda.device_count()


def test_cli_stops_quietly_when_the_reader_goes_away():
    """`jamba-ext check | head -1`: a closed pipe ends the command without a traceback."""
    p = subprocess.Popen([sys.executable, "-m", "jamba_ext", "check", "--device", "cpu"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=package_env(), cwd=PACKAGE_PARENT)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=300)
    assert "Traceback" not in err, err
