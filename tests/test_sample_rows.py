"""jamba.sample_rows: one token per row, each row with its own sampling settings (csrc/{cpu,cuda}/sample_rows.*).
The float64 reference (reference.sample_rows_kept) follows JambaForCausalLM._warp row by row; the op's greedy rows
give the reference's argmax, and its sampled rows keep the reference's columns (tau, the smallest score kept, marks
them) and draw among them, following the softmax of the kept scores; the CPU and CUDA keep the same columns and
mostly draw the same tokens; deterministic for a seed and offset; bad inputs refused by name; opcheck; a CUDA graph
replay."""
import random

import pytest
import torch

from conftest import HAS_GPU, dtype_params, graph_replays
from jamba_ext import ops, reference
from jamba_ext.modeling_jamba import JambaForCausalLM

# temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty
SETTINGS = [(0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0), (0.7, 5, 1.0, 0.0, 1.0, 0.0, 0.0), (1.3, 0, 0.9, 0.0, 1.5, 0.5, 0.3),
            (1.0, 0, 1.0, 0.05, 1.0, 0.0, 0.0), (0.5, 40, 0.8, 0.02, 1.0, 0.0, 0.0), (0.0, 7, 0.5, 0.3, 1.2, 1.0, 2.0),
            (1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0), (2.0, 600, 0.97, 0.0, 0.8, -0.5, 0.0), (0.9, 1, 1.0, 0.0, 1.0, 0.0, 0.0),
            (1.1, 0, 0.3, 0.0, 1.0, 0.0, 0.0), (0.8, 3, 0.999, 0.9, 1.0, 0.0, 0.0)]


def make(R, V, device, dtype, seed=0, penalties=True, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(R, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    rng = random.Random(seed)
    params = torch.tensor([SETTINGS[(r + rng.randrange(len(SETTINGS))) % len(SETTINGS)] for r in range(R)],
                          dtype=torch.float32)
    seen = torch.rand(R, V, generator=g) < 0.1 if penalties else None
    counts = (torch.randint(0, 4, (R, V), generator=g, dtype=torch.int32) * (torch.rand(R, V, generator=g) < 0.05)
              ).int() if penalties else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(logits), to(params), to(seen), to(counts)


def check_against_reference(logits, params, seen, counts, tokens, tau):
    """reference.sample_rows_disagreements finds none (greedy rows: the argmax and its logit; sampled rows: the kept
    columns but at the boundary, and a token among them)."""
    ref = reference.sample_rows_kept(*(None if t is None else t.cpu() for t in (logits, params, seen, counts)))
    bad = reference.sample_rows_disagreements(params.cpu(), tokens, tau, *ref)
    assert not bad, bad


def test_reference_follows_warp_row_by_row():
    """The reference's kept columns per row are those JambaForCausalLM._warp keeps finite for that row's settings
    alone (generate()'s filters), after the same penalties."""
    logits, params, seen, counts = make(len(SETTINGS), 513, "cpu", torch.float32, seed=4)
    params = torch.tensor(SETTINGS, dtype=torch.float32)
    greedy, scores, kept = reference.sample_rows_kept(logits, params, seen, counts)
    for r, (t, k, p, mp, *_) in enumerate(SETTINGS):
        x = scores[r:r + 1] * (t if t > 0 else 1.0)                       # (the penalised logits)
        if t > 0:
            want = torch.isfinite(JambaForCausalLM._warp(x, True, t, k, p, mp or None))[0]
            assert torch.equal(kept[r], want), r
        else:
            assert greedy[r] == x.argmax() and kept[r].sum() == 1
    sizes = [int(kept[r].sum()) for r in range(len(SETTINGS))]
    assert sizes[1] == 5 and sizes[8] == 1 and sizes[6] == 513 and len(set(sizes)) >= 6


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("R,V", [(1, 1), (3, 7), (11, 1000), (4, 65536), (2, 70001)])
def test_sample_rows_matches_reference(device, dtype, R, V):
    logits, params, seen, counts = make(R, V, device, dtype, seed=R * V)
    for penalties in (True, False):
        s, c = (seen, counts) if penalties else (None, None)
        tokens, tau = ops.sample_rows(logits, params, s, c, seed=5, offset=R)
        assert tokens.dtype == torch.int64 and tau.dtype == torch.float32 and tokens.shape == (R,)
        assert ((tokens >= 0) & (tokens < V)).all()
        check_against_reference(logits, params, s, c, tokens, tau)


def test_sample_rows_row_stride_and_empty(device):
    logits, params, seen, counts = make(5, 300, device, torch.bfloat16, seed=9)
    wide = torch.zeros(5, 320, device=device, dtype=torch.bfloat16)
    wide[:, :300] = logits
    a = ops.sample_rows(wide[:, :300], params, seen, counts, seed=1, offset=2)
    b = ops.sample_rows(logits, params, seen, counts, seed=1, offset=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    t, tau = ops.sample_rows(logits[:0], params[:0], seed=1)
    assert t.shape == (0,) and tau.shape == (0,)


def test_bad_settings_named_on_cpu():
    """On the CPU, a setting row_sampling.check would refuse is a ValueError naming its row and field (the kernel read
    a NaN or negative temperature, or top_p <= 0, as greedy, and divided by a repetition penalty of 0); a negative
    rng key too. Good settings still pick."""
    logits = torch.randn(3, 50)
    good = torch.tensor([[0.7, 5, 0.9, 0.05, 1.2, 0.5, 0.1]] * 3)
    for j, v, what in ((0, float("nan"), "temperature"), (0, -1.0, "temperature"), (1, 2.5, "top_k"),
                       (2, 0.0, "top_p"), (3, float("nan"), "min_p"), (4, 0.0, "repetition_penalty"),
                       (5, float("inf"), "presence_penalty"), (6, float("nan"), "frequency_penalty")):
        bad = good.clone()
        bad[2, j] = v
        with pytest.raises(ValueError, match=rf"params\[2, {j}\] \({what}\): expected"):
            ops.sample_rows(logits, bad)
    with pytest.raises(ValueError, match="rng: each row's key and counter must be >= 0"):
        ops.sample_rows(logits, good, rng=torch.tensor([[1, 0], [-5, 0], [2, 0]]))
    tokens, _ = ops.sample_rows(logits, good, rng=torch.tensor([[1, 0], [5, 0], [2, 0]]))
    assert tokens.shape == (3,)


def test_draws_follow_the_kept_softmax(device):
    """6000 rows of one set of 6 logits with temperature 0.7, top_k 5 and top_p 0.9: the columns the reference drops
    are never drawn, and each kept column's count is within 5 sigma of its renormalised probability."""
    x = torch.tensor([2.0, 1.5, 0.3, -0.2, 1.9, -3.0], dtype=torch.float64)
    n = 6000
    logits = x.expand(n, 6).contiguous().to(device, torch.float32)
    params = torch.tensor([[0.7, 5, 0.9, 0.0, 1.0, 0.0, 0.0]] * n, device=device)
    tokens, _ = ops.sample_rows(logits, params, seed=11, offset=0)
    _, scores, kept = reference.sample_rows_kept(logits[:1].cpu(), params[:1].cpu())
    p = torch.where(kept[0], torch.softmax(torch.where(kept[0], scores[0], float("-inf")), -1), 0.0)
    count = torch.bincount(tokens.cpu(), minlength=6).double()
    assert (count[~kept[0]] == 0).all() and kept[0].sum() == 3
    sigma = (p * (1 - p) * n).sqrt()
    assert ((count - p * n).abs() <= 5 * sigma + 1e-9).all(), (count, p * n)


def test_exact_boundaries(device):
    """top_p at an exact boundary (probabilities 0.5, 0.25, 0.25: the two 0.25s sum to 1 - top_p = 0.5 exactly, and
    transformers drops a tail whose mass is <= 1 - top_p, so only the 0.5 stays; a hair above 0.5 keeps all three);
    greedy rows take the first of tied maxima, as torch.argmax."""
    x = torch.tensor(-0.693147182, dtype=torch.float32)          # expf(x) == 0.5 exactly (libm; checked below)
    if torch.exp(x.to(device)) != 0.5:
        pytest.skip(f"expf(-ln 2) is not exactly 0.5 on {device}")
    logits = torch.tensor([[0.0, float(x), float(x)]] * 200, device=device)
    for top_p, want in ((0.5, {0}), (0.50000006, {0, 1, 2})):
        params = torch.tensor([[1.0, 0, top_p, 0.0, 1.0, 0.0, 0.0]] * 200, device=device)
        tokens, tau = ops.sample_rows(logits, params, seed=1, offset=0)
        assert set(tokens.tolist()) == want and tau[0] == (0.0 if want == {0} else x), (top_p, tokens.tolist())
    tied = torch.zeros(3, 12, device=device)
    tied[:, [3, 7]] = 2.0
    params = torch.tensor([[0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0]] * 3, device=device)
    assert ops.sample_rows(tied, params)[0].tolist() == [3, 3, 3]


# greedy (with penalties), temperature only, top_k 1 / 3, top_p, min_p, a mix
NAN_SETTINGS = [(0.0, 0, 1.0, 0.0, 1.3, 0.5, 0.2), (1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0), (0.8, 1, 1.0, 0.0, 1.0, 0.0, 0.0),
                (0.7, 3, 1.0, 0.0, 1.0, 0.0, 0.0), (1.0, 0, 0.8, 0.0, 1.0, 0.0, 0.0), (1.0, 0, 1.0, 0.2, 1.0, 0.0, 0.0),
                (0.9, 5, 0.9, 0.05, 1.2, 0.3, 0.1)]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("V", [300, 5000])
def test_nan_logits_never_picked(device, dtype, V, monkeypatch):
    """The rule (ops.sample_rows' docstring): a NaN logit counts as -inf, in greedy and sampled rows alike, wherever
    it stands -- it was the argmax at column 0 (no comparison with it holds) and the largest key elsewhere (top_k 1
    kept it alone). A row of NaN / -inf logits only gives token 0 and tau -inf, as a row of -inf did. Every setting on
    rows with NaN at column 0, NaN at the three largest columns, NaN everywhere but one column, all NaN, all -inf,
    NaN and -inf mixed; against the reference (which reads NaN as -inf), and on CUDA from both kernels (one block,
    and clusters of 8 CTAs a row on sm_90: JAMBA_EXT_SAMPLE_ROWS_CLUSTER 0 / 1), the same bits from both."""
    nan, ninf = float("nan"), float("-inf")
    g = torch.Generator().manual_seed(V)
    kinds = 6
    R = kinds * len(NAN_SETTINGS)
    x = torch.randn(R, V, generator=g, dtype=torch.float64) * 2
    for r in range(R):
        kind = r % kinds
        if kind == 0:
            x[r, 0] = nan
        elif kind == 1:
            x[r, x[r].topk(3).indices] = nan
        elif kind == 2:
            one = int(torch.randint(1, V, (1,), generator=g))
            x[r, :one], x[r, one + 1:] = nan, nan
        elif kind == 3:
            x[r] = nan
        elif kind == 4:
            x[r] = ninf
        else:
            x[r] = torch.where(torch.rand(V, generator=g) < 0.5, nan, ninf)
    params = torch.tensor([NAN_SETTINGS[r // kinds] for r in range(R)], dtype=torch.float32)
    seen = torch.rand(R, V, generator=g) < 0.2
    counts = torch.randint(0, 3, (R, V), generator=g, dtype=torch.int32)
    logits = x.to(dtype)
    empty = torch.tensor([r % kinds >= 3 for r in range(R)])
    envs = ["0", "1"] if device.type == "cuda" else [None]
    for pen in (False, True):
        s, c = (seen, counts) if pen else (None, None)
        got = []
        for env in envs:
            if env is not None:
                monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", env)
            args = [None if t is None else t.to(device) for t in (logits, params, s, c)]
            tokens, tau = (t.cpu() for t in ops.sample_rows(*args, seed=3, offset=V))
            picked = logits[torch.arange(R), tokens]
            assert not torch.isnan(picked[~empty]).any(), (env, pen, torch.isnan(picked).nonzero().flatten())
            assert torch.isfinite(picked[~empty]).all()
            assert (tokens[empty] == 0).all() and (tau[empty] == ninf).all(), (env, pen, tokens[empty], tau[empty])
            check_against_reference(logits, params, s, c, tokens, tau)
            got.append((tokens, tau.view(torch.int32)))
        assert all(torch.equal(a, b) for a, b in zip(got[0], got[-1]))


def test_deterministic_for_seed_and_offset(device):
    logits, params, seen, counts = make(64, 2000, device, torch.float32, seed=2)
    params[:, 0] = 1.0                                                   # (every row samples)
    a = ops.sample_rows(logits, params, seen, counts, seed=7, offset=3)[0]
    assert torch.equal(a, ops.sample_rows(logits, params, seen, counts, seed=7, offset=3)[0])
    assert (a != ops.sample_rows(logits, params, seen, counts, seed=7, offset=4)[0]).sum() > 32
    assert (a != ops.sample_rows(logits, params, seen, counts, seed=8, offset=3)[0]).sum() > 32


def test_rng_rows_draw_on_their_own(device):
    """rng (R, 2): row r draws as row 0 of a one-row call with seed rng[r, 0] and offset rng[r, 1] (tokens and tau
    to the bit), whatever its place in the batch; permuting the rows permutes the tokens; seed and offset are
    unused; without rng, rows with the same logits draw different tokens (the row index is in the counter)."""
    R, V = 24, 3000
    logits, params, seen, counts = make(R, V, device, torch.float32, seed=9)
    params[:, 0] = 1.0                                                   # (every row samples)
    g = torch.Generator().manual_seed(4)
    rng = torch.stack([torch.randint(0, 2 ** 62, (R,), generator=g), torch.randint(0, 2 ** 40, (R,), generator=g)],
                      1).to(device)
    rng[3] = torch.tensor([2 ** 63 - 1, 2 ** 63 - 1])                   # (the largest key and counter)
    tok, tau = ops.sample_rows(logits, params, seen, counts, seed=5, offset=6, rng=rng)
    for r in range(R):
        t1, u1 = ops.sample_rows(logits[r:r + 1], params[r:r + 1], seen[r:r + 1], counts[r:r + 1],
                                 seed=int(rng[r, 0]), offset=int(rng[r, 1]))
        assert int(t1) == int(tok[r]) and torch.equal(u1.view(torch.int32), tau[r:r + 1].view(torch.int32)), r
    assert torch.equal(tok, ops.sample_rows(logits, params, seen, counts, seed=1, offset=2, rng=rng)[0])
    perm = torch.randperm(R, generator=g).to(device)
    assert torch.equal(ops.sample_rows(logits[perm], params[perm], seen[perm], counts[perm], rng=rng[perm])[0],
                       tok[perm])
    same = logits[:1].expand(R, V).contiguous()
    p1 = params[:1].expand(R, 7).contiguous()
    p1[:, 1:4] = torch.tensor([0.0, 1.0, 0.0])                           # (every column kept)
    one_key = torch.tensor([[7, 3]] * R, device=device)
    assert len(set(ops.sample_rows(same, p1, rng=one_key)[0].tolist())) == 1
    assert len(set(ops.sample_rows(same, p1, seed=7, offset=3)[0].tolist())) > 1


def test_uniform_below_one(device):
    """Philox words whose top 24 bits are all ones: ((2^24 - 1) + 0.5) / 2^24 rounds to 1.0 in f32, and u = 1 made a
    Gumbel noise of +inf (the column won whatever its logit). The keys below (found by a search over keys and
    columns, counter 0) give such a word at the column named; rows whose column 0 leads every other by 100 (a noise
    can only bridge that with u = 1) draw column 0."""
    V = 65536
    hits = [(247, 31399), (404, 28925), (554, 19468)]
    x = torch.zeros(len(hits), V, device=device)
    x[:, 0] = 100.0
    P = torch.tensor([[1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0]] * len(hits), device=device)
    rng = torch.tensor([[key, 0] for key, _ in hits], device=device)
    assert ops.sample_rows(x, P, rng=rng)[0].tolist() == [0] * len(hits)
    # the premise: with equal logits each named column draws the row's largest noise (16.64; the others' <= 15.95)
    assert ops.sample_rows(torch.zeros_like(x), P, rng=rng)[0].tolist() == [col for _, col in hits]


def test_sample_rows_bad_inputs(device):
    logits, params, seen, counts = make(4, 10, device, torch.float32)
    with pytest.raises(ValueError, match="params"):
        ops.sample_rows(logits, params[:, :6].contiguous())
    with pytest.raises(ValueError, match="params"):
        ops.sample_rows(logits, params.double())
    with pytest.raises(ValueError, match="seen must be a bool"):
        ops.sample_rows(logits, params, seen.int())
    with pytest.raises(ValueError, match="counts"):
        ops.sample_rows(logits, params, seen, counts.long())
    with pytest.raises(ValueError, match="counts"):
        ops.sample_rows(logits, params, seen, counts[:3])
    with pytest.raises(ValueError, match="logits"):
        ops.sample_rows(logits[:, :0], params)                           # V = 0
    with pytest.raises(ValueError, match="logits"):
        ops.sample_rows(logits.T, params[:1].expand(10, 7).contiguous())  # stride 4 along V
    with pytest.raises(ValueError, match="dtype"):
        ops.sample_rows(logits.double(), params)
    with pytest.raises(ValueError, match="seed"):
        ops.sample_rows(logits, params, seed=-1)
    with pytest.raises(ValueError, match="offset"):
        ops.sample_rows(logits, params, offset=2 ** 63)
    for bad in (torch.zeros(4, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 2).int(),
                torch.zeros(2, 4, dtype=torch.long).T):
        with pytest.raises(ValueError, match="rng"):
            ops.sample_rows(logits, params, rng=bad.to(device))
    if device.type == "cuda":
        with pytest.raises(ValueError, match="device"):
            ops.sample_rows(logits, params.cpu())


def test_sample_rows_opcheck(device):
    logits, params, seen, counts = make(5, 50, device, torch.bfloat16)
    torch.library.opcheck(torch.ops.jamba.sample_rows.default, (logits, params, seen, counts, 3, 1))
    torch.library.opcheck(torch.ops.jamba.sample_rows.default, (logits.float(), params, None, None, 0, 0))
    rng = torch.tensor([[1, 2], [3, 4], [5, 6], [2 ** 62, 0], [9, 9]], device=device)
    torch.library.opcheck(torch.ops.jamba.sample_rows.default, (logits, params, seen, counts, 0, 0, rng))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", dtype_params())
def test_sample_rows_cuda_matches_cpu(dtype):
    """Jamba's vocabulary, 64 rows: the same greedy tokens, the same kept columns (tau within 2 ulps) and, with the
    same Philox uniforms, the same draws but where expf / logf ulps turn a near tie (at most 1 row in 64)."""
    logits, params, seen, counts = make(64, 65536, "cuda", dtype, seed=77)
    t, tau = ops.sample_rows(logits, params, seen, counts, seed=9, offset=5)
    tc, tauc = ops.sample_rows(logits.cpu(), params.cpu(), seen.cpu(), counts.cpu(), seed=9, offset=5)
    greedy = params[:, 0].cpu() <= 0
    assert torch.equal(t.cpu()[greedy], tc[greedy])
    assert torch.allclose(tau.cpu(), tauc, rtol=2.5e-7, atol=0)
    assert (t.cpu() != tc).sum() <= 1
    check_against_reference(logits, params, seen, counts, t, tau)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", dtype_params())
def test_sample_rows_cuda_draw_bound_matches_cpu(monkeypatch, dtype):
    """The CUDA draw folds a column whose score lies too far below the argmax column's draw value to reach it as -inf,
    without its Philox (sr_draw_floor: the noise is below 16.64). Rows of one top column and 65535 lying 10-20 below
    it (scores, at four temperatures; some rows with top_p or min_p as well): the bulk wins 34 of the 128 draws, 6 of
    them by a column more than 12 below the top, so a bound that cut into the reachable columns (12 instead of 16.64)
    would change several winners. The same tokens as the CPU's full draw (at most 2 of 128 where expf / logf ulps turn
    a near tie) and the same tau, from both CUDA kernels, with per-row keys."""
    R, V = 128, 65536
    g = torch.Generator().manual_seed(53)
    temp = torch.tensor([0.5, 1.0, 1.7, 3.0]).repeat(R // 4)
    gap = 10.0 + 10.0 * torch.rand(R, V, generator=g, dtype=torch.float64)
    top = torch.randint(0, V, (R,), generator=g)
    gap[torch.arange(R), top] = 0.0
    logits = ((5.0 - gap) * temp[:, None].double()).to(dtype)            # scores s = x / temperature = 5 - gap
    params = torch.zeros(R, 7)
    params[:, 0], params[:, 2], params[:, 4] = temp, 1.0, 1.0
    params[1::4, 2] = 0.999                                                # top_p: the draw over a filtered set
    params[2::4, 3] = 1e-8                                                 # min_p: e >= 1e-8, gaps up to ~18.4
    rng = torch.randint(0, 2 ** 62, (R, 2), generator=g)
    tc, tauc = ops.sample_rows(logits, params, rng=rng)
    assert (tc != top).sum() >= R // 8                                     # (the bulk wins: the bound matters)
    for size in ("0", None):
        if size is None:
            monkeypatch.delenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", raising=False)
        else:
            monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", size)
        t, tau = ops.sample_rows(logits.cuda(), params.cuda(), rng=rng.cuda())
        assert (t.cpu() != tc).sum() <= 2, (size, (t.cpu() != tc).nonzero()[:8].tolist())
        assert torch.allclose(tau.cpu(), tauc, rtol=2.5e-7, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_sample_rows_cuda_graph():
    """Captured in a CUDA graph (no host synchronisation), replayed on new logits and settings: each replay equals the
    eager op on those inputs."""
    def fn(x, p, s, c):
        return ops.sample_rows(x, p, s, c, seed=3, offset=9)

    news = [make(16, 4096, "cuda", torch.bfloat16, seed=i) for i in range(2)]
    runs = graph_replays(fn, make(16, 4096, "cuda", torch.bfloat16, seed=5), news)
    for args, got in zip(news, runs):
        for a, b in zip(got, fn(*args)):
            assert torch.equal(a, b)


# ---- the cluster kernels (sm_90+) against the one-block kernel: the same tokens and tau, to the bit ----------------
# JAMBA_EXT_SAMPLE_ROWS_CLUSTER (read at each call): "0" the one-block kernel, "1" the cluster kernel of 8 CTAs a row
# and "2" / "4" / "8" that many CTAs a row, at every V; unset: the default, from V = 4096 on sm_90+ the largest of
# 8, 4, 2 at which all the rows run at once, else the one-block kernel. Below sm_90 every value falls back to the
# one-block kernel: nothing to compare.
needs_cluster = pytest.mark.skipif(not HAS_GPU or torch.cuda.get_device_capability()[0] < 9,
                                   reason="the cluster kernel needs a CUDA GPU of compute capability 9+")

# every setting the kernels branch on: greedy (with penalties), temperature only, top_k 1 / 50 / >= V, top_p 0.5 /
# 0.95, min_p, and mixes (the 50 of top_k is >= V at V = 37)
CLUSTER_SETTINGS = [(0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0), (0.0, 0, 1.0, 0.0, 1.3, 0.4, 0.2),
                    (0.8, 0, 1.0, 0.0, 1.0, 0.0, 0.0), (1.0, 1, 1.0, 0.0, 1.0, 0.0, 0.0),
                    (0.7, 50, 1.0, 0.0, 1.0, 0.0, 0.0), (0.9, 1e6, 1.0, 0.0, 1.0, 0.0, 0.0),
                    (1.0, 0, 0.5, 0.0, 1.0, 0.0, 0.0), (0.8, 0, 0.95, 0.0, 1.0, 0.0, 0.0),
                    (1.0, 0, 1.0, 0.05, 1.0, 0.0, 0.0), (0.6, 50, 0.95, 0.05, 1.2, 0.5, 0.3),
                    (1.2, 0, 0.9, 0.0, 1.5, -0.5, 0.1), (0.5, 7, 0.8, 0.1, 1.0, 0.0, 0.0)]


def cluster_params(R, shift):
    return torch.tensor([CLUSTER_SETTINGS[(r + shift) % len(CLUSTER_SETTINGS)] for r in range(R)],
                        dtype=torch.float32, device="cuda")


def both_kernels(monkeypatch, *args, sizes=("1",), **kwargs):
    """ops.sample_rows(*args, **kwargs) on the one-block kernel, then with JAMBA_EXT_SAMPLE_ROWS_CLUSTER at each value
    of sizes (None: unset, the default choice); asserts the same bits each time"""
    monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", "0")
    t0, tau0 = ops.sample_rows(*args, **kwargs)
    for size in sizes:
        if size is None:
            monkeypatch.delenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER")
        else:
            monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", size)
        t1, tau1 = ops.sample_rows(*args, **kwargs)
        assert torch.equal(t0, t1), (size, (t0 != t1).nonzero()[:8].tolist())
        assert torch.equal(tau0.view(torch.int32), tau1.view(torch.int32)), (size, tau0, tau1)   # (bits: -0 / NaN)
    return t0, tau0


@pytest.mark.cuda
@needs_cluster
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("V", [37, 4099, 32001, 65536])
@pytest.mark.parametrize("R", [1, 3, 16, 70, 131])
def test_sample_rows_cluster_equals_one_block(monkeypatch, dtype, V, R):
    """Random logits, every setting of CLUSTER_SETTINGS on every row position (shifted per call), with and without
    seen / counts. V = 37 / 4099: the cluster's last CTAs own no column (4099: the fifth owns 3); R = 131: more rows
    than the cluster kernel's grid has clusters (128), so some clusters take two rows."""
    logits, _, seen, counts = make(R, V, "cuda", dtype, seed=R + V)
    shifts = range(len(CLUSTER_SETTINGS)) if R < len(CLUSTER_SETTINGS) else range(2)
    for shift in shifts:
        P = cluster_params(R, shift)
        pen = shift % 2 == 0
        tokens, _ = both_kernels(monkeypatch, logits, P, seen if pen else None, counts if pen else None,
                                 seed=11, offset=shift)
        assert ((tokens >= 0) & (tokens < V)).all()


@pytest.mark.cuda
@needs_cluster
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("size", ["2", "4", "8"])
@pytest.mark.parametrize("R,V", [(3, 37), (16, 4099), (1, 65536), (131, 32001)])
def test_sample_rows_cluster_size_equals_one_block(monkeypatch, dtype, size, R, V):
    """Each cluster size forced (JAMBA_EXT_SAMPLE_ROWS_CLUSTER=2 / 4 / 8: a slice of ceil(V / C) columns rounded up
    to a multiple of 1024 a CTA) against the one-block kernel, as test_sample_rows_cluster_equals_one_block on a
    subset of its cases: V = 37, only rank 0 owns columns; V = 4099, at 4 CTAs the third owns 3 and the fourth none,
    at 2 CTAs the second owns 1027; R = 131 > 128, the grid's clusters, at every size: the stride loop."""
    logits, _, seen, counts = make(R, V, "cuda", dtype, seed=R + V + 1)
    shifts = range(len(CLUSTER_SETTINGS)) if R < len(CLUSTER_SETTINGS) else range(2)
    for shift in shifts:
        P = cluster_params(R, shift)
        pen = shift % 2 == 1
        tokens, _ = both_kernels(monkeypatch, logits, P, seen if pen else None, counts if pen else None,
                                 seed=12, offset=shift, sizes=(size,))
        assert ((tokens >= 0) & (tokens < V)).all()


@pytest.mark.cuda
@needs_cluster
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("R", [1, 16, 64, 200])
def test_sample_rows_cluster_default_choice(monkeypatch, dtype, R):
    """The default (JAMBA_EXT_SAMPLE_ROWS_CLUSTER unset) at V = 65536 picks the kernel per call by R: clusters of 8,
    4 or 2 CTAs, the largest at which all R rows run at once, else the one-block kernel (on an H200: 8 at R = 1, the
    one-block kernel at R = 200). Whichever it takes: the same bits as the one-block kernel."""
    logits, _, seen, counts = make(R, 65536, "cuda", dtype, seed=R + 5)
    for shift in range(2):
        P = cluster_params(R, shift)
        pen = shift == 0
        tokens, _ = both_kernels(monkeypatch, logits, P, seen if pen else None, counts if pen else None,
                                 seed=13, offset=shift, sizes=(None,))
        assert ((tokens >= 0) & (tokens < 65536)).all()
    rng = torch.stack([torch.arange(R) * 1000003 + 17, torch.arange(R) % 5], 1).to("cuda")
    both_kernels(monkeypatch, logits, cluster_params(R, 1), seen, counts, rng=rng, sizes=(None, "8", "4", "2"))


@pytest.mark.cuda
@needs_cluster
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("V", [37, 4099, 65536])
def test_sample_rows_cluster_ties_nan_inf(monkeypatch, dtype, V):
    """Logits rounded to a few values (ties everywhere: the first column wins the max, -0 beside +0), rows with NaNs
    (pass 1 folds them as -inf), +inf and -inf: the same bits from the one-block kernel and from the cluster kernel at
    each size (8, 4, 2 CTAs a row). Last, NaN scores that reach the folds: an infinite temperature (unchecked on a
    GPU) over +inf logits (inf / inf), so that a NaN first in some thread's columns sticks in sr_better's fold of the
    draw: the cluster kernel's exact path, which composes a thread's fold from 8, 4 or 2 slices."""
    sizes = ("1", "4", "2")
    R = 2 * len(CLUSTER_SETTINGS)
    g = torch.Generator().manual_seed(V)
    x = (torch.randn(R, V, generator=g, dtype=torch.float64) * 1.5).round()       # (about 9 values, -0 among them)
    rows = torch.arange(R)
    x[rows % 4 == 1, 0] = float("nan")                                            # column 0: thread 0's first
    for r in range(2, R, 4):                                                      # NaNs in random places
        x[r, torch.randint(0, V, (max(1, V // 50),), generator=g)] = float("nan")
    x[3, min(V - 1, 1025)] = float("nan")                                         # thread 1's second column
    x[5, torch.randint(0, V, (3,), generator=g)] = float("inf")
    x[7, torch.randint(0, V, (V // 2,), generator=g)] = float("-inf")
    x[9] = float("nan")                                                           # a row of NaNs only
    logits = x.to("cuda", dtype)
    seen = torch.rand(R, V, generator=g).lt(0.1).cuda()
    counts = torch.randint(0, 3, (R, V), generator=g, dtype=torch.int32).cuda()
    for shift in range(3):
        P = cluster_params(R, shift)
        both_kernels(monkeypatch, logits, P, seed=3, offset=shift, sizes=sizes)
        both_kernels(monkeypatch, logits, P, seen, counts, seed=4, offset=shift, sizes=sizes)
    # a NaN at column 0 of every row, and columns in every thread of the first CTA (folded as -inf)
    nanfirst = logits.clone()
    nanfirst[:, : min(V, 1024):7] = float("nan")
    both_kernels(monkeypatch, nanfirst, cluster_params(R, 0), seed=5, offset=0, sizes=sizes)
    # NaN scores: +inf logits there and an infinite temperature (inf / inf): every draw takes the exact path
    infs = logits.clone()
    infs[:, : min(V, 1024):7] = float("inf")
    hot = cluster_params(R, 0)
    hot[:, 0] = float("inf")
    both_kernels(monkeypatch, infs, hot, seed=5, offset=0, sizes=sizes)


@pytest.mark.cuda
@needs_cluster
def test_sample_rows_cluster_row_stride(monkeypatch):
    """logits a column slice of a wider tensor (row stride 65600, an offset of 24 columns): the same bits from both
    kernels, and as on a contiguous copy."""
    wide = (torch.randn(16, 65600, device="cuda") * 3).to(torch.bfloat16)
    logits = wide[:, 24:24 + 65536]
    _, _, seen, counts = make(16, 65536, "cuda", torch.bfloat16, seed=3)
    P = cluster_params(16, 1)
    a = both_kernels(monkeypatch, logits, P, seen, counts, seed=2, offset=7)
    b = both_kernels(monkeypatch, logits.contiguous(), P, seen, counts, seed=2, offset=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.cuda
@needs_cluster
def test_sample_rows_cluster_graph(monkeypatch):
    """The cluster kernel captured in a CUDA graph (the switch is read at capture), replayed on new logits, settings,
    seen and counts: each replay equals the one-block kernel run eagerly on those inputs."""
    def fn(x, p, s, c):
        return ops.sample_rows(x, p, s, c, seed=3, offset=9)

    def inputs(seed):
        logits, _, seen, counts = make(16, 32001, "cuda", torch.bfloat16, seed=seed)
        return logits, cluster_params(16, seed), seen, counts

    news = [inputs(i) for i in range(3)]
    monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", "1")
    runs = graph_replays(fn, inputs(7), news)
    monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", "0")
    for args, got in zip(news, runs):
        for a, b in zip(got, fn(*args)):
            assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_sample_rows_on_second_gpu(monkeypatch):
    """Tensors on cuda:1 while cuda:0 is current, on a side stream of cuda:1 (the cluster kernel's per-device choice
    and launch): the same bits as on cuda:0, as the one-block kernel on cuda:1, with and without rng; the current
    device unchanged."""
    torch.cuda.set_device(0)
    d0, d1 = torch.device("cuda:0"), torch.device("cuda:1")
    logits, params, seen, counts = make(20, 65536, "cpu", torch.bfloat16, seed=31)
    params[:, 0] = torch.where(params[:, 0] > 0, params[:, 0], torch.ones_like(params[:, 0]))   # (rows sample)
    rng = torch.stack([torch.arange(20) * 7919 + 3, torch.arange(20)], 1)
    want = [ops.sample_rows(*(t.to(d0) for t in (logits, params, seen, counts)), seed=9, offset=2),
            ops.sample_rows(logits.to(d0), params.to(d0), rng=rng.to(d0))]
    side = torch.cuda.Stream(device=d1)
    for env in (None, "0"):
        if env is None:
            monkeypatch.delenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", raising=False)
        else:
            monkeypatch.setenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER", env)
        with torch.cuda.stream(side):
            got = [ops.sample_rows(*(t.to(d1) for t in (logits, params, seen, counts)), seed=9, offset=2),
                   ops.sample_rows(logits.to(d1), params.to(d1), rng=rng.to(d1))]
        side.synchronize()
        assert torch.cuda.current_device() == 0
        for (t1, u1), (t0, u0) in zip(got, want):
            assert t1.device == d1 and torch.equal(t1.cpu(), t0.cpu()), env
            assert torch.equal(u1.cpu().view(torch.int32), u0.cpu().view(torch.int32)), env
