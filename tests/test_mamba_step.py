"""mamba_inner_step (a Mamba layer's decode step between in_proj and out_proj) against the chain of ops it stands
for and against reference.py in float64.

Error model: the op's contract is the chain conv update -> gemv -> rms_norm_segments -> gemv -> state update, each
rounding to the activation dtype. The CPU op runs that chain (same bits). CUDA with a workspace runs one kernel whose
x_proj and dt_proj sums go in another order: the last bit of an intermediate may differ, which the later steps
carry; so it is compared with the chain within a few ulp of the activation dtype (relative to the output's scale),
and both with float64 within the chain's own error against it (bf16 / fp16: five roundings in a row, so a
normwise bound instead of the per-element TOL of a single op)."""
import pytest
import torch

from conftest import HAS_GPU, dtype_params, randn, up
from jamba_ext import ops, reference

# batch, d_inner, dt_rank, d_state, conv width, conv state length, conv bias, D: Jamba's layout (S = K = 4), a shorter
# state (S = K - 1), a longer one, odd d_inner (not a multiple of 8: CUDA runs the five launches), N = 4 / 8, no bias,
# no D, several 64-channel blocks with a partial last one; batch > 2: CUDA runs the five launches
CASES = [(1, 64, 16, 16, 4, 4, True, True), (3, 200, 8, 8, 4, 4, True, True), (2, 96, 32, 4, 3, 2, True, True),
         (2, 72, 16, 16, 4, 6, False, True), (1, 100, 16, 16, 4, 4, True, False), (2, 520, 24, 16, 2, 1, True, True),
         (1, 136, 16, 16, 4, 4, True, True), (8, 136, 16, 16, 4, 4, True, True)]
CASE_IDS = [f"B{c[0]}_DI{c[1]}_R{c[2]}_N{c[3]}_K{c[4]}_S{c[5]}{'' if c[6] else '_nobias'}{'' if c[7] else '_noD'}"
            for c in CASES]
NORM_TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def make(B, DI, R, N, K, S, bias, has_d, dtype, device):
    NO = R + 2 * N
    a = dict(x=randn(B, DI, device=device, dtype=dtype), z=randn(B, DI, device=device, dtype=dtype),
             conv_state=randn(B, DI, S, device=device, dtype=dtype),
             conv_weight=randn(DI, 1, K, device=device, dtype=dtype, scale=0.5),
             conv_bias=randn(DI, device=device, dtype=dtype, scale=0.3) if bias else None,
             xproj_weight=randn(NO, DI, device=device, dtype=dtype, scale=DI ** -0.5),
             norm_weight=randn(NO, device=device, dtype=dtype, scale=0.3, shift=1.0),
             dtproj_weight=randn(DI, R, device=device, dtype=dtype, scale=R ** -0.5),
             A=-(torch.rand(DI, N, device=device) * 3 + 0.2), D=randn(DI, device=device) if has_d else None,
             dt_bias=randn(DI, device=device, scale=0.5, shift=-1.0),
             ssm_state=randn(B, DI, N, device=device, scale=0.5))
    return a, R


def run_op(a, R, work=None):
    c = {k: (v.clone() if k in ("conv_state", "ssm_state") else v) for k, v in a.items()}
    y = ops.mamba_inner_step(c["x"], c["z"], c["conv_state"], c["conv_weight"], c["conv_bias"], c["xproj_weight"],
                             c["norm_weight"], c["dtproj_weight"], c["A"], c["D"], c["dt_bias"], c["ssm_state"], R,
                             1e-6, work)
    return y, c["conv_state"], c["ssm_state"]


def run_chain(a, R):
    cs, ss = a["conv_state"].clone(), a["ssm_state"].clone()
    N = a["A"].shape[1]
    xc = ops.causal_conv1d_update(a["x"], cs, a["conv_weight"], a["conv_bias"], True)
    xdbl = ops.gemv(xc, a["xproj_weight"])
    n = ops.rms_norm_segments(xdbl, a["norm_weight"], [R, R + N], 1e-6)
    delta = ops.gemv(n[:, :R], a["dtproj_weight"])
    y = ops.selective_state_update(ss, xc, delta, a["A"], n[:, R:R + N], n[:, R + N:], a["D"], a["z"],
                                   a["dt_bias"], True)
    return y, cs, ss


def run_ref(a, R):
    return reference.mamba_inner_step(*(up(a[k]) for k in ("x", "z", "conv_state", "conv_weight", "conv_bias",
                                                           "xproj_weight", "norm_weight", "dtproj_weight", "A", "D",
                                                           "dt_bias", "ssm_state")), R, 1e-6)


def fused_applies(B, DI, R, dtype):
    """Whether mamba_step.cu's kernel takes these sizes (the other limits hold in every case here)."""
    vn = 16 // torch.tensor([], dtype=dtype).element_size()
    return B <= 2 and DI % vn == 0 and R % vn == 0


def normwise(got, ref):
    return ((got.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_mamba_inner_step_matches_chain_and_reference(device, dtype, case, monkeypatch):
    a, R = make(*case, dtype=dtype, device=device)
    work = ops.mamba_inner_step_workspace(case[1], case[0], R + 2 * case[3], device) if device.type == "cuda" else None
    if device.type == "cuda" and fused_applies(case[0], case[1], R, dtype):
        monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")     # the fused kernel, or an error saying why not
    y, cs, ss = run_op(a, R, work)
    yc, csc, ssc = run_chain(a, R)
    yr, csr, ssr = run_ref(a, R)
    assert not torch.isnan(y).any(), "output has NaN (an element was not written?)"
    assert torch.equal(cs, csc), "conv_state differs from the conv update's"
    if device.type == "cpu":                                         # the CPU op is the chain
        assert torch.equal(y, yc) and torch.equal(ss, ssc)
    else:                                                            # the fused kernel: sums in another order
        ulp = {torch.float32: 2.0 ** -20, torch.bfloat16: 2.0 ** -6, torch.float16: 2.0 ** -9}[dtype]
        scale = yc.double().abs().max().item()
        assert (y.double() - yc.double()).abs().max().item() <= ulp * scale + 1e-6
        assert normwise(ss, ssc.double()) <= {torch.float32: 1e-5}.get(dtype, 1e-2)
    for got in (y, yc):
        assert normwise(got, yr) <= NORM_TOL[dtype], "normwise error against float64"
    assert normwise(ss, ssr) <= NORM_TOL[dtype]


@pytest.mark.parametrize("dtype", dtype_params())
def test_mamba_inner_step_decode_chain(device, dtype, monkeypatch):
    """20 steps in a row (states carried) stay with the float64 chain."""
    a, R = make(2, 136, 16, 16, 4, 4, True, True, dtype=dtype, device=device)
    if device.type == "cuda":
        monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")
    work = ops.mamba_inner_step_workspace(136, 2, R + 32, device) if device.type == "cuda" else None
    ra = {k: up(v) for k, v in a.items()}
    for _ in range(20):
        a["x"], a["z"] = randn(2, 136, device=device, dtype=dtype), randn(2, 136, device=device, dtype=dtype)
        ra["x"], ra["z"] = up(a["x"]), up(a["z"])
        y, a["conv_state"], a["ssm_state"] = run_op(a, R, work)
        yr, ra["conv_state"], ra["ssm_state"] = reference.mamba_inner_step(
            *(ra[k] for k in ("x", "z", "conv_state", "conv_weight", "conv_bias", "xproj_weight", "norm_weight",
                              "dtproj_weight", "A", "D", "dt_bias", "ssm_state")), R, 1e-6)
        assert normwise(y, yr) <= 2 * NORM_TOL[dtype]
    assert normwise(a["ssm_state"], ra["ssm_state"]) <= 2 * NORM_TOL[dtype]


def test_mamba_inner_step_bad_inputs_leave_states():
    a, R = make(2, 64, 16, 16, 4, 4, True, True, dtype=torch.float32, device=torch.device("cpu"))
    cs0, ss0 = a["conv_state"].clone(), a["ssm_state"].clone()

    def call(**over):
        c = dict(a, **over)
        return ops.mamba_inner_step(c["x"], c["z"], c["conv_state"], c["conv_weight"], c["conv_bias"],
                                    c["xproj_weight"], c["norm_weight"], c["dtproj_weight"], c["A"], c["D"],
                                    c["dt_bias"], c["ssm_state"], over.pop("R", R), 1e-6, over.get("work"))

    with pytest.raises(ValueError, match="dt_rank"):
        ops.mamba_inner_step(a["x"], a["z"], a["conv_state"], a["conv_weight"], a["conv_bias"], a["xproj_weight"],
                             a["norm_weight"], a["dtproj_weight"], a["A"], a["D"], a["dt_bias"], a["ssm_state"],
                             R + 1, 1e-6)
    with pytest.raises(ValueError, match="dtproj_weight"):
        call(dtproj_weight=a["dtproj_weight"][:, :8])
    with pytest.raises(ValueError, match="A"):
        call(A=a["A"].double())
    with pytest.raises(ValueError, match="norm_weight"):
        call(norm_weight=a["norm_weight"][:10])
    with pytest.raises(ValueError, match="ssm_state"):                # the state update's check, last of the five
        call(ssm_state=a["ssm_state"][:, :, :8].contiguous())
    with pytest.raises(ValueError, match="work"):
        call(work=torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="x_proj|work"):
        call(work=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="xproj_weight"):
        call(xproj_weight=a["xproj_weight"].to(torch.bfloat16))
    assert torch.equal(a["conv_state"], cs0) and torch.equal(a["ssm_state"], ss0), "a refused call changed a state"


def test_mamba_inner_step_opcheck():
    a, R = make(2, 64, 16, 8, 4, 4, True, True, dtype=torch.float32, device=torch.device("cpu"))
    args = (a["x"], a["z"], a["conv_state"], a["conv_weight"], a["conv_bias"], a["xproj_weight"], a["norm_weight"],
            a["dtproj_weight"], a["A"], a["D"], a["dt_bias"], a["ssm_state"], R, 1e-6)
    torch.library.opcheck(ops.mamba_inner_step.custom_op, args)


# ---- CUDA: the fused kernel -----------------------------------------------------------------------------------
cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("mark", [pytest.param(0, marks=cuda)])
def test_mamba_inner_step_cuda_jamba_shapes(dtype, B, mark, monkeypatch):
    """Jamba-v0.1's shapes (d_inner 8192, dt_rank 256, d_state 16, width 4): the fused kernel against the chain of
    CUDA ops and float64; deterministic (two runs, same bits; launched without the cooperative attribute too); the
    five-launch path (no work, or
    JAMBA_EXT_MAMBA_STEP_FUSED=0) is the chain, bit for bit."""
    dev = torch.device("cuda")
    a, R = make(B, 8192, 256, 16, 4, 4, True, True, dtype=dtype, device=dev)
    work = ops.mamba_inner_step_workspace(8192, B, 256 + 32, dev)
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")
    y1, cs1, ss1 = run_op(a, R, work)
    y2, cs2, ss2 = run_op(a, R, work)
    assert torch.equal(y1, y2) and torch.equal(ss1, ss2) and torch.equal(cs1, cs2), "not deterministic"
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "nocoop")
    y3, cs3, ss3 = run_op(a, R, work)
    assert torch.equal(y1, y3) and torch.equal(ss1, ss3) and torch.equal(cs1, cs3), "cooperative or not differ"
    monkeypatch.delenv("JAMBA_EXT_MAMBA_STEP_FUSED")
    yc, csc, ssc = run_chain(a, R)
    yr, _, ssr = run_ref(a, R)
    ulp = {torch.float32: 2.0 ** -20, torch.bfloat16: 2.0 ** -6, torch.float16: 2.0 ** -9}[dtype]
    assert (y1.double() - yc.double()).abs().max().item() <= ulp * yc.double().abs().max().item() + 1e-6
    assert torch.equal(cs1, csc)
    assert normwise(y1, yr) <= NORM_TOL[dtype] and normwise(ss1, ssr) <= NORM_TOL[dtype]
    y0, cs0, ss0 = run_op(a, R, None)
    assert torch.equal(y0, yc) and torch.equal(ss0, ssc) and torch.equal(cs0, csc)
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "0")
    y0, cs0, ss0 = run_op(a, R, work)
    assert torch.equal(y0, yc) and torch.equal(ss0, ssc) and torch.equal(cs0, csc)


@pytest.mark.parametrize("mark", [pytest.param(0, marks=cuda)])
def test_mamba_inner_step_cuda_workspace_shared_across_sizes(mark, monkeypatch):
    """One workspace for calls of different grids (3, 128, 5 and 3 blocks: the barrier's count must come back to its
    start after each call whatever the grid): each call equals the same call on a fresh workspace, bit for bit."""
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")
    dev = torch.device("cuda")
    shared = ops.mamba_inner_step_workspace(8192, 2, 288, dev)
    for B, DI in ((1, 136), (2, 8192), (2, 320), (1, 136)):
        a, R = make(B, DI, 16 if DI < 8192 else 256, 16, 4, 4, True, True, dtype=torch.bfloat16, device=dev)
        NO = R + 32
        y, cs, ss = run_op(a, R, shared)
        y0, cs0, ss0 = run_op(a, R, ops.mamba_inner_step_workspace(DI, B, NO, dev))
        assert torch.equal(y, y0) and torch.equal(ss, ss0) and torch.equal(cs, cs0), (B, DI)


@pytest.mark.parametrize("mark", [pytest.param(0, marks=cuda)])
def test_mamba_inner_step_cuda_graph(mark, monkeypatch):
    """Captured in a CUDA graph (the model's static decode step): replays equal eager steps on the same inputs."""
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")
    dev = torch.device("cuda")
    a, R = make(1, 8192, 256, 16, 4, 4, True, True, dtype=torch.bfloat16, device=dev)
    work = ops.mamba_inner_step_workspace(8192, 1, 288, dev)
    eager = dict(a, conv_state=a["conv_state"].clone(), ssm_state=a["ssm_state"].clone())
    static = dict(a, conv_state=a["conv_state"].clone(), ssm_state=a["ssm_state"].clone())
    args = lambda c: (c["x"], c["z"], c["conv_state"], c["conv_weight"], c["conv_bias"], c["xproj_weight"],  # noqa
                      c["norm_weight"], c["dtproj_weight"], c["A"], c["D"], c["dt_bias"], c["ssm_state"], R, 1e-6)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.mamba_inner_step(*args(dict(a, conv_state=a["conv_state"].clone(), ssm_state=a["ssm_state"].clone())),
                             work)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = ops.mamba_inner_step(*args(static), work)
    for _ in range(3):
        g.replay()
        ye = ops.mamba_inner_step(*args(eager), work)
        torch.cuda.synchronize()
        assert torch.equal(out, ye) and torch.equal(static["ssm_state"], eager["ssm_state"])
        assert torch.equal(static["conv_state"], eager["conv_state"])


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static_graph"])
@pytest.mark.parametrize("mark", [pytest.param(0, marks=cuda)])
def test_model_decode_with_fused_step(monkeypatch, static, batch, mark):
    """The model's decode steps with MAMBA_STEP_FUSED (the default; JAMBA_EXT_MAMBA_STEP=0 turns it off) against the
    same model without it (bf16 on CUDA; greedy generate with the CUDA graph in the static case): logits within bf16
    noise, and the fused op is what ran."""
    from jamba_ext import modeling_jamba as mj
    from test_model import CONFIGS, make_pair, prompt_ids, rel_err
    cfg = dict(CONFIGS["mamba_dense"], mamba_dt_rank=16)               # R a multiple of 8: the fused kernel runs
    ours = make_pair(cfg, dtype=torch.bfloat16, device="cuda")[1]
    ids = prompt_ids(batch, 9, ours.config.vocab_size, seed=5).cuda()
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")           # the kernel ran, not the five launches
    calls = []
    real = ops.mamba_inner_step
    monkeypatch.setattr(mj._ops, "mamba_inner_step", lambda *a: calls.append(1) or real(*a))
    logits = {}
    for fused in (False, True):
        monkeypatch.setattr(mj, "MAMBA_STEP_FUSED", fused)
        with torch.no_grad():
            cache = mj.JambaHybridCache(ours.config, batch, max_length=32, static=static)
            la = ours(ids, cache=cache).logits[:, -1]
            tok, steps = la.argmax(-1), []
            for _ in range(6):
                lb = ours(tok[:, None], cache=cache).logits[:, -1]
                steps.append(lb.float())
                tok = lb.argmax(-1)
        logits[fused] = torch.stack(steps)
    assert calls, "the fused step did not run"
    assert rel_err(logits[True], logits[False]) <= 2e-2
    if static:
        g0 = ours.generate(ids.tolist(), max_new_tokens=20, eos_token_id=None, cuda_graph=True)
        monkeypatch.setattr(mj, "MAMBA_STEP_FUSED", True)
        g1 = ours.generate(ids.tolist(), max_new_tokens=20, eos_token_id=None, cuda_graph=True)
        agree = (g0 == g1).float().mean().item()
        assert agree >= 0.5, f"greedy tokens agree only {agree:.0%} (bf16 noise flips a few late ones at most)"


@pytest.mark.parametrize("mark", [pytest.param(0, marks=cuda)])
def test_mamba_inner_step_cuda_fallback(mark, monkeypatch):
    """Outside the fused kernel's limits (batch 3) the op runs the five launches (the chain's bits); with
    JAMBA_EXT_MAMBA_STEP_FUSED=force it says why it cannot fuse instead."""
    dev = torch.device("cuda")
    a, R = make(3, 136, 16, 16, 4, 4, True, True, dtype=torch.bfloat16, device=dev)
    work = ops.mamba_inner_step_workspace(136, 3, 48, dev)
    y, cs, ss = run_op(a, R, work)
    yc, csc, ssc = run_chain(a, R)
    assert torch.equal(y, yc) and torch.equal(cs, csc) and torch.equal(ss, ssc)
    monkeypatch.setenv("JAMBA_EXT_MAMBA_STEP_FUSED", "force")
    with pytest.raises(RuntimeError, match="does not apply"):
        run_op(a, R, work)
