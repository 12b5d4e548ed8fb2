"""Static decode mode (JambaHybridCache(static=True)) and generate(cuda_graph=True).

The static cache holds the KV buffers at a fixed capacity and decodes with fixed shapes: attention over the
whole buffer under a device-side length mask, K/V written with index_copy_ at a device-side position. On CPU
(fp32) its decode steps must give the dynamic cache's logits (<= 1e-5 relative) and the same greedy and
sampled tokens, left padding included. A CPU proxy for "capturable": the aten ops of a static decode step,
with their shapes and non-tensor arguments, are identical from one step to the next and read no value back
to the host (a CUDA graph captured at one step then replays every later step). The CUDA tests (marked
cuda) capture the step for real: generate(cuda_graph=True) against generate(), fp32 and bf16.
"""
import contextlib
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jamba_ext
from jamba_ext.modeling_jamba import JambaForCausalLM, JambaHybridCache, _DecodeGraph

from test_model import CONFIGS, make_pair, prompt_ids, rel_err

STATIC_REL = 1e-5
N_STEPS = 8
NAMES = ["attn1_moe_top2", "attn0_top1_tied", "all_moe_bias", "mamba_dense"]


def _ours(name, dtype=torch.float32, device="cpu"):
    return make_pair(CONFIGS[name], dtype=dtype, device=device)[1]


def _prompts(batch):
    if batch == 1:
        return [prompt_ids(1, 7, 101, seed=3)[0].tolist()]
    return [prompt_ids(1, n, 101, seed=n)[0].tolist() for n in (9, 4)]      # left-padded batch of 2


@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2_padded"])
@pytest.mark.parametrize("name", NAMES)
def test_static_decode_matches_dynamic(name, batch):
    ours = _ours(name)
    ids, mask = JambaForCausalLM._left_pad(_prompts(batch), 0, "cpu")
    B, T = ids.shape
    with torch.no_grad():
        dyn = JambaHybridCache(ours.config, B)
        sta = JambaHybridCache(ours.config, B, max_length=T + N_STEPS, static=True)
        a = ours(ids, mask, cache=dyn).logits
        b = ours(ids, mask, cache=sta).logits
        assert rel_err(b, a) <= STATIC_REL
        tok = a[:, -1].argmax(-1)
        for s in range(N_STEPS):
            la = ours(tok[:, None], cache=dyn).logits[:, -1]
            lb = ours(tok[:, None], cache=sta).logits[:, -1]
            assert rel_err(lb, la) <= STATIC_REL, f"decode step {s}"
            tok = la.argmax(-1)
        assert sta.seq_len == dyn.seq_len == T + N_STEPS and int(sta.cache_position) == T + N_STEPS
        if "attention" in ours.config.layers_block_type:
            i = ours.config.layers_block_type.index("attention")
            assert sta._keys[i].shape[2] == sta.capacity == 16 * -(-(T + N_STEPS) // 16)
            assert torch.equal(sta.keys(i), dyn.keys(i)) and torch.equal(sta.values(i), dyn.values(i))
        if batch == 2:
            assert torch.equal(sta.key_mask, dyn.key_mask)
        else:
            assert sta.key_mask is None and dyn.key_mask is None
        g_dyn = ours.generate(_prompts(batch), max_new_tokens=N_STEPS, eos_token_id=None)
        g_sta = ours.generate(_prompts(batch), max_new_tokens=N_STEPS, eos_token_id=None, static_cache=True)
    assert g_sta.tolist() == g_dyn.tolist()


def test_static_generate_sampling_eos_streamer_and_cpu_graph_fallback():
    ours = _ours("attn1_moe_top2")
    ids = prompt_ids(2, 5, 101)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, seed=123, eos_token_id=None)
    seen = []
    with torch.no_grad():
        s_dyn = ours.generate(ids, **kw)
        s_sta = ours.generate(ids, static_cache=True, streamer=lambda t: seen.append(t.clone()), **kw)
        assert torch.equal(s_sta, s_dyn)
        assert len(seen) == 8 and torch.equal(torch.stack(seen, 1), s_sta[:, 5:])
        free = ours.generate(ids[:1], max_new_tokens=6, eos_token_id=None)
        stop = ours.generate(ids[:1], max_new_tokens=6, eos_token_id=int(free[0, 7]), static_cache=True)
        assert stop.shape[1] == 8 and stop[0].tolist() == free[0, :8].tolist()
        # a CPU model: cuda_graph=True warns and decodes eagerly with the static cache
        with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device"):
            g = ours.generate(ids, max_new_tokens=6, eos_token_id=None, cuda_graph=True)
        assert torch.equal(g, ours.generate(ids, max_new_tokens=6, eos_token_id=None))
        with pytest.raises(ValueError, match="static"):
            ours.generate(ids, max_new_tokens=2, cuda_graph=True, static_cache=False)


def test_static_cache_host_path_after_static_steps():
    """Chunked prefill / an explicit attention_mask after static decode steps take the host path over the
    same buffers and see the mask the static steps wrote; decoding continues statically afterwards."""
    ours = _ours("attn1_moe_top2")
    prompts = _prompts(2)
    ids, mask = JambaForCausalLM._left_pad(prompts, 0, "cpu")
    B, T = ids.shape
    chunk = prompt_ids(B, 3, 101, seed=9)
    with torch.no_grad():
        dyn = JambaHybridCache(ours.config, B)
        sta = JambaHybridCache(ours.config, B, max_length=T + 12, static=True)
        for c in (dyn, sta):
            ours(ids, mask, cache=c)
        outs = {}
        for key, c in (("dyn", dyn), ("sta", sta)):
            got = [ours(torch.full((B, 1), 7 + s), cache=c).logits[:, -1] for s in range(3)]
            got.append(ours(chunk, cache=c).logits)                                      # chunk of 3 (host path)
            am = torch.ones(B, c.seq_len + 1, dtype=torch.long)
            am[:, :T] = mask
            got.append(ours(torch.full((B, 1), 11), attention_mask=am, cache=c).logits)   # mask over past + new
            got += [ours(torch.full((B, 1), 20 + s), cache=c).logits[:, -1] for s in range(2)]
            outs[key] = got
        for i, (a, b) in enumerate(zip(outs["dyn"], outs["sta"])):
            assert rel_err(b, a) <= STATIC_REL, f"forward {i}"
        assert int(sta.cache_position) == sta.seq_len == T + 9
        assert torch.equal(sta.key_mask, dyn.key_mask)
        # full: a static cache refuses more tokens than its capacity
        while sta.seq_len < sta.capacity:
            ours(torch.full((B, 1), 5), cache=sta)
        with pytest.raises(ValueError, match="full"):
            ours(torch.full((B, 1), 5), cache=sta)
        with pytest.raises(ValueError, match="max_length"):
            JambaHybridCache(ours.config, 1, static=True)


class _Trace(TorchDispatchMode):
    """Records every top-level op with the shapes, dtypes and non-tensor arguments it got."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}

        def desc(a):
            if isinstance(a, torch.Tensor):
                return ("T", tuple(a.shape), a.dtype, a.stride())
            if isinstance(a, (list, tuple)):
                return type(a)(desc(x) for x in a)
            return repr(a)
        self.ops.append((str(func), desc(args), desc(tuple(sorted(kwargs.items())))))
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", ["attn1_moe_top2", "attn0_top1_tied"])
def test_static_step_is_the_same_ops_every_step(name):
    """What CUDA-graph replay needs, checked on CPU: a static decode step runs the same ops with the same
    shapes and Python arguments at every position, and reads nothing back to the host (no .item()). The
    dynamic cache does not (its attention grows by one key per step)."""
    ours = _ours(name)
    ids, mask = JambaForCausalLM._left_pad(_prompts(2), 0, "cpu")
    B, T = ids.shape

    def traces(cache):
        out = []
        with torch.no_grad():
            ours(ids, mask, cache=cache)
            for s in range(3):
                tok = torch.full((B, 1), 5 + s)
                with _Trace() as tr:
                    ours(tok, cache=cache)
                out.append(tr.ops)
        return out

    sta = traces(JambaHybridCache(ours.config, B, max_length=T + 8, static=True))
    assert sta[0] == sta[1] == sta[2]
    names = [op[0] for op in sta[0]]
    assert not [n for n in names if "_local_scalar_dense" in n or "nonzero" in n], names
    assert "aten.index_copy_.default" in names and "aten.add_.Tensor" in names
    dyn = traces(JambaHybridCache(ours.config, B))
    assert dyn[0] != dyn[1]


def test_graph_capture_failure_falls_back_with_the_state_intact(monkeypatch):
    """The capture path up to the graph, on CPU: the warm-up steps run for real and are undone; a capture
    that fails warns, and decoding continues eagerly from exactly the state before."""
    ours = _ours("attn1_moe_top2")
    ids, mask = JambaForCausalLM._left_pad(_prompts(2), 0, "cpu")
    B, T = ids.shape

    class _Stream:
        def wait_stream(self, other):
            pass

    def refuse():
        raise RuntimeError("capture refused (test)")

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", refuse)
    calls = []
    hook = ours.model.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        dyn = JambaHybridCache(ours.config, B)
        sta = JambaHybridCache(ours.config, B, max_length=T + 6, static=True)
        ours(ids, mask, cache=dyn)
        logits = ours(ids, mask, cache=sta).logits[:, -1]
        before = sta._snapshot()
        calls.clear()
        with pytest.warns(UserWarning, match="capture of the decode step failed.*capture refused"):
            assert _DecodeGraph.capture(ours, sta, logits.argmax(-1)) is None
        assert len(calls) == _DecodeGraph.WARMUP
        assert ours._decode_graph_info["captured"] is False
        after = sta._snapshot()
        assert after[0] == before[0] == T
        for x, y in zip(before[1] + before[2], after[1] + after[2]):
            assert (x is None and y is None) or torch.equal(x, y)
        assert torch.equal(after[3], before[3]) and torch.equal(after[4], before[4])
        for s in range(5):
            tok = torch.full((B, 1), 9 + s)
            assert rel_err(ours(tok, cache=sta).logits, ours(tok, cache=dyn).logits) <= STATIC_REL, s
    hook.remove()


# ---- CUDA: the graph itself ---------------------------------------------------------------------------
def _near_tie(ours, seq, mask, T, j, rows):
    """Dynamic-path logits for new token j (after seq[:, :T + j]): the top-2 margin of the given rows,
    relative to max |logit|."""
    am = torch.ones(seq.shape[0], T + j, dtype=torch.long, device=seq.device)
    am[:, :T] = mask
    with torch.no_grad():
        lg = ours(seq[:, :T + j], attention_mask=am, logits_to_keep=1).logits[:, -1].float()
    top = lg.topk(2, dim=-1).values
    return ((top[:, 0] - top[:, 1]) / lg.abs().amax(dim=-1))[rows].max().item()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ["attn1_moe_top2", "all_moe_bias"])
def test_cuda_graph_generate_matches_eager(name, dtype):
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    ours = _ours(name, dtype=dtype, device="cuda")
    n = 12
    for batch in (1, 2):
        ids, mask = JambaForCausalLM._left_pad(_prompts(batch), 0, "cuda")
        T = ids.shape[1]
        with torch.no_grad():
            ref = ours.generate(ids, mask, max_new_tokens=n, eos_token_id=None)
            sta = ours.generate(ids, mask, max_new_tokens=n, eos_token_id=None, static_cache=True)
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                gr = ours.generate(ids, mask, max_new_tokens=n, eos_token_id=None, cuda_graph=True)
            info = ours._decode_graph_info
            assert info and info["captured"], (info, [str(x.message) for x in w])
            # the replayed graph runs the eager static step's kernels: the same tokens
            assert gr.tolist() == sta.tolist(), f"batch {batch}: graph vs eager static"
            if dtype == torch.float32 or gr.tolist() == ref.tolist():
                assert gr.tolist() == ref.tolist(), f"batch {batch}: graph vs dynamic"
            else:
                # bf16: static and dynamic attention may take different SDPA kernels (masked vs not), whose
                # roundings differ; the first differing token must then be a near tie of the dynamic logits
                diff = (gr != ref).any(dim=0).nonzero()[0].item()
                rows = (gr[:, diff] != ref[:, diff]).nonzero()[:, 0]
                margin = _near_tie(ours, ref, mask, T, diff - T, rows)
                assert margin <= 0.02, f"batch {batch}: tokens differ at {diff - T} with margin {margin:.3g}"
            # sampling happens outside the graph: same seed, same tokens as the eager static decode
            kw = dict(max_new_tokens=n, eos_token_id=None, do_sample=True, top_k=20, top_p=0.9, seed=7)
            s_gr = ours.generate(ids, mask, cuda_graph=True, **kw)
            s_sta = ours.generate(ids, mask, static_cache=True, **kw)
            assert s_gr.tolist() == s_sta.tolist(), f"batch {batch}: sampled"
            if dtype == torch.float32:
                assert s_gr.tolist() == ours.generate(ids, mask, **kw).tolist()
            # per-step logits and scores (return_dict_in_generate) copied out of the replayed graph's buffer: the
            # eager static decode's, step by step
            out_kw = dict(max_new_tokens=n, eos_token_id=None, return_dict_in_generate=True, output_scores=True,
                          output_logits=True, repetition_penalty=1.2)
            g = ours.generate(ids, mask, cuda_graph=True, **out_kw)
            e = ours.generate(ids, mask, static_cache=True, **out_kw)
            assert g.sequences.tolist() == e.sequences.tolist() and len(g.logits) == len(g.scores) == n
            for i in range(n):
                assert torch.allclose(g.logits[i], e.logits[i], rtol=1e-5, atol=1e-5), (batch, i)
                assert torch.allclose(g.scores[i], e.scores[i], rtol=1e-5, atol=1e-5), (batch, i)


@pytest.mark.parametrize("lq,lk,masked", [(1, 37, False), (1, 37, True), (16, 64, True), (17, 17, False),
                                          (40, 40, True)])
def test_sdpa_wrapper_equals_plain_sdpa(device, lq, lk, masked):
    """modeling_jamba._sdpa (decode-sized queries kept off the cuDNN backend on CUDA) gives what plain SDPA
    gives, with grouped KV heads and with a boolean mask."""
    import torch.nn.functional as F

    from jamba_ext import modeling_jamba as mj

    g = torch.Generator().manual_seed(lq * 100 + lk)
    dt = torch.float32 if device.type == "cpu" else torch.bfloat16
    q = torch.randn(2, 4, lq, 16, generator=g).to(device, dt)
    k = torch.randn(2, 2, lk, 16, generator=g).to(device, dt)
    v = torch.randn(2, 2, lk, 16, generator=g).to(device, dt)
    mask = (torch.rand(2, 1, lq, lk, generator=g) > 0.3).to(device) if masked else None
    if mask is not None:
        mask[..., 0] = True  # no fully masked row
    kr, vr = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    want = F.scaled_dot_product_attention(q.float(), kr.float(), vr.float(), attn_mask=mask,
                                          is_causal=not masked and lq == lk)
    if mj._SDPA_HAS_GQA:
        got = mj._sdpa(q, k, v, mask, not masked and lq == lk, True)
    else:
        got = mj._sdpa(q, kr, vr, mask, not masked and lq == lk, False)
    tol = 1e-5 if dt == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def test_sdpa_backends(monkeypatch):
    """modeling_jamba._sdpa_backends: decode-sized calls, and prefills up to _PREFILL_NO_CUDNN_MAX rows with or
    without a padding mask, keep SDPA off cuDNN (its per-shape plan); longer prefills, and masked ones under
    JAMBA_EXT_PREFILL_MASK_CUDNN=1, are left to SDPA's choice."""
    from jamba_ext import modeling_jamba as mj
    if mj._sdpa_kernel is None:
        pytest.skip("torch < 2.3: no sdpa_kernel")
    monkeypatch.setattr(mj, "_PREFILL_NO_CUDNN_MAX", 1000)
    monkeypatch.setattr(mj, "_PREFILL_MASK_CUDNN", False)
    for L, masked in ((1, False), (1, True), (16, True), (17, False), (17, True), (1000, True), (1000, False)):
        got = mj._sdpa_backends(L, masked)
        assert got == mj._DECODE_SDPA_BACKENDS and mj._SDPBackend.CUDNN_ATTENTION not in got, (L, masked)
    assert mj._sdpa_backends(1001, False) is None and mj._sdpa_backends(1001, True) is None
    monkeypatch.setattr(mj, "_PREFILL_MASK_CUDNN", True)
    assert mj._sdpa_backends(17, True) is None and mj._sdpa_backends(16, True) == mj._DECODE_SDPA_BACKENDS
    assert mj._sdpa_backends(17, False) == mj._DECODE_SDPA_BACKENDS


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_static_decode_step_projections_use_gemv(monkeypatch):
    """On CUDA the static decode step (the one a CUDA graph captures) runs its projections on jamba.gemv, every one
    with the batch's rows (1, and 2 up to GEMV_MAX_ROWS); the prefill, the dynamic-cache decode and a batch over
    GEMV_MAX_ROWS keep F.linear."""
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    from jamba_ext import ops
    from jamba_ext import modeling_jamba as mj
    monkeypatch.setattr(mj, "GEMV_MAX_ROWS", 8)     # the default (JAMBA_EXT_GEMV_ROWS may change it)
    ours = _ours("attn1_moe_top2", dtype=torch.bfloat16, device="cuda")
    rows, real = [], ops.gemv
    monkeypatch.setattr(ops, "gemv", lambda x, *a: rows.append(x.numel() // x.shape[-1]) or real(x, *a))
    ids1, _ = JambaForCausalLM._left_pad(_prompts(1), 0, "cuda")
    ids2, mask2 = JambaForCausalLM._left_pad(_prompts(2), 0, "cuda")
    with torch.no_grad():
        ours.generate(ids1, max_new_tokens=3, eos_token_id=None, static_cache=True)
        n_layers = len(ours.config.layers_block_type)
        # two decode steps (the first new token comes from the prefill), each >= 1 projection per layer + the LM head
        assert len(rows) >= 2 * (n_layers + 1) and set(rows) == {1}, rows
        n_static = len(rows)
        ours.generate(ids1, max_new_tokens=3, eos_token_id=None)
        assert len(rows) == n_static                  # dynamic cache: none
        ours.generate(ids2, mask2, max_new_tokens=3, eos_token_id=None, static_cache=True)
        n2 = len(rows)
        assert n2 - n_static >= 2 * (n_layers + 1) and set(rows[n_static:]) == {2}, rows[n_static:]
        monkeypatch.setattr(mj, "GEMV_MAX_ROWS", 1)
        ours.generate(ids2, mask2, max_new_tokens=3, eos_token_id=None, static_cache=True)
        assert len(rows) == n2                        # two rows over GEMV_MAX_ROWS: none


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_decode_steps_use_decode_attention(monkeypatch, static):
    """On CUDA every one-token step's attention runs jamba.decode_attention (static and dynamic caches, padded batch);
    the prefill keeps SDPA. fp32: the same tokens as with reference.py's attention in its place, and from the CUDA
    graph."""
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    from jamba_ext import ops, reference
    cfg = dict(CONFIGS["attn1_moe_top2"], hidden_size=256, num_attention_heads=4, num_key_value_heads=2)  # head_dim 64
    ours = make_pair(cfg, dtype=torch.float32, device="cuda")[1]
    calls, real = [], ops.decode_attention
    monkeypatch.setattr(ops, "decode_attention", lambda *a: calls.append(a[0].shape) or real(*a))
    ids, mask = JambaForCausalLM._left_pad(_prompts(2), 0, "cuda")
    n_attn = sum(t != "mamba" for t in ours.config.layers_block_type)
    with torch.no_grad():
        got = ours.generate(ids, mask, max_new_tokens=5, eos_token_id=None, static_cache=static)
        assert len(calls) == 4 * n_attn, calls               # 4 decode steps after the prefill's token
        if static:                                           # captured and replayed: the eager static step's kernels
            assert ours.generate(ids, mask, max_new_tokens=5, eos_token_id=None, cuda_graph=True).tolist() == \
                got.tolist(), ours._decode_graph_info
        monkeypatch.setattr(ops, "decode_attention", reference.decode_attention)
        want = ours.generate(ids, mask, max_new_tokens=5, eos_token_id=None, static_cache=static)
    assert got.tolist() == want.tolist()


def _run_ahead_case(ours, device, monkeypatch, **extra):
    """generate() with RUN_AHEAD forced on and off: the same tokens, the same streamer calls (CPU tensors, one per
    new token), the same stop at an EOS that ends the batch early."""
    from jamba_ext import modeling_jamba as mj
    ids, mask = JambaForCausalLM._left_pad(_prompts(2), 0, device)
    T = ids.shape[1]
    free = ours.generate(ids, mask, max_new_tokens=8, eos_token_id=None, **extra)
    eos = int(free[0, T + 2])                                     # sequence 0 stops at its third new token
    results = {}
    for ahead in (True, False):
        monkeypatch.setattr(mj, "RUN_AHEAD", ahead)
        for name, kw in {"greedy": dict(eos_token_id=None),
                         "eos": dict(eos_token_id=[eos, int(free[1, T + 1])]),
                         "sampled": dict(eos_token_id=eos, do_sample=True, top_k=20, seed=3)}.items():
            seen = []
            got = ours.generate(ids, mask, max_new_tokens=8, streamer=lambda t: seen.append(t.clone()), **kw,
                                **extra)
            assert all(t.device.type == "cpu" and t.shape == (2,) for t in seen), name
            assert torch.equal(torch.stack(seen, 1), got[:, T:].cpu()), name
            results[ahead, name] = got.tolist()
    for name in ("greedy", "eos", "sampled"):
        assert results[True, name] == results[False, name], name
    assert results[True, "greedy"] == free.tolist()
    assert len(results[True, "eos"][0]) == T + 3               # both stopped by their third / second token


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_generate_run_ahead_same_tokens(monkeypatch, static):
    """CPU: the run-ahead order of generate() (forced on; by default it is on for CUDA models only)."""
    with torch.no_grad():
        _run_ahead_case(_ours("attn1_moe_top2"), "cpu", monkeypatch, static_cache=static)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("how", ["dynamic", "graph"])
def test_generate_run_ahead_same_tokens_cuda(monkeypatch, how):
    """CUDA: generate() with the next step enqueued before the host reads a token (asynchronous host copies, an
    event per step; the default there) against the synchronous order, eagerly and from the CUDA graph."""
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    from jamba_ext import modeling_jamba as mj
    assert mj.RUN_AHEAD is None                                 # the default: on for CUDA models
    with torch.no_grad():
        _run_ahead_case(_ours("attn1_moe_top2", device="cuda"), "cuda", monkeypatch,
                        **({"cuda_graph": True} if how == "graph" else {}))


def test_generate_graph_default_is_off_on_cpu():
    """cuda_graph=None (the default) on a CPU model: the dynamic cache, no warning, even for many new tokens."""
    from jamba_ext import modeling_jamba as mj
    ours = _ours("attn1_moe_top2")
    ids = prompt_ids(1, 5, 101)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours.generate(ids, max_new_tokens=mj.GRAPH_MIN_NEW_TOKENS, eos_token_id=None)
    assert ours._decode_graph_info is None
    assert got.tolist() == ours.generate(ids, max_new_tokens=mj.GRAPH_MIN_NEW_TOKENS, eos_token_id=None,
                                         cuda_graph=False).tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_generate_graph_default_on_cuda():
    """cuda_graph=None on a CUDA model: the CUDA graph from GRAPH_MIN_NEW_TOKENS new tokens on (same tokens as the
    eager static decode), eager below it and with static_cache=False."""
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    from jamba_ext import modeling_jamba as mj
    ours = _ours("attn1_moe_top2", device="cuda")
    ids, mask = JambaForCausalLM._left_pad(_prompts(2), 0, "cuda")
    n = mj.GRAPH_MIN_NEW_TOKENS
    with torch.no_grad():
        auto = ours.generate(ids, mask, max_new_tokens=n, eos_token_id=None)
        assert ours._decode_graph_info and ours._decode_graph_info["captured"], ours._decode_graph_info
        assert auto.tolist() == ours.generate(ids, mask, max_new_tokens=n, eos_token_id=None,
                                              static_cache=True, cuda_graph=False).tolist()
        ours.generate(ids, mask, max_new_tokens=n - 1, eos_token_id=None)
        assert ours._decode_graph_info is None
        ours.generate(ids, mask, max_new_tokens=n, eos_token_id=None, static_cache=False)
        assert ours._decode_graph_info is None


# ---- a kept decode graph (generate() keeps its graph and static cache for a later call of the same shape) -------
def test_static_cache_assign_moves_the_state_in_place():
    """JambaHybridCache.assign_: a static cache holding another prompt's state takes a fresh prefill's state into its
    own tensors (the ones a captured graph reads: same addresses), and the eager static decode then continues from it
    exactly as from the fresh cache; caches of other rows or capacity, or a dynamic one, are refused."""
    ours = _ours("attn1_moe_top2")
    ids, mask = JambaForCausalLM._left_pad(_prompts(2), 0, "cpu")
    B, T = ids.shape
    with torch.no_grad():
        fresh = JambaHybridCache(ours.config, B, max_length=T + 6, static=True)
        kept = JambaHybridCache(ours.config, B, max_length=T + 6, static=True)
        ours(prompt_ids(B, T + 3, 101, seed=9), cache=kept)                 # another prompt, two steps on
        for s in range(2):
            ours(torch.full((B, 1), 5 + s), cache=kept)
        tensors = lambda c: [t for t in c.conv_states + c.ssm_states + c._keys + c._values + [c.static_mask]  # noqa
                             if t is not None]
        ptrs = [t.data_ptr() for t in tensors(kept)]
        ours(ids, mask, cache=fresh)
        kept.assign_(fresh)
        assert [t.data_ptr() for t in tensors(kept)] == ptrs and kept.seq_len == fresh.seq_len == T
        assert all(torch.equal(x, y) for x, y in zip(tensors(kept), tensors(fresh)))
        assert kept.nbytes() == fresh.nbytes() > 0
        for s in range(4):
            tok = torch.full((B, 1), 9 + s)
            assert torch.equal(ours(tok, cache=kept).logits, ours(tok, cache=fresh).logits), s
        for other in (JambaHybridCache(ours.config, B + 1, max_length=T + 6, static=True),
                      JambaHybridCache(ours.config, B, max_length=T + 40, static=True),
                      JambaHybridCache(ours.config, B, max_length=T + 6)):
            with pytest.raises(ValueError, match="same rows and capacity"):
                other.assign_(fresh)


def test_graph_key_follows_weights_and_settings():
    """_graph_key (what a kept graph must match): stable across calls and in-place weight updates (the graph reads
    the tensors as they are); changed by a replaced parameter, a module setting, the rows or the capacity."""
    ours = _ours("attn1_moe_top2")
    cache = lambda b=2, n=40: JambaHybridCache(ours.config, b, max_length=n, static=True)  # noqa: E731
    key = ours._graph_key(cache(), False)
    with torch.no_grad():
        ours.generate(prompt_ids(2, 5, 101), max_new_tokens=4, static_cache=True)
        ours(prompt_ids(1, 7, 101))
        ours.model.final_layernorm.weight.mul_(1.5)
        c = cache()
        ours(prompt_ids(2, 7, 101), cache=c)
        ours(prompt_ids(2, 1, 101), cache=c)           # a static decode step (as a capture ends with) ...
        after_step = ours._graph_key(c, False)
        ours(prompt_ids(2, 3, 101), cache=cache())      # ... and a prefill (as the next call starts with)
    assert ours._graph_key(cache(), False) == key == after_step
    for other in (cache(3), cache(2, 400)):
        assert ours._graph_key(other, False) != key
    assert ours._graph_key(cache(), True) != key
    ours.train()
    assert ours._graph_key(cache(), False) != key
    ours.eval()
    assert ours._graph_key(cache(), False) == key
    moe = next(m for m in ours.modules() if hasattr(m, "act_fp8"))
    moe.act_fp8 = True
    assert ours._graph_key(cache(), False) != key
    moe.act_fp8 = False
    with torch.inference_mode():                        # (its cache would hold inference tensors)
        assert ours._graph_key(cache(), False) != key
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if prec == "highest" else "highest")   # (TF32: baked into a capture)
    try:
        assert ours._graph_key(cache(), False) != key
    finally:
        torch.set_float32_matmul_precision(prec)
    assert ours._graph_key(cache(), False) == key
    ours.model.final_layernorm.weight = torch.nn.Parameter(ours.model.final_layernorm.weight.detach().clone())
    assert ours._graph_key(cache(), False) != key


def test_kept_graph_is_taken_once_and_dropped_by_moves_copies_and_size(monkeypatch):
    """The kept-graph bookkeeping on CPU (a stand-in graph): kept after a call, taken off the model by the next call
    that matches (its state moved into the kept cache; "reused" in _decode_graph_info), refused when too large,
    dropped by clear_decode_graph() and by .to(); copy.deepcopy and pickling leave it out."""
    import copy
    import io
    from jamba_ext import modeling_jamba as mj

    class Graph:                                          # (like a CUDA graph: no copies)
        def __init__(self, cache):
            self.cache = cache

        def __deepcopy__(self, memo):
            raise RuntimeError("a graph cannot be copied")

        def __reduce__(self):
            raise RuntimeError("a graph cannot be pickled")

    ours = _ours("attn1_moe_top2")
    ids = prompt_ids(2, 6, 101)
    with torch.no_grad():
        kept, fresh = (JambaHybridCache(ours.config, 2, max_length=20, static=True) for _ in range(2))
        ours(prompt_ids(2, 9, 101, seed=5), cache=kept)
        ours(ids, cache=fresh)
    g = Graph(kept)
    ours._decode_graph_info = {"captured": True, "capture_s": 0.25, "warmup_steps": 2}
    ours._keep_graph(g, False)
    assert ours._decode_graph_kept[1] is g
    twin = copy.deepcopy(ours)
    assert "_decode_graph_kept" not in twin.__dict__ and ours._decode_graph_kept[1] is g
    torch.save(ours, io.BytesIO())
    assert ours._kept_graph(JambaHybridCache(ours.config, 3, max_length=20, static=True), False) is None
    assert "_decode_graph_kept" not in ours.__dict__                     # (a mismatch frees it)
    ours._keep_graph(g, False)
    assert ours._kept_graph(fresh, True) is None                         # (another placement)
    ours._keep_graph(g, False)
    assert ours._kept_graph(fresh, False) is g and "_decode_graph_kept" not in ours.__dict__
    assert ours._decode_graph_info == {"captured": True, "capture_s": 0.0, "warmup_steps": 0, "reused": True}
    assert kept.seq_len == 6 and torch.equal(kept.ssm_states[0], fresh.ssm_states[0])
    ours._keep_graph(g, False)
    ours.clear_decode_graph()
    assert "_decode_graph_kept" not in ours.__dict__
    ours._keep_graph(g, False)
    ours.to(torch.float32)
    assert "_decode_graph_kept" not in ours.__dict__
    with torch.inference_mode():                         # kept by a call under inference mode (the CLI's) ...
        inf = JambaHybridCache(ours.config, 2, max_length=20, static=True)
        ours(ids, cache=inf)
        ours._keep_graph(Graph(inf), False)
    with torch.no_grad():                                # ... is not taken by one outside it (its inference tensors
        assert ours._kept_graph(fresh, False) is None    # could not be written there)
    monkeypatch.setattr(mj, "KEEP_GRAPH_MAX_BYTES", kept.nbytes() - 1)
    ours._keep_graph(g, False)
    assert "_decode_graph_kept" not in ours.__dict__
    # a kept _DecodeGraph holds no reference to the model: `del model` frees the weights at once (no cycle left for
    # the garbage collector)
    import gc
    import weakref
    monkeypatch.setattr(mj, "KEEP_GRAPH_MAX_BYTES", 1 << 40)
    ours._keep_graph(mj._DecodeGraph(kept, None, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5)), False)
    assert "_decode_graph_kept" in ours.__dict__
    alive = weakref.ref(ours.lm_head.weight)
    gc.disable()
    try:
        del ours, twin
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_generate_reuses_the_kept_graph():
    """A second generate() of the same rows and cache capacity replays the graph the first one kept (no capture) and
    gives the eager static decode's tokens on its own prompts: greedy, sampled, 3 beams; weights changed in place are
    followed; a replaced parameter, other rows, a capacity past the bucket, clear_decode_graph() and a change between
    torch.no_grad() and torch.inference_mode() capture anew."""
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    from jamba_ext import modeling_jamba as mj
    ours = _ours("attn1_moe_top2", dtype=torch.bfloat16, device="cuda")
    p1 = JambaForCausalLM._left_pad(_prompts(2), 0, "cuda")
    p2 = JambaForCausalLM._left_pad([prompt_ids(1, n, 101, seed=20 + n)[0].tolist() for n in (13, 6)], 0, "cuda")
    kw = dict(max_new_tokens=20, eos_token_id=None)

    def run(p, expect_reused, **extra):
        got = ours.generate(*p, **kw, **extra)
        info = ours._decode_graph_info
        assert info["captured"] and bool(info.get("reused")) == expect_reused, (info, extra)
        ref = ours.generate(*p, **kw, **extra, cuda_graph=False, static_cache=True)
        assert got.tolist() == ref.tolist(), (expect_reused, extra)
        return got

    with torch.no_grad():
        first = run(p1, False)
        assert ours._decode_graph_kept[1].cache.capacity == mj.STATIC_BUCKET
        run(p2, True)
        assert run(p1, True).tolist() == first.tolist()
        run(p2, True, do_sample=True, top_k=20, seed=3)
        run(p1, False, num_beams=3)                                     # 6 rows: captured
        run(p2, True, num_beams=3, do_sample=True, seed=4)
        run(p2, False)                                                  # 2 rows again
        ours.model.final_layernorm.weight.mul_(1.5)
        run(p2, True)                                                   # in place: read as it is
        w = ours.model.final_layernorm.weight
        ours.model.final_layernorm.weight = torch.nn.Parameter(w.detach().clone())
        run(p2, False)
        long_p = JambaForCausalLM._left_pad([prompt_ids(1, mj.STATIC_BUCKET, 101, seed=2)[0].tolist()] * 2, 0, "cuda")
        run(long_p, False)                                              # T + 20 > one bucket
        ours.clear_decode_graph()
        run(p2, False)
    with torch.inference_mode():                                        # (another key: inference tensors)
        run(p2, False)
        run(p2, True)
    with torch.no_grad():
        run(p2, False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_stop_strings_in_graph_decode():
    """stop_strings (transformers' StopStringCriteria, run outside the graph) on a CUDA model: the graph decode stops
    the rows where the eager static decode does (padded after), with the same tokens."""
    if not jamba_ext.has_cuda_kernels():
        pytest.skip("jamba_ext built without CUDA kernels")
    pytest.importorskip("transformers")
    from test_model import _piece_tokenizer
    ours = _ours("attn1_moe_top2", device="cuda")
    tok = _piece_tokenizer(ours.config.vocab_size)
    ids = prompt_ids(2, 9, 101, seed=4).cuda()
    with torch.no_grad():
        plain = ours.generate(ids, max_new_tokens=20, eos_token_id=None, cuda_graph=False, static_cache=True)
        new = [tok.convert_ids_to_tokens(int(t)) for t in plain[0, 9:]]
        kw = dict(max_new_tokens=20, eos_token_id=2, stop_strings=[new[3][-1] + new[4][:2]], tokenizer=tok)
        g = ours.generate(ids, **kw)
        assert ours._decode_graph_info["captured"]
        e = ours.generate(ids, cuda_graph=False, static_cache=True, **kw)
    assert g.tolist() == e.tolist()
    # Where row 0 must stop: at EOS, or at the first new token inside which an occurrence of the stop string ends
    # (it may start in earlier tokens, even in the prompt; the random tokens can complete it before the 5th new one).
    stop, text, k = kw["stop_strings"][0], "".join(tok.convert_ids_to_tokens(ids[0].tolist())), None
    for i, piece in enumerate(new):
        before, text = len(text), text + piece
        if piece == "</s>" or any(text.startswith(stop, j) and j + len(stop) > before for j in range(len(text))):
            k = i
            break
    assert k is not None and k <= 4
    assert (g[0, 9 + k + 1:] == 0).all() and g[0, :9 + k + 1].tolist() == plain[0, :9 + k + 1].tolist()
