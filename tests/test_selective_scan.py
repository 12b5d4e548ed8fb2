"""selective_scan and selective_state_update (jamba.selective_scan, jamba.selective_state_update) against
reference.py in float64, state carry-over, decode chains, opcheck, autograd and torch.compile."""
import pytest
import torch

from conftest import (LOW_DTYPES, STATE_TOL, TOL, assert_close, channel_sliced,
                      compile_or_skip, dtype_params, make_A, randn, ratio_check, uniform,
                      up, x_proj_BC)
from jamba_ext import ops, reference


def make_scan(batch, d_inner, d_state, seqlen, device, dtype, *, D=True, z=True, delta_bias=True,
              softplus=True, init=True, bc_f32=False, dt_hi=False):
    """Mamba-like random inputs. u, z: channel slices of a (B, 2*DI, L) tensor; B, C: strided views of an
    x_proj-like (B*L, R+2N) output; A = -exp(A_log) fp32; D, delta_bias fp32 random nonzero.
    softplus: delta ~ N(0, 0.5^2), delta_bias in [-4.5, -1.5] (dt ~ 0.01..0.3 as in Mamba); dt_hi: half the
    channels get delta + delta_bias around 20 (both branches of softplus). No softplus: delta > 0."""
    u, zz = channel_sliced(batch, d_inner, seqlen, device, dtype)
    if softplus:
        delta = randn(batch, d_inner, seqlen, device=device, dtype=dtype, scale=0.5)
        db = uniform(d_inner, lo=-4.5, hi=-1.5, device=device)
        if dt_hi:
            delta = randn(batch, d_inner, seqlen, device=device, dtype=dtype, scale=1.0)
            db[::2] = uniform((d_inner + 1) // 2, lo=19.5, hi=20.5, device=device)
    else:
        delta = uniform(batch, d_inner, seqlen, lo=0.005, hi=0.3, device=device, dtype=dtype)
        db = uniform(d_inner, lo=0.001, hi=0.05, device=device)
    A = make_A(d_inner, d_state, device)
    Bm, Cm = x_proj_BC(batch, d_state, seqlen, device, torch.float32 if bc_f32 else dtype)
    return dict(u=u, delta=delta, A=A, B=Bm, C=Cm,
                D=randn(d_inner, device=device, scale=0.7, shift=0.2) if D else None,
                z=zz if z else None,
                delta_bias=db if delta_bias else None,
                delta_softplus=softplus,
                initial_state=randn(batch, d_inner, d_state, device=device) if init else None)


def ref64(a):
    return reference.selective_scan(**{k: (up(v) if isinstance(v, torch.Tensor) else v) for k, v in a.items()})


# batch, d_inner, d_state, seqlen, D, z, delta_bias, softplus, initial_state
CASES = [
    (1, 3, 5, 1, True, True, True, True, True),          # seqlen 1, everything on
    (2, 5, 16, 0, True, True, True, True, True),         # seqlen 0: last_state = initial_state
    (2, 4, 7, 0, False, False, False, False, False),     # seqlen 0: last_state = 0
    (0, 3, 4, 6, True, True, True, True, True),          # batch 0
    (2, 7, 4, 2, False, False, False, False, False),     # seqlen 2, bare recurrence
    (3, 6, 9, 37, True, False, True, True, False),       # odd seqlen, no gate
    (1, 5, 16, 129, False, True, False, False, True),    # gate + initial state, no softplus
    (2, 3, 1, 17, True, True, False, True, False),       # d_state 1, softplus without bias
    (1, 2, 256, 5, True, True, True, True, True),        # d_state at the limit
    (1, 3, 16, 2100, True, True, True, True, True),      # seqlen > 2048
    (2, 2, 4, 2049, False, False, True, True, False),    # seqlen > 2048, odd
]
CASE_IDS = [f"B{c[0]}_DI{c[1]}_N{c[2]}_L{c[3]}{'_D' if c[4] else ''}{'_z' if c[5] else ''}"
            f"{'_dbias' if c[6] else ''}{'_softplus' if c[7] else ''}{'_init' if c[8] else ''}" for c in CASES]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("batch,d_inner,d_state,seqlen,D,z,delta_bias,softplus,init", CASES, ids=CASE_IDS)
def test_selective_scan_matches_fp64(device, dtype, batch, d_inner, d_state, seqlen, D, z, delta_bias,
                                     softplus, init):
    a = make_scan(batch, d_inner, d_state, seqlen, device, dtype, D=D, z=z, delta_bias=delta_bias,
                  softplus=softplus, init=init)
    out, last = ops.selective_scan(**a)
    assert out.shape == a["u"].shape and out.dtype == dtype and out.is_contiguous()
    assert last.shape == (batch, d_inner, d_state) and last.dtype == torch.float32
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(last, ref_last, **STATE_TOL)
    if dtype in LOW_DTYPES and out.numel() > 0:
        ratio_check(out, reference.selective_scan(**a)[0], ref_out)


@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
def test_selective_scan_bc_fp32(device, dtype):
    """B and C in fp32 with low-precision activations (allowed by the contract)."""
    a = make_scan(2, 5, 6, 23, device, dtype, bc_f32=True)
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(last, ref_last, **STATE_TOL)


@pytest.mark.parametrize("dtype", dtype_params())
def test_selective_scan_softplus_both_sides_of_20(device, dtype):
    """delta + delta_bias straddles the softplus threshold 20 (x <= 20: log1p(exp(x)), else x)."""
    a = make_scan(2, 6, 8, 41, device, dtype, dt_hi=True)
    dt = a["delta"].float() + a["delta_bias"][None, :, None]
    assert (dt > 20).any() and ((dt <= 20) & (dt > 19)).any() and (dt < 0).any()
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(last, ref_last, **STATE_TOL)


@pytest.mark.parametrize("dtype", dtype_params())
def test_selective_scan_strided_params(device, dtype):
    """A as a transposed (N, DI) buffer, D / delta_bias with stride 2, B/C as x_proj views, initial_state a
    channel slice of a wider cache (unit stride along N)."""
    a = make_scan(2, 5, 6, 19, device, dtype)
    a["A"] = a["A"].t().contiguous().t()
    a["D"] = torch.stack([a["D"], randn(5, device=device)], dim=1)[:, 0]
    a["delta_bias"] = torch.stack([a["delta_bias"], randn(5, device=device)], dim=1)[:, 0]
    a["initial_state"] = randn(2, 9, 6, device=device)[:, 2:7]
    assert a["A"].stride() == (1, 5) and a["D"].stride() == (2,)
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(last, ref_last, **STATE_TOL)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("split", [1, 100, 300])
def test_selective_scan_two_halves_equal_one_pass(device, dtype, split):
    """scan(x) == scan(x[:split]) then scan(x[split:], initial_state=last_state of the first part);
    split 300 crosses the CPU kernel's 256-step chunk."""
    a = make_scan(2, 4, 5, 401, device, dtype)
    full, full_last = ops.selective_scan(**a)
    first = dict(a)
    second = dict(a)
    for k in ("u", "delta", "B", "C", "z"):
        first[k] = a[k][..., :split]
        second[k] = a[k][..., split:]
    o1, s1 = ops.selective_scan(**first)
    second["initial_state"] = s1
    o2, s2 = ops.selective_scan(**second)
    assert_close(torch.cat([o1, o2], dim=-1), full, **TOL[dtype])
    assert_close(s2, full_last, **STATE_TOL)


def _decode_inputs(batch, d_inner, d_state, seqlen, device, dtype, dt_rank=3):
    """Per-step decode tensors laid out as a model produces them (x, z slices of an in_proj row (B, 2*DI);
    B, C slices of an x_proj row (B, R+2N)), plus the same data as full-sequence scan inputs."""
    xz = randn(seqlen, batch, 2 * d_inner, device=device, dtype=dtype)
    xp = randn(seqlen, batch, dt_rank + 2 * d_state, device=device, dtype=dtype)
    dts = randn(seqlen, batch, d_inner, device=device, dtype=dtype, scale=0.5)
    steps = [dict(x=xz[t, :, :d_inner], z=xz[t, :, d_inner:], dt=dts[t],
                  B=xp[t, :, dt_rank:dt_rank + d_state], C=xp[t, :, dt_rank + d_state:]) for t in range(seqlen)]
    full = dict(u=xz[..., :d_inner].permute(1, 2, 0).contiguous(),
                z=xz[..., d_inner:].permute(1, 2, 0).contiguous(),
                delta=dts.permute(1, 2, 0).contiguous(),
                B=xp[..., dt_rank:dt_rank + d_state].permute(1, 2, 0),
                C=xp[..., dt_rank + d_state:].permute(1, 2, 0))
    return steps, full


@pytest.mark.parametrize("dtype", dtype_params())
def test_selective_state_update_chain_equals_scan(device, dtype):
    """A chain of selective_state_update steps with an fp32 state reproduces selective_scan over the whole
    sequence (outputs and last state)."""
    batch, d_inner, d_state, seqlen = 2, 5, 6, 12
    steps, full = _decode_inputs(batch, d_inner, d_state, seqlen, device, dtype)
    A = make_A(d_inner, d_state, device)
    D = randn(d_inner, device=device, shift=0.3)
    dt_bias = uniform(d_inner, lo=-4.0, hi=-1.0, device=device)
    state0 = randn(batch, d_inner, d_state, device=device)
    want, want_last = ops.selective_scan(full["u"], full["delta"], A, full["B"], full["C"], D, full["z"],
                                         dt_bias, True, state0)
    state = state0.clone()
    ys = []
    for s in steps:
        y = ops.selective_state_update(state, s["x"], s["dt"], A, s["B"], s["C"], D, s["z"], dt_bias, True)
        assert y.shape == (batch, d_inner) and y.dtype == dtype
        ys.append(y)
    got = torch.stack(ys, dim=-1)
    assert_close(got, want, **TOL[dtype])
    assert_close(state, want_last, **STATE_TOL)
    ref_out, ref_last = reference.selective_scan(up(full["u"]), up(full["delta"]), up(A), up(full["B"]),
                                                 up(full["C"]), up(D), up(full["z"]), up(dt_bias), True, up(state0))
    assert_close(got, ref_out, **TOL[dtype])
    assert_close(state, ref_last, **STATE_TOL)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("state_dtype", dtype_params(LOW_DTYPES))
def test_selective_state_update_chain_low_precision_state(device, dtype, state_dtype):
    """State kept in bf16/fp16: each step rounds the state. Oracle: the same chain in float64 math with the
    state rounded to state_dtype after each step (reference.selective_state_update). A rounding decision
    that flips feeds into later steps, so the bound is twice the one-rounding tolerance."""
    batch, d_inner, d_state, seqlen = 3, 4, 5, 10
    steps, _ = _decode_inputs(batch, d_inner, d_state, seqlen, device, dtype)
    A = make_A(d_inner, d_state, device)
    D = randn(d_inner, device=device, shift=0.3)
    dt_bias = uniform(d_inner, lo=-3.0, hi=-0.5, device=device)
    state = randn(batch, d_inner, d_state, device=device, dtype=state_dtype)
    ref_state = state.clone()
    for s in steps:
        y = ops.selective_state_update(state, s["x"], s["dt"], A, s["B"], s["C"], D, s["z"], dt_bias, True)
        ref_y, ref_state = reference.selective_state_update(ref_state, up(s["x"]), up(s["dt"]), up(A), up(s["B"]),
                                                            up(s["C"]), up(D), up(s["z"]), up(dt_bias), True)
        assert ref_state.dtype == state_dtype and state.dtype == state_dtype
        assert_close(y, ref_y, rtol=2e-2, atol=2e-2)
        assert_close(state, ref_state, rtol=2e-2, atol=2e-2)


# batch, d_inner, d_state, D, z, dt_bias, softplus
SSU_CASES = [
    (1, 3, 5, True, True, True, True),
    (4, 7, 16, False, False, False, False),
    (2, 5, 256, True, False, True, True),
    (3, 6, 1, False, True, False, True),
    (0, 4, 3, True, True, True, True),
]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("batch,d_inner,d_state,D,z,dt_bias,softplus", SSU_CASES,
                         ids=[f"B{c[0]}_DI{c[1]}_N{c[2]}" for c in SSU_CASES])
def test_selective_state_update_matches_fp64(device, dtype, batch, d_inner, d_state, D, z, dt_bias, softplus):
    steps, _ = _decode_inputs(batch, d_inner, d_state, 1, device, dtype)
    s = steps[0]
    if not softplus:
        s["dt"] = uniform(batch, d_inner, lo=0.01, hi=0.4, device=device, dtype=dtype)
    A = make_A(d_inner, d_state, device)
    Dv = randn(d_inner, device=device, shift=0.3) if D else None
    zv = s["z"] if z else None
    db = uniform(d_inner, lo=-3.0, hi=0.5, device=device) if dt_bias else None
    state = randn(batch, d_inner, d_state, device=device)
    state0 = state.clone()
    y = ops.selective_state_update(state, s["x"], s["dt"], A, s["B"], s["C"], Dv, zv, db, softplus)
    ref_y, ref_state = reference.selective_state_update(up(state0), up(s["x"]), up(s["dt"]), up(A), up(s["B"]),
                                                        up(s["C"]), up(Dv), up(zv), up(db), softplus)
    assert y.shape == (batch, d_inner) and y.dtype == dtype
    assert_close(y, ref_y, **TOL[dtype])
    assert_close(state, ref_state, **STATE_TOL)
    if dtype in LOW_DTYPES and y.numel() > 0:
        low_y, _ = reference.selective_state_update(state0, s["x"], s["dt"], A, s["B"], s["C"], Dv, zv, db, softplus)
        ratio_check(y, low_y, ref_y)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["state_f32", "state_bf16"])
@pytest.mark.parametrize("a_layout", ["contig", "transposed"])
def test_selective_state_update_channel_blocks(device, state_dtype, a_layout):
    """d_inner 37 (the CPU op's blocks of 16 channels: two whole, one partial), the state a channel-strided view
    (rows N + 3 apart), A with a non-unit stride along N, a state kept in bf16; against float64."""
    batch, d_inner, d_state = 3, 37, 16
    steps, _ = _decode_inputs(batch, d_inner, d_state, 1, device, torch.float32)
    s = steps[0]
    A = make_A(d_inner, d_state, device)
    if a_layout == "transposed":
        A = A.t().contiguous().t()
    D, db = randn(d_inner, device=device, shift=0.3), uniform(d_inner, lo=-3.0, hi=-0.5, device=device)
    wide = randn(batch, d_inner, d_state + 3, device=device).to(state_dtype)
    state = wide[:, :, 1:1 + d_state]
    state0, wide0 = state.clone(), wide.clone()
    y = ops.selective_state_update(state, s["x"], s["dt"], A, s["B"], s["C"], D, s["z"], db, True)
    ref_y, ref_state = reference.selective_state_update(up(state0), up(s["x"]), up(s["dt"]), up(A), up(s["B"]),
                                                        up(s["C"]), up(D), up(s["z"]), up(db), True)
    tol = STATE_TOL if state_dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert_close(y, ref_y, **(TOL[torch.float32] if state_dtype == torch.float32 else tol))
    assert_close(state, ref_state, **tol)
    assert torch.equal(wide[:, :, 0], wide0[:, :, 0]) and torch.equal(wide[:, :, 1 + d_state:],
                                                                     wide0[:, :, 1 + d_state:])


def test_selective_state_update_writes_only_its_state_slice(device):
    """state as one layer's slice of a (layers, B, DI, N) cache: other layers stay untouched."""
    batch, d_inner, d_state = 2, 3, 4
    steps, _ = _decode_inputs(batch, d_inner, d_state, 1, device, torch.float32)
    s = steps[0]
    cache = randn(3, batch, d_inner, d_state, device=device)
    before = cache.clone()
    A = make_A(d_inner, d_state, device)
    ops.selective_state_update(cache[1], s["x"], s["dt"], A, s["B"], s["C"], None, None, None, True)
    assert torch.equal(cache[0], before[0]) and torch.equal(cache[2], before[2])
    assert not torch.equal(cache[1], before[1])


@pytest.mark.parametrize("op", ["selective_scan", "selective_state_update"])
def test_selective_scan_deterministic(device, op):
    if op == "selective_scan":
        a = make_scan(2, 64, 16, 600, device, torch.bfloat16)
        r1, r2 = ops.selective_scan(**a), ops.selective_scan(**a)
    else:
        steps, _ = _decode_inputs(8, 64, 16, 1, device, torch.bfloat16)
        s = steps[0]
        A = make_A(64, 16, device)
        st = randn(8, 64, 16, device=device)
        s1, s2 = st.clone(), st.clone()
        r1 = (ops.selective_state_update(s1, s["x"], s["dt"], A, s["B"], s["C"], None, s["z"], None, True), s1)
        r2 = (ops.selective_state_update(s2, s["x"], s["dt"], A, s["B"], s["C"], None, s["z"], None, True), s2)
    for t1, t2 in zip(r1, r2):
        assert torch.equal(t1, t2)


# ---- opcheck / autograd --------------------------------------------------------------------------------
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_selective_scan_opcheck(device, requires_grad):
    a = make_scan(2, 3, 4, 7, device, torch.float32)
    for k, v in a.items():
        if isinstance(v, torch.Tensor) and v.is_leaf:
            v.requires_grad_(requires_grad)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "initial_state"]
    torch.library.opcheck(torch.ops.jamba.selective_scan.default, tuple(a[n] for n in names))
    bare = make_scan(1, 2, 3, 5, device, torch.float32, D=False, z=False, delta_bias=False, softplus=False,
                     init=False)
    torch.library.opcheck(torch.ops.jamba.selective_scan.default, tuple(bare[n] for n in names))


def test_selective_state_update_opcheck(device):
    steps, _ = _decode_inputs(2, 3, 4, 1, device, torch.float32)
    s = steps[0]
    A = make_A(3, 4, device)
    state = randn(2, 3, 4, device=device)
    torch.library.opcheck(torch.ops.jamba.selective_state_update.default,
                          (state, s["x"], s["dt"], A, s["B"], s["C"], randn(3, device=device), s["z"],
                           randn(3, device=device), True))
    torch.library.opcheck(torch.ops.jamba.selective_state_update.default,
                          (state.bfloat16(), s["x"], s["dt"], A, s["B"], s["C"], None, None, None, False))


SCAN_GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def _scan_grads(fn, a):
    leaves = [a[n] for n in SCAN_GRAD_NAMES]
    out, last = fn(**a)
    torch.manual_seed(5)
    g1 = torch.randn(out.shape, dtype=torch.float64, device=out.device)
    g2 = torch.randn(last.shape, dtype=torch.float64, device=last.device)
    loss = (out.double() * g1).sum() + (last.double() * g2).sum()
    return torch.autograd.grad(loss, leaves)


def test_selective_scan_grad_matches_fp64(device):
    """Gradients of every tensor input through out and last_state vs float64 autograd of the reference
    (the registered backward runs the reference in fp32: tolerance 1e-4)."""
    a = make_scan(2, 3, 4, 9, device, torch.float32)
    for n in SCAN_GRAD_NAMES:
        a[n] = a[n].detach().clone().requires_grad_()
    got = _scan_grads(ops.selective_scan, a)
    a64 = {k: (up(v).requires_grad_() if k in SCAN_GRAD_NAMES else v) for k, v in a.items()}
    want = _scan_grads(reference.selective_scan, a64)
    for n, g, e in zip(SCAN_GRAD_NAMES, got, want):
        assert g is not None and g.shape == a[n].shape and g.dtype == a[n].dtype, n
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4, msg=lambda m: f"grad of {n}: {m}")


@pytest.mark.filterwarnings("ignore:Input #")
def test_selective_scan_gradcheck_fp32(device):
    """gradcheck of the op itself in fp32 (the kernels take no float64), loose tolerances."""
    a = make_scan(1, 2, 2, 3, device, torch.float32)
    names = ["u", "delta", "B", "C", "D", "z", "delta_bias", "initial_state"]
    ins = [a[n].detach().clone().requires_grad_() for n in names]

    def fn(*t):
        kw = dict(zip(names, t))
        return ops.selective_scan(kw["u"], kw["delta"], a["A"], kw["B"], kw["C"], kw["D"], kw["z"],
                                  kw["delta_bias"], True, kw["initial_state"])

    assert torch.autograd.gradcheck(fn, ins, eps=1e-2, atol=5e-3, rtol=5e-3)


# ---- torch.compile -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_selective_scan_compile_fullgraph(device, backend):
    """Prefill scan, then one decode step on the carried state, as one compiled graph (the in-place state
    update must survive functionalization)."""

    def step(a, state, x, dt, B1, C1):
        out, last = ops.selective_scan(**a)
        state.copy_(last)
        y = ops.selective_state_update(state, x, dt, a["A"], B1, C1, a["D"], None, a["delta_bias"], True)
        return out, y

    a = make_scan(2, 4, 3, 8, device, torch.float32)
    steps, _ = _decode_inputs(2, 4, 3, 1, device, torch.float32)
    s = steps[0]
    st_eager = randn(2, 4, 3, device=device)
    st = st_eager.clone()
    want = step(a, st_eager, s["x"], s["dt"], s["B"], s["C"])
    fn = compile_or_skip(step, backend)
    got = fn(a, st, s["x"], s["dt"], s["B"], s["C"])
    for g, e in zip(got, want):
        assert_close(g, e, **TOL[torch.float32])
    assert_close(st, st_eager, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", dtype_params())
def test_selective_scan_large(device, dtype):
    a = make_scan(2, 16, 16, 4100, device, dtype)
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(last, ref_last, **STATE_TOL)



def test_cuda_softplus_polynomials():
    """The CUDA scans' softplus (csrc/cuda/selective_scan.cu, pc_softplus: max(v, 0) + e * P(e), e = exp(-|v|)):
    both coefficient lists, read from the source and evaluated as the kernel's fp32 FMA chain (numpy, each step
    rounded to fp32), against float64 softplus over v in [-40, 40]: relative error < 2.5e-7 for the degree-8 P,
    < 1.6e-6 for the g4 kernel's degree-6 P (CI has no GPU: a wrong digit would otherwise show only there; a
    coefficient off by 1e-5 fails)."""
    import os
    import re
    import numpy as np
    src = open(os.path.join(os.path.dirname(__file__), "..", "csrc", "cuda", "selective_scan.cu")).read()
    body = src[src.index("float pc_softplus(float v)"):]
    body = body[:body.index("\n}\n")]
    lists = [[float(c) for c in re.findall(r"-?\d+\.\d+(?=f)", m)]
             for m in re.findall(r"pc_horner\(e, \{([^}]*)\}", body)]
    assert sorted(len(c) for c in lists) == [7, 9], lists
    v = np.concatenate([np.linspace(-40, 40, 200001), [-1e-6, 0.0, 1e-6, 20.0, 20.5]]).astype(np.float32)
    e = np.exp(-np.abs(v.astype(np.float64))).astype(np.float32)
    ref = np.logaddexp(0.0, v.astype(np.float64))
    for c in lists:
        cf = np.float32(c)
        q = np.full_like(e, cf[0])
        for ci in cf[1:]:
            q = (q.astype(np.float64) * e + np.float64(ci)).astype(np.float32)
        out = (e.astype(np.float64) * q + np.maximum(v, 0).astype(np.float64)).astype(np.float32)
        rel = np.max(np.abs(out - ref) / ref)
        assert rel < (2.5e-7 if len(c) == 9 else 1.6e-6), (len(c) - 1, rel)  # measured 1.9e-7 / 1.45e-6
