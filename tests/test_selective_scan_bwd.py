"""selective_scan_bwd (jamba.selective_scan_bwd, the native gradients of selective_scan) against the float64
autograd of reference.selective_scan: every gradient, dtypes, shapes around the chunk lengths (256 steps and 32
channels on CUDA, 64 steps on the CPU), strided inputs, determinism, CUDA graphs, opcheck, bad inputs, and
selective_scan's autograd using it."""
import pytest
import torch

from conftest import dtype_params, graph_replays, make_A, randn, up
from jamba_ext import ops, reference
from test_selective_scan import make_scan

NAMES = ["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial_state"]
# outputs in u's dtype are rounded once to it; the f32 ones carry fp32 sums over up to B * DI * L terms
ROUND = {torch.float32: 1e-4, torch.bfloat16: 1.2e-2, torch.float16: 2e-3}


def _bwd_args(a, dout, dlast):
    return (a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], a["delta_softplus"],
            a["initial_state"], dout, dlast)


def _check(got, want, dtype, rounded=("du", "ddelta", "dz")):
    for n, g, e in zip(NAMES, got, want):
        if e is None:
            continue
        assert not torch.isnan(g).any(), f"{n}: NaN (an element was not written?)"
        assert g.shape == e.shape, f"{n}: shape {tuple(g.shape)} vs {tuple(e.shape)}"
        if e.numel() == 0:
            continue
        tol = ROUND[dtype] if n in rounded else 1e-4
        scale = max(e.abs().max().item(), 1e-3)
        err = (g.double() - e).abs().max().item()
        assert err <= tol * scale, f"{n}: max error {err:.3e} > {tol:.1e} x max |grad| {scale:.3e}"


def _run(a, device, dtype, dlast=True, seed=3):
    Bsz, DI, L = a["u"].shape
    N = a["A"].shape[1]
    dout = randn(Bsz, DI, L, device=device, dtype=dtype)
    dl = randn(Bsz, DI, N, device=device) if dlast else None
    got = ops.selective_scan_bwd(*_bwd_args(a, dout, dl))
    a64 = {k: (up(v) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    want = reference.selective_scan_bwd(*_bwd_args(a64, up(dout), up(dl)))
    return got, want


# batch, d_inner, d_state, seqlen, D, z, delta_bias, softplus, initial_state, dlast_state
CASES = [
    (1, 3, 5, 1, True, True, True, True, True, True),          # seqlen 1
    (2, 5, 16, 0, True, True, True, True, True, True),         # seqlen 0: dinitial_state = dlast_state
    (2, 7, 4, 2, False, False, False, False, False, False),    # bare recurrence
    (3, 6, 9, 37, True, False, True, True, False, True),       # odd seqlen, no gate
    (1, 5, 16, 16, False, True, False, False, True, False),    # one whole CUDA chunk
    (2, 33, 16, 65, True, True, True, True, True, True),       # CUDA and CPU chunks + 1; channels > one warp
    (2, 3, 1, 17, True, True, False, True, False, True),       # d_state 1
    (1, 4, 32, 20, True, True, True, True, True, True),        # d_state 32 (the CUDA limit)
    (1, 40, 3, 130, True, True, True, True, True, True),       # channel blocks of the CPU (32) + 8
    (1, 2, 16, 1100, True, True, True, True, True, True),      # long
    (2, 37, 5, 300, True, True, True, True, True, True),       # CUDA: 2 chunks, 2 channel blocks, odd N
    (1, 33, 16, 520, True, True, True, True, False, True),     # CUDA: 16-byte rows, 3 chunks, the last partial
    (1, 8, 32, 256, True, True, True, True, True, True),       # one whole CUDA chunk at d_state 32
    (3, 9, 16, 257, True, False, True, True, True, False),     # CUDA chunk + 1, batch 3
]
IDS = [f"B{c[0]}_DI{c[1]}_N{c[2]}_L{c[3]}" + "".join(s for s, on in zip(
    ["_D", "_z", "_dbias", "_softplus", "_init", "_dlast"], c[4:]) if on) for c in CASES]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_selective_scan_bwd_matches_fp64(device, dtype, case):
    Bsz, DI, N, L, D, z, db, sp, init, dlast = case
    a = make_scan(Bsz, DI, N, L, device, dtype, D=D, z=z, delta_bias=db, softplus=sp, init=init)
    got, want = _run(a, device, dtype, dlast=dlast)
    _check(got, want, dtype)
    if z is False:
        assert got[6].numel() == 0
    if L == 0:  # the gradient of the initial state is the last state's
        assert torch.equal(got[8], torch.zeros_like(got[8]) if not dlast else got[8])


@pytest.mark.parametrize("dtype", dtype_params([torch.bfloat16]))
def test_selective_scan_bwd_bc_fp32_and_softplus_branches(device, dtype):
    """B / C in fp32 beside bf16 activations; delta + bias on both sides of softplus's threshold 20."""
    a = make_scan(2, 8, 16, 45, device, dtype, bc_f32=True, dt_hi=True)
    got, want = _run(a, device, dtype)
    _check(got, want, dtype)


def test_selective_scan_bwd_cpu_only_large_state():
    """The CPU kernel takes any d_state up to 256 (CUDA: <= 32)."""
    a = make_scan(1, 3, 40, 9, "cpu", torch.float32)
    got, want = _run(a, "cpu", torch.float32)
    _check(got, want, torch.float32)


def test_selective_scan_bwd_deterministic(device):
    a = make_scan(2, 70, 16, 300, device, torch.bfloat16)
    dout = randn(2, 70, 300, device=device, dtype=torch.bfloat16)
    dl = randn(2, 70, 16, device=device)
    r1 = ops.selective_scan_bwd(*_bwd_args(a, dout, dl))
    r2 = ops.selective_scan_bwd(*_bwd_args(a, dout, dl))
    for n, t1, t2 in zip(NAMES, r1, r2):
        assert torch.equal(t1, t2), n


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_selective_scan_bwd_cuda_matches_cpu():
    """The two backends on the same inputs (fp32): same math, different summation orders."""
    a = make_scan(2, 50, 16, 77, "cuda", torch.float32)
    dout = randn(2, 50, 77, device="cuda")
    dl = randn(2, 50, 16, device="cuda")
    g = ops.selective_scan_bwd(*_bwd_args(a, dout, dl))
    ac = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    c = ops.selective_scan_bwd(*_bwd_args(ac, dout.cpu(), dl.cpu()))
    for n, x, y in zip(NAMES, g, c):
        scale = max(y.abs().max().item(), 1e-3) if y.numel() else 1.0
        assert (x.cpu().double() - y.double()).abs().max().item() <= 2e-5 * scale, n


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_selective_scan_bwd_cuda_graph():
    """Captured once, replayed on new inputs: the same gradients as eager calls."""
    a = make_scan(1, 40, 16, 50, "cuda", torch.bfloat16)
    dout = randn(1, 40, 50, device="cuda", dtype=torch.bfloat16)
    names = ["u", "delta", "B", "C", "z", "initial_state"]

    def fn(u, delta, B, C, z, init, do):
        return ops.selective_scan_bwd(u, delta, a["A"], B, C, a["D"], z, a["delta_bias"], True, init, do, None)

    static = [a[n].contiguous() for n in names] + [dout]
    b = make_scan(1, 40, 16, 50, "cuda", torch.bfloat16)
    fresh = [b[n].contiguous() for n in names] + [randn(1, 40, 50, device="cuda", dtype=torch.bfloat16)]
    (got,) = graph_replays(fn, static, [fresh])
    want = fn(*fresh)
    for n, g, w in zip(NAMES, got, want):
        assert torch.equal(g, w), n


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_selective_scan_autograd_cuda_large_state_uses_reference():
    """d_state > 32 on CUDA: selective_scan's autograd takes the reference path (and is right)."""
    a = make_scan(1, 3, 40, 6, "cuda", torch.float32)
    leaves = {n: a[n].detach().clone().requires_grad_() for n in ("u", "delta", "B", "C")}
    out, last = ops.selective_scan(**{**a, **leaves})
    g = torch.autograd.grad(out.sum() + last.sum(), list(leaves.values()))
    a64 = {k: (up(v).requires_grad_() if k in leaves else up(v) if isinstance(v, torch.Tensor) else v)
           for k, v in a.items()}
    o64, l64 = reference.selective_scan(**a64)
    w = torch.autograd.grad(o64.sum() + l64.sum(), [a64[n] for n in leaves])
    for n, x, y in zip(leaves, g, w):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("dtype", dtype_params())
def test_selective_scan_training_grads(device, dtype):
    """A training step's view: selective_scan(...).backward through the native kernel, every input's gradient in
    its own dtype, against float64 autograd."""
    a = make_scan(2, 9, 16, 40, device, dtype)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    leaves = {n: a[n].detach().clone().requires_grad_() for n in names}
    out, last = ops.selective_scan(**{**a, **leaves})
    g1 = randn(*out.shape, device=device, dtype=dtype)
    g2 = randn(*last.shape, device=device)
    got = torch.autograd.grad([out, last], list(leaves.values()), [g1, g2])
    want = reference.selective_scan_bwd(*_bwd_args({k: (up(v) if isinstance(v, torch.Tensor) else v)
                                                    for k, v in a.items()}, up(g1), up(g2)))
    for n, g in zip(names, got):  # names line up with NAMES
        assert g is not None and g.dtype == leaves[n].dtype and g.shape == leaves[n].shape, n
    _check(got, want, dtype, rounded=("du", "ddelta", "dz", "dB", "dC"))  # B, C's gradients in their dtype


def test_selective_scan_bwd_opcheck(device):
    a = make_scan(2, 3, 4, 7, device, torch.float32)
    dout = randn(2, 3, 7, device=device)
    torch.library.opcheck(torch.ops.jamba.selective_scan_bwd.default, _bwd_args(a, dout, randn(2, 3, 4,
                                                                                                device=device)))
    bare = make_scan(1, 2, 3, 5, device, torch.float32, D=False, z=False, delta_bias=False, softplus=False,
                     init=False)
    torch.library.opcheck(torch.ops.jamba.selective_scan_bwd.default, _bwd_args(bare, randn(1, 2, 5, device=device),
                                                                               None))


def test_selective_scan_bwd_bad_inputs(device):
    a = make_scan(2, 3, 4, 7, device, torch.float32)
    dout = randn(2, 3, 7, device=device)
    with pytest.raises(ValueError, match="dout"):
        ops.selective_scan_bwd(*_bwd_args(a, randn(2, 3, 6, device=device), None))
    with pytest.raises(ValueError, match="dout"):
        ops.selective_scan_bwd(*_bwd_args(a, dout.bfloat16(), None))
    with pytest.raises(ValueError, match="dlast_state"):
        ops.selective_scan_bwd(*_bwd_args(a, dout, randn(2, 3, 5, device=device)))
    with pytest.raises(ValueError, match="delta"):
        bad = dict(a, delta=randn(2, 3, 8, device=device))
        ops.selective_scan_bwd(*_bwd_args(bad, dout, None))
    with pytest.raises(ValueError, match="A"):
        bad = dict(a, A=make_A(3, 4, device).double())
        ops.selective_scan_bwd(*_bwd_args(bad, dout, None))
