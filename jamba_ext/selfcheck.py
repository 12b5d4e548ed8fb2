"""Installation self-check: every op on fresh random inputs, on each device, against the float64 reference.

    python -m jamba_ext check                  # CPU, and every visible GPU when the CUDA kernels are built
    python -m jamba_ext check --device cpu --dtype bfloat16

Each op runs on two small shapes (one with odd sizes, one on the kernels' fast paths) in every activation
dtype; its outputs are compared element-wise with reference.py run in float64 on the same (rounded) inputs:
|ours - ref| <= atol + rtol |ref|; the backward ops' gradients against the largest one, max |ours - ref| <=
t max |ref| (GRAD_TOL). The report gives, per op and dtype, the worst element's error as a fraction
of its tolerance (<= 1 passes). This is a smoke test of the build on this machine, not the test suite
(`python -m pytest`), which covers far more shapes, layouts, states and bad inputs.
"""
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import ops, reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (rtol, atol) of an activation-dtype output: fp32 math everywhere, one rounding of the output (low dtypes);
# fp32 outputs (recurrent states, router weights) get the fp32 bound whatever the activation dtype.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (1e-2, 1e-2)}
# the decode step chain (conv update, x_proj, norms, dt_proj, state update) rounds four intermediates to T
STEP_TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (6e-2, 1e-1), torch.float16: (1.5e-2, 3e-2)}
MOE_TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 4e-2), torch.float16: (1e-2, 2e-2)}
# moe_experts_fp8 with act_fp8 (W8A8 where ops.fp8_act_applies): the op's fp32 sums can round an act row's maximum
# differently from the float64 reference, and that row is then quantized with the neighbouring scale (e4m3 noise on
# ~1% of the rows: tests/test_fp8.py w8a8_check), so the errors are bounded by the reference's mean and largest |value|:
# mean |ours - ref| <= t_mean x mean |ref| and max |ours - ref| <= t_max x max |ref|, (t_mean, t_max) per dtype. The
# weight-only result sits ~4.5% (mean) from the W8A8 reference at these shapes, so an op that skipped a quantization
# fails; with every act row on the neighbouring scale the mean error would be ~2% (tests/test_selfcheck.py).
W8A8_TOL = {"mean": True, torch.float32: (5e-4, 5e-4), torch.bfloat16: (2.5e-2, 6e-2), torch.float16: (2.5e-2, 6e-2)}
# The backward ops' gradients are sums over rows, batch and time that cancel, so they are bounded by the largest
# gradient of the output instead: max |ours - ref| <= t x max |ref|, t = (activation-dtype outputs, fp32 outputs);
# twice the test suite's bounds (tests/test_rms_norm.py, test_causal_conv1d.py, test_selective_scan_bwd.py).
GRAD_TOL = {"scale": True, torch.float32: (4e-5, 4e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-2, 2e-2)}
SCAN_GRAD_TOL = {"scale": True, torch.float32: (2e-4, 2e-4), torch.bfloat16: (2.4e-2, 2e-4),
                 torch.float16: (4e-3, 2e-4)}


class _Gen:
    """Random inputs on one device from a seeded CPU generator (the same values on every device)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, seed: int):
        self.device, self.dtype, self.g = device, dtype, torch.Generator().manual_seed(seed)

    def randn(self, *shape, scale=1.0, shift=0.0, dtype=None):
        t = torch.randn(*shape, generator=self.g, dtype=torch.float64) * scale + shift
        return t.to(dtype or self.dtype).to(self.device)

    def uniform(self, *shape, lo=0.0, hi=1.0, dtype=None):
        t = torch.rand(*shape, generator=self.g, dtype=torch.float64) * (hi - lo) + lo
        return t.to(dtype or self.dtype).to(self.device)


def _up(x):
    return x.detach().double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _ups(d: dict) -> dict:
    return {k: _up(v) for k, v in d.items()}


# Each case: (op name, inputs builder, ours, reference) -> outputs compared pairwise. The builder gets a _Gen
# and a shape index (0: odd sizes, 1: fast-path sizes).
def _norm(g: _Gen, s: int):
    rows, dim = ((3, 7), 130) if s == 0 else ((16,), 1024)
    return dict(x=g.randn(*rows, dim), weight=g.randn(dim, scale=0.2, shift=1.0))


def _add_norm(g: _Gen, s: int):
    d = _norm(g, s)
    d["residual"] = g.randn(*d["x"].shape)
    return d


def _segments(g: _Gen, s: int):
    dim, splits = (50, [40, 45]) if s == 0 else (288, [256, 272])  # split points: Mamba's dt / B / C cuts
    return dict(x=g.randn(3, dim), weight=g.randn(dim, scale=0.2, shift=1.0), splits=splits)


def _conv(g: _Gen, s: int):
    b, di, seq = (2, 37, 67) if s == 0 else (1, 64, 256)
    return dict(x=g.randn(b, di, seq), weight=g.randn(di, 4, scale=0.5), bias=g.randn(di, scale=0.5),
                initial_state=g.randn(b, di, 3) if s == 0 else None, silu=True)


def _conv_update(g: _Gen, s: int):
    b, di = (3, 37) if s == 0 else (8, 256)
    return dict(x=g.randn(b, di), conv_state=g.randn(b, di, 3), weight=g.randn(di, 4, scale=0.5),
                bias=g.randn(di, scale=0.5), silu=True)


def _A(g: _Gen, di: int, n: int):
    return -torch.exp(g.uniform(di, n, lo=-0.7, hi=1.8, dtype=torch.float32))


def _scan(g: _Gen, s: int):
    b, di, n, seq = (2, 37, 16, 67) if s == 0 else (1, 64, 16, 128)
    f32 = torch.float32
    return dict(u=g.randn(b, di, seq), delta=g.randn(b, di, seq, scale=0.5), A=_A(g, di, n),
                B=g.randn(b, n, seq), C=g.randn(b, n, seq), D=g.randn(di, dtype=f32), z=g.randn(b, di, seq),
                delta_bias=g.uniform(di, lo=-4.5, hi=-1.5, dtype=f32), delta_softplus=True,
                initial_state=g.randn(b, di, n, scale=0.5, dtype=f32) if s == 0 else None)


def _state_update(g: _Gen, s: int):
    b, di, n = (3, 37, 16) if s == 0 else (8, 256, 16)
    f32 = torch.float32
    return dict(state=g.randn(b, di, n, scale=0.5, dtype=f32), x=g.randn(b, di), dt=g.randn(b, di, scale=0.5),
                A=_A(g, di, n), B=g.randn(b, n), C=g.randn(b, n), D=g.randn(di, dtype=f32), z=g.randn(b, di),
                dt_bias=g.uniform(di, lo=-4.5, hi=-1.5, dtype=f32), dt_softplus=True)


def _moe(g: _Gen, s: int, size=None):
    t, h, f, e = size or ((33, 72, 40, 8) if s == 0 else (64, 256, 512, 16))
    x = g.randn(t, h)
    logits = g.randn(t, e, dtype=torch.float32)
    w, ids = reference.moe_route(logits, 2)
    return dict(x=x, weights=w, expert_ids=ids.to(torch.int32), w_gate_up=g.randn(e, 2 * f, h, scale=h ** -0.5),
                w_down=g.randn(e, h, f, scale=f ** -0.5))


def _route(g: _Gen, s: int):
    t, e = (33, 8) if s == 0 else (256, 16)
    return dict(router_logits=g.randn(t, e))


def _silu_mul(g: _Gen, s: int):
    return dict(gate_up=g.randn(*((5, 2 * 37) if s == 0 else (64, 2 * 512))))


def _gemv(g: _Gen, s: int):
    m, n, k = (3, 37, 264) if s == 0 else (1, 288, 8192)
    return dict(x=g.randn(m, k), weight=g.randn(n, k, scale=k ** -0.5), bias=g.randn(n))


def _attn(g: _Gen, s: int):
    b, h, r, d, n = (2, 2, 4, 64, 37) if s == 0 else (1, 8, 4, 128, 1000)
    return dict(q=g.randn(b, h, r, d), k=g.randn(b, h, n, d), v=g.randn(b, h, n, d),
                key_mask=(torch.arange(n) % 3 != 1).expand(b, n).to(g.device))


def _mamba_step(g: _Gen, s: int):
    b, di, r, n = (1, 136, 16, 16) if s == 0 else (2, 256, 32, 16)  # 3 blocks of 64 channels, a partial last one
    f32 = torch.float32
    d = dict(x=g.randn(b, di), z=g.randn(b, di), conv_state=g.randn(b, di, 4), conv_weight=g.randn(di, 4, scale=0.5),
             conv_bias=g.randn(di, scale=0.5), xproj_weight=g.randn(r + 2 * n, di, scale=di ** -0.5),
             norm_weight=g.randn(r + 2 * n, scale=0.2, shift=1.0), dtproj_weight=g.randn(di, r, scale=r ** -0.5),
             A=_A(g, di, n), D=g.randn(di, dtype=f32), dt_bias=g.uniform(di, lo=-4.5, hi=-1.5, dtype=f32),
             ssm_state=g.randn(b, di, n, scale=0.5, dtype=f32), dt_rank=r)
    return d


def _run_mamba_step(d):
    d = dict(d, conv_state=d["conv_state"].clone(), ssm_state=d["ssm_state"].clone())
    dev = d["x"].device
    work = (ops.mamba_inner_step_workspace(d["x"].shape[1], d["x"].shape[0], d["xproj_weight"].shape[0], dev)
            if dev.type == "cuda" else None)  # CUDA: the fused kernel (batch <= 2)
    out = ops.mamba_inner_step(**d, work=work)
    # the fp32 state follows intermediates rounded to the activation dtype: compared at that dtype's tolerance
    return out, d["conv_state"], d["ssm_state"].to(out.dtype)


def _run_route(d):
    w, ids, offsets, slots = ops.moe_route(d["router_logits"], 2)
    return w, ids.long(), offsets, slots


def _ref_route(d):
    w, ids = reference.moe_route(d["router_logits"].float().double(), 2)
    return (w, ids, *reference.moe_permute(ids, d["router_logits"].shape[1]))


def _permute(g: _Gen, s: int):
    """expert ids (T, 2) with an expert that gets no slot and, on the odd shape, ids outside [0, E) (a last bucket)"""
    t, e = (33, 8) if s == 0 else (256, 16)
    ids = (g.uniform(t, 2, lo=0, hi=e - 1, dtype=torch.float64).floor() + 1).to(torch.int32)   # expert 0: none
    if s == 0:
        ids[5, 1], ids[20, 0] = -1, e
    return dict(expert_ids=ids, num_experts=e)


def _combine(g: _Gen, s: int):
    d = _permute(g, s)
    d["expert_ids"].clamp_(0, d["num_experts"] - 1)
    t = d["expert_ids"].shape[0]
    _, slots = reference.moe_permute(d["expert_ids"], d["num_experts"])
    return dict(y=g.randn(2 * t, 72 if s == 0 else 256), weights=g.uniform(t, 2, dtype=torch.float32),
                expert_ids=d["expert_ids"], sorted_slots=slots, num_experts=d["num_experts"])


def _run_state_update(d):
    d = dict(d, state=d["state"].clone())
    out = ops.selective_state_update(**d)
    return out, d["state"]


def _run_conv_update(d):
    d = dict(d, conv_state=d["conv_state"].clone())
    out = ops.causal_conv1d_update(**d)
    return out, d["conv_state"]


def _ref(fn: Callable) -> Callable:
    return lambda d: fn(**_ups(d))


def _norm_bwd(g: _Gen, s: int):  # the segments form (Mamba's dt / B / C norms) on the odd shape, plain on the other
    d = _segments(g, s) if s == 0 else dict(_norm(g, s), splits=[])
    return dict(d, dy=g.randn(*d["x"].shape))


def _conv_bwd(g: _Gen, s: int):
    d = _conv(g, s)
    return dict(d, dout=g.randn(*d["x"].shape))


def _scan_bwd(g: _Gen, s: int):
    d = _scan(g, s)
    b, di, n = d["u"].shape[0], d["u"].shape[1], d["A"].shape[1]
    return dict(d, dout=g.randn(*d["u"].shape), dlast_state=g.randn(b, di, n, scale=0.5, dtype=torch.float32))


def _silu_mul_bwd(g: _Gen, s: int):
    d = _silu_mul(g, s)
    rows, f2 = d["gate_up"].shape
    return dict(d, dout=g.randn(rows, f2 // 2))


def _ce(g: _Gen, s: int):  # odd vocabulary (the element path) with ignored rows; a vector-width one
    n, v = (7, 1001) if s == 0 else (64, 4096)
    t = torch.randint(0, v, (n,), generator=g.g)
    t[1::3] = -100
    return dict(logits=g.randn(n, v, scale=3.0), target=t.to(g.device))


def _ce_bwd(g: _Gen, s: int):
    d = _ce(g, s)
    _, lse = reference.cross_entropy(d["logits"].double(), d["target"])
    return dict(d, lse=lse.float(), dloss=g.randn(d["target"].shape[0], dtype=torch.float32))


# each row's settings (ops.SAMPLE_PARAMS): greedy, top_k, top_p + penalties, min_p, all three, greedy + penalties
_SAMPLE_SETTINGS = [[0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0], [0.7, 5, 1.0, 0.0, 1.0, 0.0, 0.0],
                    [1.3, 0, 0.9, 0.0, 1.5, 0.5, 0.3], [1.0, 0, 1.0, 0.05, 1.0, 0.0, 0.0],
                    [0.5, 40, 0.8, 0.02, 1.0, 0.0, 0.0], [0.0, 7, 0.5, 0.3, 1.2, 1.0, 2.0]]


def _sample(g: _Gen, s: int):  # odd vocabulary, 7 rows; 16 rows of 4096
    n, v = (7, 1001) if s == 0 else (16, 4096)
    params = torch.tensor([_SAMPLE_SETTINGS[i % len(_SAMPLE_SETTINGS)] for i in range(n)], dtype=torch.float32)
    seen = torch.rand(n, v, generator=g.g) < 0.1
    counts = torch.randint(0, 3, (n, v), generator=g.g, dtype=torch.int32) * (torch.rand(n, v, generator=g.g) < 0.05)
    return dict(logits=g.randn(n, v, scale=3.0), params=params.to(g.device), seen=seen.to(g.device),
                counts=counts.int().to(g.device), seed=5, offset=s)


def _run_sample(d):
    """The rows where sample_rows disagrees with the float64 reference's kept columns and greedy tokens (0: none)."""
    tokens, tau = ops.sample_rows(**d)
    ref = reference.sample_rows_kept(*(d[k].cpu() for k in ("logits", "params", "seen", "counts")))
    return torch.tensor(len(reference.sample_rows_disagreements(d["params"].cpu(), tokens, tau, *ref)))


def _grad_rows(g: _Gen, s: int):  # odd H (the element path), top-1; a 16-byte H, top-2
    t, h, k = (7, 37, 1) if s == 0 else (64, 512, 2)
    return dict(go=g.randn(t, h), weights=g.uniform(t, k, dtype=torch.float32).to(g.dtype).float(),
                sorted_slots=torch.randperm(t * k, generator=g.g).to(torch.int32).to(g.device), y=g.randn(t * k, h))


def _fp8(g: _Gen, *shape):
    """(q float8_e4m3fn, scale f32) of a random float32 tensor (ops.quantize_fp8)."""
    return ops.quantize_fp8(g.randn(*shape, scale=shape[-1] ** -0.5, dtype=torch.float32))


def _dequant(g: _Gen, s: int):  # odd K (the element path); 16-byte rows
    q, sc = _fp8(g, *((7, 37) if s == 0 else (64, 512)))
    return dict(q=q, scale=sc, dtype=g.dtype)


def _moe_fp8(g: _Gen, s: int, size=None):  # 3 tokens: the GEMVs; 64: CUDA's ring kernels (CPU: dequantized)
    d = _moe(g, s, size)
    e, f2, h = d.pop("w_gate_up").shape
    d.pop("w_down")
    if s == 0 and size is None:
        d = dict(d, x=d["x"][:3], weights=d["weights"][:3], expert_ids=d["expert_ids"][:3])
    (qgu, sgu), (qd, sd) = _fp8(g, e, f2, h), _fp8(g, e, h, f2 // 2)
    return dict(d, w_gate_up=qgu, s_gate_up=sgu, w_down=qd, s_down=sd)


def _ref_fp8(d):
    return reference.moe_experts_fp8(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in d.items()})


def _moe_fp8_prefill(g: _Gen, s: int):
    """200 / 320 tokens (50 / 40 slots per expert): on Hopper the wgmma kernel, on other GPUs the ring kernels, on the
    CPU the dequantizing path; H 272 is not a multiple of the 64-deep k tile"""
    return _moe_fp8(g, s, (200, 272, 144, 8) if s == 0 else (320, 256, 512, 16))


def _ref_fp8_act(d):
    """The W8A8 reference where the op quantizes the activations (ops.fp8_act_applies), else the weight-only one."""
    d = dict(d)
    d.pop("act_fp8")
    if ops.fp8_act_applies(d["x"], d["x"].shape[0], d["w_down"].shape[2]):
        return reference.moe_experts_fp8_w8a8(**{k: v.cpu() for k, v in d.items()})
    return _ref_fp8(d)


def _present(outs) -> Tuple[torch.Tensor, ...]:
    """The gradients of the inputs that were given (the op's empty tensor or the reference's None otherwise)."""
    return tuple(t for t in outs if t is not None and t.numel())


CASES: List[Tuple[str, Callable, Callable, Callable, Dict]] = [
    ("rms_norm", _norm, lambda d: ops.rms_norm(**d), _ref(reference.rms_norm), TOL),
    ("add_rms_norm", _add_norm, lambda d: ops.add_rms_norm(**d), _ref(reference.add_rms_norm), TOL),
    ("rms_norm_segments", _segments, lambda d: ops.rms_norm_segments(**d), _ref(reference.rms_norm_segments), TOL),
    ("causal_conv1d", _conv, lambda d: ops.causal_conv1d(**d), _ref(reference.causal_conv1d), TOL),
    ("causal_conv1d_update", _conv_update, _run_conv_update, _ref(reference.causal_conv1d_update), TOL),
    ("selective_scan", _scan, lambda d: ops.selective_scan(**d), _ref(reference.selective_scan), TOL),
    ("selective_state_update", _state_update, _run_state_update, _ref(reference.selective_state_update), TOL),
    ("mamba_inner_step", _mamba_step, _run_mamba_step, _ref(reference.mamba_inner_step), STEP_TOL),
    ("moe_route", _route, _run_route, _ref_route, TOL),
    ("moe_permute", _permute, lambda d: ops.moe_permute(**d), _ref(reference.moe_permute), TOL),
    ("moe_combine", _combine, lambda d: ops.moe_combine(**d),
     lambda d: reference.moe_combine(**_ups({k: v for k, v in d.items() if k != "num_experts"})), TOL),
    ("silu_mul", _silu_mul, lambda d: ops.silu_mul(**d), _ref(reference.silu_mul), TOL),
    ("gemv", _gemv, lambda d: ops.gemv(**d), _ref(reference.gemv), TOL),
    ("decode_attention", _attn, lambda d: ops.decode_attention(**d), _ref(reference.decode_attention), TOL),
    ("moe_experts", _moe, lambda d: ops.moe_experts(**d), _ref(reference.moe_experts), MOE_TOL),
    ("rms_norm_bwd", _norm_bwd, lambda d: ops.rms_norm_bwd(**d), _ref(reference.rms_norm_bwd), GRAD_TOL),
    ("causal_conv1d_bwd", _conv_bwd, lambda d: _present(ops.causal_conv1d_bwd(**d)),
     lambda d: _present(reference.causal_conv1d_bwd(**_ups(d))), GRAD_TOL),
    ("selective_scan_bwd", _scan_bwd, lambda d: _present(ops.selective_scan_bwd(**d)),
     lambda d: _present(reference.selective_scan_bwd(**_ups(d))), SCAN_GRAD_TOL),
    ("silu_mul_bwd", _silu_mul_bwd, lambda d: ops.silu_mul_bwd(**d), _ref(reference.silu_mul_bwd), TOL),
    ("moe_grad_rows", _grad_rows, lambda d: ops.moe_grad_rows(**d), _ref(reference.moe_grad_rows), TOL),
    ("cross_entropy", _ce, lambda d: ops.cross_entropy(**d), _ref(reference.cross_entropy), TOL),
    ("cross_entropy_bwd", _ce_bwd, lambda d: ops.cross_entropy_bwd(**d), _ref(reference.cross_entropy_bwd), GRAD_TOL),
    ("sample_rows", _sample, _run_sample, lambda d: torch.tensor(0), TOL),
    ("dequant_fp8", _dequant, lambda d: ops.dequant_fp8(**d), lambda d: reference.dequant_fp8(d["q"], d["scale"]), TOL),
    ("moe_experts_fp8", _moe_fp8, lambda d: ops.moe_experts_fp8(**d), _ref_fp8, MOE_TOL),
    ("moe_experts_fp8 prefill", _moe_fp8_prefill, lambda d: ops.moe_experts_fp8(**d), _ref_fp8, MOE_TOL),
    ("moe_experts_fp8 act", lambda g, s: dict(_moe_fp8_prefill(g, s), act_fp8=True),
     lambda d: ops.moe_experts_fp8(**d), _ref_fp8_act, W8A8_TOL),
]


def _as_tuple(x) -> Tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _error_ratio(ours: torch.Tensor, ref: torch.Tensor, act_dtype: torch.dtype, tol: Dict) -> float:
    """Worst |ours - ref| / (atol + rtol |ref|) over the elements (NaN or a shape mismatch: inf)."""
    if ours.shape != ref.shape:
        return float("inf")
    if not ours.is_floating_point():
        return 0.0 if torch.equal(ours.cpu().long(), ref.cpu().long()) else float("inf")
    a, r = ours.detach().double().cpu(), ref.detach().double().cpu()
    if torch.isnan(a).any():
        return float("inf")
    if not a.numel():
        return 0.0
    if "mean" in tol:  # W8A8: against the reference's mean and largest |value| (W8A8_TOL)
        t_mean, t_max = tol[act_dtype]
        err, mag = (a - r).abs(), r.abs()
        return max(err.mean().item() / (t_mean * mag.mean().item() + 1e-12),
                   err.max().item() / (t_max * mag.max().item() + 1e-12))
    if "scale" in tol:  # gradients: against the largest one (GRAD_TOL)
        t = tol[act_dtype][0 if ours.dtype == act_dtype else 1]
        return (a - r).abs().max().item() / (t * r.abs().max().item() + 1e-6)
    rtol, atol = tol[act_dtype if ours.dtype == act_dtype else torch.float32]
    return (a - r).abs().div(atol + rtol * r.abs()).max().item()


def devices_available() -> List[torch.device]:
    devs = [torch.device("cpu")]
    if ops.has_cuda_kernels() and torch.cuda.is_available():
        devs += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devs


def run(devices: Optional[Sequence[torch.device]] = None, dtypes: Optional[Sequence[torch.dtype]] = None,
        seed: int = 0, out=None) -> List[dict]:
    """Runs every case; prints a table to `out` (a file, e.g. sys.stdout; None: silent). Returns one dict per
    (device, op, dtype): ratio (worst error / tolerance, max over both shapes and all outputs), ok, error."""
    devices = list(devices) if devices is not None else devices_available()
    dtypes = list(dtypes) if dtypes is not None else list(DTYPES.values())
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    results = []
    for dev in devices:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        say(f"{dev} ({name}):")
        for op, build, ours, ref, tol in CASES:
            cells = []
            for dt in dtypes:
                ratio, err = 0.0, None
                try:
                    for s in (0, 1):
                        d = build(_Gen(dev, dt, seed + 7919 * s), s)
                        got, want = _as_tuple(ours(d)), _as_tuple(ref(d))
                        if len(got) != len(want):
                            raise RuntimeError(f"{len(got)} outputs, the reference has {len(want)}")
                        for a, r in zip(got, want):
                            ratio = max(ratio, _error_ratio(a, r, dt, tol))
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                except Exception as e:  # reported, and counted as a failure
                    err, ratio = f"{type(e).__name__}: {e}", float("inf")
                ok = err is None and ratio <= 1.0
                results.append(dict(device=str(dev), op=op, dtype=str(dt).replace("torch.", ""), ratio=ratio,
                                    ok=ok, error=err))
                short = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[dt]
                cells.append(f"{short} {'ok  ' if ok else 'FAIL'} {ratio:7.2g}" if err is None else
                             f"{short} FAIL ({err[:60]})")
            say(f"  {op:24s} " + " | ".join(cells))
    return results


def main(args) -> int:
    import sys

    t0 = time.perf_counter()
    archs = ", ".join(f"sm_{a}" for a in ops.cuda_archs()) + (" (as PTX)" if ops.cuda_ptx() else "")
    why = "" if ops.has_cuda_kernels() else ops.cuda_build_note()  # why the build has no CUDA kernels
    print(f"jamba_ext {__import__('jamba_ext').__version__} | torch {torch.__version__} | "
          f"CUDA kernels {'built for ' + archs if ops.has_cuda_kernels() else 'not built'}"
          f"{' (' + why + ')' if why else ''} | "
          f"GPUs visible to torch: {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() and ops.has_cuda_kernels() else 0):
        cap = torch.cuda.get_device_capability(i)
        if not ops.cuda_arch_runs(cap):
            print(f"note: cuda:{i} is sm_{cap[0]}{cap[1]}, which the build's {archs} machine code does not run on: "
                  f"its checks will fail; reinstall with JAMBA_EXT_ARCHS=\"{cap[0]}{cap[1]}\" (or a list with it)")
    if args.device == "all":
        devices = devices_available()
    else:
        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            print(f"jamba-ext: error: --device: expected cpu, cuda[:N] or all, got {args.device!r}", file=sys.stderr)
            return 2
        if dev.type == "cuda" and not (torch.cuda.is_available() and ops.has_cuda_kernels()):
            print("jamba-ext: error: --device cuda: " + ("no CUDA GPU is visible to torch" if
                  not torch.cuda.is_available() else "jamba_ext was built without its CUDA kernels "
                  "(reinstall with nvcc on the PATH, or JAMBA_EXT_CUDA=1 to make that an error)"), file=sys.stderr)
            return 2
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            print(f"jamba-ext: error: --device {args.device}: torch sees {torch.cuda.device_count()} GPU(s)",
                  file=sys.stderr)
            return 2
        devices = [dev]
    if torch.cuda.is_available() and not ops.has_cuda_kernels():
        print("note: a GPU is visible but jamba_ext was built without its CUDA kernels"
              f"{' (' + why + ')' if why else ''}, so ops on GPU tensors raise "
              "an error; reinstall with nvcc on the PATH (JAMBA_EXT_CUDA=1 makes a missing toolkit an error)")
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else None
    print("worst error per op and dtype as a fraction of its tolerance (<= 1 passes; float64 reference)")
    res = run(devices, dtypes, seed=args.seed, out=sys.stdout)
    bad = [r for r in res if not r["ok"]]
    dt = time.perf_counter() - t0
    if bad:
        print(f"{len(bad)} of {len(res)} checks FAILED ({dt:.1f} s): " +
              ", ".join(f"{r['op']} {r['dtype']} on {r['device']}" for r in bad))
        return 1
    print(f"all {len(res)} checks passed ({dt:.1f} s)")
    return 0
