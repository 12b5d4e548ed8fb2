"""A model over several devices (jamba_ext.placement, JambaForCausalLM.dispatch, from_pretrained(device_map=...)).

CPU: the device-map forms (one device, a list, a dict of units and prefixes, "auto" / "balanced" without GPUs, a tied
LM head), their errors, the balanced split, and the forward's moves between devices driven through a placement that
names "cpu" and "cpu:0" alternately (the moves then run, and copy on the one CPU): logits, static and dynamic decode,
greedy and beam generate, the training loss with the router term, each equal to the unsplit model's.
Two GPUs (marked cuda, skipped with fewer): the model's layers split over cuda:0 and cuda:1, by dispatch and by
from_pretrained(device_map="balanced") from a saved checkpoint: the same logits, tokens (greedy, beams), loss and
gradients as on one GPU, and every weight on its device.
"""
import pytest
import torch

from jamba_ext import placement
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM, JambaModel

CFG = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
           num_key_value_heads=2, attn_layer_period=3, attn_layer_offset=1, expert_layer_period=2,
           expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4,
           mamba_expand=2, pad_token_id=0, eos_token_id=2, tie_word_embeddings=False)
UNITS = ["model.embed_tokens"] + [f"model.layers.{i}" for i in range(6)] + ["model.final_layernorm", "lm_head"]


def _model(seed=0, **over):
    return JambaForCausalLM.from_config(JambaConfig(**dict(CFG, **over)), dtype=torch.float32, seed=seed).eval()


def test_units_and_sizes():
    m = _model()
    assert [n for n, _ in placement.units(m)] == UNITS
    assert [n for n, _ in placement.units(m.model)] == [u[len("model."):] for u in UNITS[:-1]]
    assert sum(placement.module_bytes(mod) for _, mod in placement.units(m)) == placement.module_bytes(m)


def test_balanced_split_is_contiguous_and_even():
    cpu = [torch.device("cpu", i) for i in range(3)]
    got = placement.balanced([10] * 9, cpu)
    assert got == [cpu[0]] * 3 + [cpu[1]] * 3 + [cpu[2]] * 3
    got = placement.balanced([1, 1, 100, 1, 1, 1], cpu[:2])            # one large unit: its middle decides
    assert got == [cpu[0]] * 3 + [cpu[1]] * 3
    got = placement.balanced([5, 1, 1, 1, 1, 5], cpu[:2])
    assert got == [cpu[0]] * 3 + [cpu[1]] * 3
    assert placement.balanced([3], cpu) == [cpu[1]]                     # (one unit: the device of its middle)


def test_device_map_forms_on_cpu():
    m = _model()
    cpu = torch.device("cpu")
    for form in ("cpu", cpu, "auto" if not torch.cuda.is_available() else "cpu", ["cpu"], {"": "cpu"}):
        assert placement.resolve_device_map(m, form) == {u: cpu for u in UNITS}, form
    # prefixes: the longest matching one wins; ints are GPU indices
    d = placement.resolve_device_map(m, {"model": "cpu", "model.layers.3": "cpu", "lm_head": "cpu"})
    assert set(d) == set(UNITS)
    # (two stand-in devices, so that the longest prefix's device shows: every dict value is now checked up front, so
    # a missing GPU under an overridden key no longer tells the two apart)
    d = placement.resolve_device_map(m, {"model": "cpu:0", "model.layers.3": "cpu:1", "": "cpu:1"})
    assert d["model.layers.3"] == torch.device("cpu", 1) and d["lm_head"] == torch.device("cpu", 1)
    assert all(d[u] == torch.device("cpu", 0) for u in UNITS if u.startswith("model.") and u != "model.layers.3")
    two = [torch.device("cpu", 0), torch.device("cpu", 1)]
    d = placement.resolve_device_map(m, two)
    assert [d[u] for u in UNITS] == sorted([d[u] for u in UNITS], key=lambda x: x.index)   # in order
    assert d["model.embed_tokens"] == two[0] and d["lm_head"] == two[1]
    tied = _model(tie_word_embeddings=True)
    d = placement.resolve_device_map(tied, two)
    assert d["lm_head"] == d["model.embed_tokens"] == two[0]             # a tied head stays with the embeddings
    assert placement.hf_device_map({"a": torch.device("cuda", 1), "b": torch.device("cpu")}) == {"a": 1, "b": "cpu"}


def test_device_map_errors():
    m = _model()
    for bad, msg in (({"model.layers": "cpu"}, "no entry covers 'model.embed_tokens'"),
                     ({"": "cpu", "model.layers.9": "cpu"}, "name no part"), ({}, "empty dict"), ([], "empty list"),
                     ("gpu7", "is not a device"), ({"": True}, "is not a device")):
        with pytest.raises(ValueError, match=msg):
            placement.resolve_device_map(m, bad)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match="not a visible GPU"):
        placement.resolve_device_map(m, {"": "cpu", "lm_head": f"cuda:{n}"})
    with pytest.raises(ValueError, match="device or device_map"):
        JambaForCausalLM.from_pretrained("/nonexistent", device="cpu", device_map="cpu")


def _alternating(model):
    """A placement naming 'cpu' and 'cpu:0' in turns: every layer boundary is a move (a copy on the one CPU)."""
    n = len(model.model.layers) + 2
    devs = [torch.device("cpu") if i % 2 == 0 else torch.device("cpu", 0) for i in range(n)]
    model.model._placement = lambda: devs
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_forward_moves_between_devices_match_one_device(tied):
    """The forward's moves (hidden state, residual, masks, the static step's mask and position copies): logits of a
    padded prefill, static and dynamic decode steps, greedy and beam generate and the training loss with the router
    term equal the unsplit model's (untied and tied LM head)."""
    ref, split = _model(tie_word_embeddings=tied), _alternating(_model(tie_word_embeddings=tied))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 101, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    hops = []
    orig = JambaModel._hop

    def counting(*a):
        hops.append(a[0])
        return orig(*a)
    JambaModel._hop = staticmethod(counting)
    try:
        with torch.no_grad():
            a = ref(ids, attention_mask=mask).logits
            b = split(ids, attention_mask=mask).logits
            assert torch.equal(a, b)
            assert len(hops) == 4     # before layers 0, 2, 4 and the final norm (tensors on 'cpu:0' read as 'cpu')
            for static in (False, True):
                ca = ref.generate(ids, attention_mask=mask, max_new_tokens=6, static_cache=static, eos_token_id=None)
                cb = split.generate(ids, attention_mask=mask, max_new_tokens=6, static_cache=static, eos_token_id=None)
                assert ca.tolist() == cb.tolist(), static
            ba = ref.generate(ids, max_new_tokens=5, num_beams=3, static_cache=True, eos_token_id=None)
            bb = split.generate(ids, max_new_tokens=5, num_beams=3, static_cache=True, eos_token_id=None)
            assert ba.tolist() == bb.tolist()
        la = ref(ids, labels=ids, output_router_logits=True).loss
        lb = split(ids, labels=ids, output_router_logits=True).loss
        assert torch.equal(la, lb)
    finally:
        JambaModel._hop = staticmethod(orig)


@pytest.mark.parametrize("cuts", [(1,), (3, 5), (1, 7, 8), (2, 4, 6, 8)])
def test_split_decode_units_match_the_forward(cuts):
    """The split decode graph's units (_SplitDecodeGraph._run: embeddings + step, each layer, final norm, head), run
    eagerly in segments cut at `cuts` and chained through _moved_in as its replay chains them: the logits of four
    static decode steps equal the model's own static steps bit for bit (the graphs themselves need two GPUs)."""
    from jamba_ext.modeling_jamba import JambaHybridCache, _SplitDecodeGraph
    m = _model(seed=5)
    n = len(m.model.layers)
    bounds = [0, *cuts, n + 3]
    segs = [(torch.device("cpu"), a, b) for a, b in zip(bounds, bounds[1:])]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 101, (3, 7), generator=g)
    with torch.no_grad():
        caches = [JambaHybridCache(m.config, 3, max_length=16, static=True) for _ in range(2)]
        for c in caches:
            m(ids, cache=c)
        tok = ids[:, -1]
        for _ in range(4):
            want = m(tok[:, None], cache=caches[0]).logits[:, -1]
            out = _SplitDecodeGraph._run(m, caches[1], *segs[0][1:], {"tokens": tok[:, None]})
            step0 = out["step"]
            for d, j0, j1 in segs[1:]:
                out = _SplitDecodeGraph._run(m, caches[1], j0, j1, _SplitDecodeGraph._moved_in(caches[1], step0, d,
                                                                                                  out)[1])
            caches[1].cache_position.add_(1)
            caches[1].seq_len += 1
            assert torch.equal(out["logits"], want)
            tok = want.argmax(-1)
    assert [s[1:] for s in _SplitDecodeGraph._segments(m)] == [(0, n + 3)]   # (one device: one segment)


def test_dispatch_and_from_pretrained_on_one_device(tmp_path):
    """dispatch / from_pretrained with a one-device map: no hf_device_map, no moves; a list of one device too."""
    m = _model()
    m.save_pretrained(str(tmp_path))
    for dm in ("cpu", ["cpu"], {"": "cpu"}):
        got = JambaForCausalLM.from_pretrained(str(tmp_path), device_map=dm)
        assert not hasattr(got, "hf_device_map") and got.model._placement() is None
        assert all(torch.equal(p, q) for p, q in zip(got.state_dict().values(), m.state_dict().values()))
    assert m.dispatch("cpu") is m and m.model._placement() is None
    total = placement.module_bytes(m)
    got = JambaForCausalLM.from_pretrained(str(tmp_path), device_map="balanced",
                                           max_memory={"cpu:0": total // 2, "cpu:1": total})
    assert set(got.hf_device_map.values()) == {"cpu:0", "cpu:1"}
    assert all(torch.equal(p, q) for p, q in zip(got.state_dict().values(), m.state_dict().values()))
    assert m.dispatch("balanced", max_memory={"cpu:0": total, "cpu:1": total // 2}) is m


def _two_gpus():
    return torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.cuda
@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_two_gpus_match_one(dtype, tmp_path):
    """Layers over cuda:0 and cuda:1 (dispatch, then from_pretrained(device_map="balanced")): the same logits (bit for
    bit: the same kernels in the same order), greedy and beam tokens, loss and gradients as on cuda:0 alone; each
    weight on its device; generate's tokens on cuda:0."""
    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    base = _model(seed=3)
    one = _model(seed=3).to(d0, dtype)
    assert one.fuse_projections() > 0                     # (dispatch lays the joint projections out again: so here)
    two = _model(seed=3).to(dtype).dispatch("balanced")
    assert set(two.hf_device_map.values()) == {0, 1} and two.hf_device_map["model.embed_tokens"] == 0
    assert two.lm_head.weight.device == d1 and two.model.layers[0].mamba.in_proj.weight.device == d0
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 101, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        a = one(ids.to(d0), attention_mask=mask.to(d0)).logits
        b = two(ids.to(d0), attention_mask=mask.to(d0)).logits
        assert b.device == d1 and torch.equal(a, b.to(d0))
        for kw in (dict(), dict(static_cache=True), dict(num_beams=3), dict(do_sample=True, seed=4, top_k=20)):
            ta = one.generate(ids.to(d0), attention_mask=mask.to(d0), max_new_tokens=20, eos_token_id=None,
                              cuda_graph=False, **kw)
            tb = two.generate(ids.to(d0), attention_mask=mask.to(d0), max_new_tokens=20, eos_token_id=None, **kw)
            assert tb.device == d0 and ta.tolist() == tb.tolist(), kw
    for m in (one, two):
        m.train()
        m.zero_grad()
    la = one(ids.to(d0), labels=ids.to(d0), output_router_logits=True).loss
    lb = two(ids.to(d0), labels=ids.to(d0), output_router_logits=True).loss
    la.backward()
    lb.backward()
    assert torch.equal(la, lb.to(d0))
    for (n, p), q in zip(one.named_parameters(), two.parameters()):
        assert torch.equal(p.grad, q.grad.to(d0)), n
    # from a checkpoint, each weight loaded straight onto its device
    base.to(dtype).save_pretrained(str(tmp_path))
    loaded = JambaForCausalLM.from_pretrained(str(tmp_path), device_map="balanced")
    assert loaded.hf_device_map == two.hf_device_map
    for (n, p), q in zip(loaded.named_parameters(), two.parameters()):
        assert p.device == q.device and torch.equal(p, q.detach()), n
    single = JambaForCausalLM.from_pretrained(str(tmp_path), device_map="cuda:0")   # (fused projections, as loaded)
    with torch.no_grad():
        assert torch.equal(loaded(ids.to(d0)).logits.to(d0), single(ids.to(d0)).logits)
    # moved after it ran on one device: the forward follows the new placement
    single.dispatch({"": 0, "model.layers.4": 1, "model.layers.5": 1, "model.final_layernorm": 1, "lm_head": 1})
    with torch.no_grad():
        assert torch.equal(single(ids.to(d0)).logits.to(d0), loaded(ids.to(d0)).logits.to(d0))
        single.model.layers[2].to(d1)                        # (one layer moved by hand: followed too; its MLP's
        single.fuse_projections()                            # joint gate / up laid out again, as documented)
        assert single.model.layers[2].input_layernorm.weight.device == d1
        assert torch.equal(single(ids.to(d0)).logits.to(d0), loaded(ids.to(d0)).logits.to(d0))


@pytest.mark.cuda
@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_split_decode_graph(dtype):
    """generate() (cuda_graph=None: the default) on a model over cuda:0 and cuda:1 captures one graph per device
    (_SplitDecodeGraph) and gives the eager static decode's tokens, greedy, sampled and with 3 beams; a split with
    three segments (cuda:0, cuda:1, cuda:0 for the head) too; a later call of the same rows replays the kept graphs."""
    d0 = torch.device("cuda", 0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 101, (2, 11), generator=g).to(d0)
    for dm, segs in (("balanced", 2), ({"": 0, "model.layers.2": 1, "model.layers.3": 1, "model.layers.4": 1}, 3)):
        two = _model(seed=3).to(dtype).dispatch(dm)
        with torch.no_grad():
            for kw in (dict(), dict(num_beams=3), dict(do_sample=True, seed=5, top_k=20)):
                tc = two.generate(ids, max_new_tokens=20, eos_token_id=None, **kw)
                info = two._decode_graph_info
                assert info["captured"] and info["segments"] == segs, info
                te = two.generate(ids, max_new_tokens=20, eos_token_id=None, static_cache=True, cuda_graph=False, **kw)
                assert tc.tolist() == te.tolist(), (dm, kw)
            # the next call of the same rows replays the kept per-device graphs on its own prompts
            other = torch.randint(3, 101, (2, 17), generator=g).to(d0)
            tc = two.generate(other, max_new_tokens=20, eos_token_id=None)
            assert two._decode_graph_info.get("reused") and two._decode_graph_info["segments"] == segs
            te = two.generate(other, max_new_tokens=20, eos_token_id=None, static_cache=True, cuda_graph=False)
            assert tc.tolist() == te.tolist(), dm


def test_max_memory_budgets():
    """max_memory with "balanced" / "auto": shares in proportion to the budgets, contiguous, each within its budget (a
    fill in turn where proportional shares overfill one); sizes as transformers writes them; clear errors."""
    m = _model()
    total = placement.module_bytes(m)
    c0, c1 = torch.device("cpu", 0), torch.device("cpu", 1)
    for b0, b1 in ((total, total), (total // 4, total), (total, total // 3), (int(total * 0.6), int(total * 0.6))):
        d = placement.resolve_device_map(m, "balanced", {"cpu:1": b1, "cpu:0": b0})
        seq = [d[u] for u in UNITS]
        assert seq == sorted(seq, key=lambda x: x.index), (b0, b1)                # contiguous, cpu:0 first
        for dev, b in ((c0, b0), (c1, b1)):
            assert sum(placement.module_bytes(mod) for n, mod in placement.units(m) if d[n] == dev) <= b
        assert set(seq) == {c0, c1}
    d = placement.resolve_device_map(m, "auto", {"cpu:0": total, "cpu:1": total})
    assert set(d.values()) == {c0}                                                # ("auto": one device when it fits)
    d = placement.resolve_device_map(m, "auto", {"cpu:0": total // 2, "cpu:1": total})
    assert set(d.values()) == {c0, c1}
    assert placement.parse_size("1.5GiB") == 3 * 2**29 and placement.parse_size("80GB") == 80 * 10**9
    for mm, dm, msg in (({"cpu:0": total // 3, "cpu:1": total // 3}, "balanced", "budgets hold"),
                        ({"cpu:0": "lots"}, "balanced", "is not a size"), ({"cpu:0": 0}, "auto", "above 0"),
                        ({"cpu:0": total}, "cpu", "goes with device_map"), ({}, "auto", "expected a dict")):
        with pytest.raises(ValueError, match=msg):
            placement.resolve_device_map(m, dm, mm)
    biggest = max(placement.module_bytes(mod) for _, mod in placement.units(m))
    with pytest.raises(ValueError, match="whole layers"):                        # fits in bytes, not in whole units
        placement.resolve_device_map(m, "balanced", {"cpu:0": total - biggest // 2 - 1, "cpu:1": biggest // 2 + 2})


@pytest.mark.cuda
@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
def test_cuda_graph_decode_on_the_second_gpu_after_the_first():
    """A CUDA-graph decode on cuda:0, then one of a model on cuda:1 (cuda:0 current): the second is captured on a
    stream of cuda:1 (torch.cuda.graph's default capture stream belongs to the device of the first capture), so its
    tokens equal the eager decode's there and cuda:0's."""
    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 101, (2, 9), generator=g)
    with torch.no_grad():
        m0 = _model(seed=6).to(d0)
        a = m0.generate(ids.to(d0), max_new_tokens=20, eos_token_id=None, cuda_graph=True)
        assert m0._decode_graph_info["captured"]
        m1 = _model(seed=6).to(d1)
        b = m1.generate(ids.to(d1), max_new_tokens=20, eos_token_id=None, cuda_graph=True)
        assert m1._decode_graph_info["captured"] and torch.cuda.current_device() == 0
        e = m1.generate(ids.to(d1), max_new_tokens=20, eos_token_id=None, cuda_graph=False, static_cache=True)
        assert b.device == d1 and b.tolist() == e.tolist() == a.tolist()


def test_device_map_bad_devices_and_lists():
    """A negative GPU index is refused as a ValueError (it escaped as torch's RuntimeError); a list naming a device
    twice is refused (["cpu:0", "cpu:1", "cpu:0"] put the first and last layers on cpu:0 and the middle on cpu:1: not
    contiguous runs, one per device); so is a max_memory naming one device twice (the later budget won in silence)."""
    m = _model()
    for bad in (-1, [-1, 0], {"": -1}):
        with pytest.raises(ValueError, match="is not a device"):
            placement.resolve_device_map(m, bad)
    for bad in (["cpu:0", "cpu:1", "cpu:0"], ["cpu", "cpu"], [torch.device("cpu", 1), "cpu:1"]):
        with pytest.raises(ValueError, match="more than once"):
            placement.resolve_device_map(m, bad)
    total = placement.module_bytes(m)
    with pytest.raises(ValueError, match="more than once"):
        placement.resolve_device_map(m, "balanced", {"cpu:1": total, torch.device("cpu", 1): total // 2})
    d = placement.resolve_device_map(m, ["cpu:1", "cpu:0"])                      # (the list's order: kept)
    assert d["model.embed_tokens"] == torch.device("cpu", 1) and d["lm_head"] == torch.device("cpu", 0)


def test_device_map_keys_inside_a_unit_or_of_another_model():
    """A key inside a unit ('model.layers.0.mamba': a unit is placed whole) is told as such (it read 'name no part of
    this model'); the hint for a JambaModel names its own units (it named model.embed_tokens and lm_head)."""
    m = _model()
    with pytest.raises(ValueError, match=r"'model.layers.0.mamba' lies inside the unit 'model.layers.0'"):
        placement.resolve_device_map(m, {"": "cpu", "model.layers.0.mamba": "cpu:1"})
    with pytest.raises(ValueError, match=r"no entry covers 'embed_tokens' \(units: embed_tokens, layers.N, "
                                         r"final_layernorm; a prefix such as 'layers' or ''"):
        placement.resolve_device_map(m.model, {"model": "cpu"})


def test_tied_head_counts_once_in_the_split():
    """A tied LM head shares the embeddings' tensor and device: its bytes are not planned for the last device (the
    split was ~2.8 : 1 for this model, the embeddings' device holding the most) nor counted twice against
    max_memory (a budget holding the whole model was refused: 'budgets hold')."""
    m = _model(tie_word_embeddings=True, vocab_size=4000)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    two = [torch.device("cpu", 0), torch.device("cpu", 1)]
    d = placement.resolve_device_map(m, two)
    held = {dev: 0 for dev in two}
    seen = set()
    for n, mod in placement.units(m):
        for p in mod.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                held[d[n]] += p.numel() * p.element_size()
    assert max(held.values()) <= 1.5 * min(held.values()), held
    total = placement.module_bytes(m)
    d = placement.resolve_device_map(m, "balanced", {"cpu:0": total})
    assert set(d.values()) == {two[0]}
