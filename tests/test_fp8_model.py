"""fp8 expert weights in the model: JambaForCausalLM.quantize_experts("fp8"), from_pretrained(experts_dtype="fp8").

The MoE experts become float8_e4m3fn buffers with one f32 scale per row (ops.quantize_fp8) and the MoE runs
ops.moe_experts_fp8. Checks, on tiny random fp32 models (CPU; the CUDA ones marked cuda):
- layout: each expert's buffers are ops.quantize_fp8 of its unquantized weights bit for bit, dtypes, the experts'
  bytes (1 a weight plus 4 a row), num_parameters unchanged, a meta model quantizes without memory;
- numerics: the logits are those of an unquantized twin holding the dequantized weights float(q) * scale (<= 1e-4,
  prefill and decode steps), and differ from the unquantized model's by a small but nonzero relative error (weight
  rounding to 3 mantissa bits and the routing flips it causes: bounds QUANT_REL_MAX, from measurements);
- the MoE block's gradients for x and the router equal the twin's (the fp8 weights get none); LoRA trains on top;
- from_pretrained(experts_dtype="fp8") equals from_pretrained(...).quantize_experts() bit for bit (per-expert and fused
  checkpoints, fp32 and bf16), quantizing one expert piece at a time;
- model.to(dtype) / .half() / .float() leave the fp8 buffers and scales bit-identical; save_pretrained refuses;
  load_state_dict quantizes an unquantized state dict and dequantizes an fp8 one; generate (dynamic, static cache,
  the CLI's --experts-fp8; on CUDA the CUDA-graph decode step).
"""
import copy
import os

import pytest
import torch

from jamba_ext import ops
from jamba_ext.lora import add_lora
from jamba_ext.modeling_jamba import JambaConfig, JambaExperts, JambaForCausalLM, JambaModel, to_per_expert_state_dict

FP8 = torch.float8_e4m3fn
TWIN_REL = 1e-4      # fp8 model against its dequantized twin, fp32 (the decode kernels scale the sum, not each weight;
                     # measured 0 in prefills, 3-5e-7 in decode steps)
# fp8 model against the unquantized one, norm-wise relative error of the logits, per config: measured (6 seeds, fp32
# and bf16) 0.029-0.041 at top-2 and 0.045-0.10 in the all-MoE top-1 model (a token whose one expert flips between
# near-tied router logits changes most)
QUANT_REL_MAX = {"moe_top2": 0.1, "all_moe_top1_tied": 0.25}
# CUDA, bf16, a 48-token prefill: the fp8 ring kernels (exact e4m3 weights, the scale on the fp32 sums) against the
# dequantizing path (weights rounded to bf16), per config. Measured at 536e837 against the twin: 0.036 in the top-1
# model, where one token's expert flipping between near-tied router logits moves its whole row
RING_VS_DEQUANT_REL = {"moe_top2": 0.02, "all_moe_top1_tied": 0.08}

BASE = dict(vocab_size=101, hidden_size=64, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2,
            mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    # attention at layer 1, MoE on odd layers, top-2 of 4, untied
    "moe_top2": dict(BASE, num_hidden_layers=4, attn_layer_period=4, attn_layer_offset=1, expert_layer_period=2,
                     expert_layer_offset=1, num_experts=4, num_experts_per_tok=2),
    # every layer MoE, top-1 of 3, tied embeddings, attention at layer 0
    "all_moe_top1_tied": dict(BASE, num_hidden_layers=3, attn_layer_period=3, attn_layer_offset=0,
                              expert_layer_period=1, expert_layer_offset=0, num_experts=3, num_experts_per_tok=1,
                              tie_word_embeddings=True),
}


def make_model(name="moe_top2", dtype=torch.float32, device="cpu", seed=0) -> JambaForCausalLM:
    """A tiny model with random weights of unit-scale activations: matrices N(0, 1 / fan_in), the embedding N(0, 1),
    the router N(0, 0.5^2) (so routing depends on the input), norms and the Mamba A / D / dt as from_config sets
    them."""
    model = JambaForCausalLM.from_config(JambaConfig(**CONFIGS[name]), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                scale = 1.0 if "embed_tokens" in n else 0.5 if "router" in n else p.shape[-1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.to(dtype=dtype, device=device).eval()


def experts_of(model):
    return [m for m in model.modules() if isinstance(m, JambaExperts)]


def dequantized(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * s[..., None]


def twin_of(model_fp8, like):
    """A copy of the unquantized model `like` holding model_fp8's dequantized expert weights (in like's dtype)."""
    twin = copy.deepcopy(like)
    with torch.no_grad():
        for a, b in zip(experts_of(twin), experts_of(model_fp8)):
            a.gate_up_proj.copy_(dequantized(b.gate_up_proj, b.gate_up_proj_scale))
            a.down_proj.copy_(dequantized(b.down_proj, b.down_proj_scale))
    return twin


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(torch.uint8) if t.dtype == FP8 else t.detach().cpu()


def assert_same_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


def prompt(batch, length, vocab=101, seed=1):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- layout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_quantize_experts_layout_bytes_and_num_parameters(dtype):
    model = make_model(dtype=dtype)
    before = [(e.gate_up_proj.detach().clone(), e.down_proj.detach().clone()) for e in experts_of(model)]
    n_all, n_train = model.num_parameters(), model.num_parameters(only_trainable=True)
    n_exp = sum(gu.numel() + d.numel() for gu, d in before)
    bytes_before = sum(gu.nbytes + d.nbytes for gu, d in before)
    assert not model.experts_fp8
    assert model.quantize_experts("fp8") is model
    assert model.experts_fp8 and model.dtype == dtype
    E, H, F = 4, 64, 80
    for ex, (gu, d) in zip(experts_of(model), before):
        assert ex.is_fp8 and list(ex.parameters()) == [] and "float8_e4m3fn" in repr(ex)
        assert (ex.gate_up_proj.dtype, ex.down_proj.dtype) == (FP8, FP8)
        assert ex.gate_up_proj.shape == (E, 2 * F, H) and ex.down_proj.shape == (E, H, F)
        assert ex.gate_up_proj_scale.dtype == ex.down_proj_scale.dtype == torch.float32
        assert ex.gate_up_proj_scale.shape == (E, 2 * F) and ex.down_proj_scale.shape == (E, H)
        for q, s, w in ((ex.gate_up_proj, ex.gate_up_proj_scale, gu), (ex.down_proj, ex.down_proj_scale, d)):
            for e in range(E):                            # each expert exactly ops.quantize_fp8 of its weights
                qe, se = ops.quantize_fp8(w[e])
                assert torch.equal(bits(q[e]), bits(qe)) and torch.equal(s[e], se)
            err = (dequantized(q, s) - w.float()).abs()    # e4m3: 3 mantissa bits, subnormals below 2^-6 * scale
            assert bool((err <= w.float().abs() / 16 + s[..., None] / 512).all())
    # the experts' bytes: 1 per weight + 4 per row (scale), from 4 (fp32) or 2 (bf16) per weight
    bytes_after = sum(b.nbytes for ex in experts_of(model) for b in ex.buffers())
    assert bytes_after == n_exp + 4 * len(before) * E * (2 * F + H)
    assert bytes_after / bytes_before < (0.3 if dtype == torch.float32 else 0.55)
    # num_parameters still counts the expert weights; they are frozen buffers now
    assert model.num_parameters() == n_all
    assert model.num_parameters(only_trainable=True) == n_train - n_exp
    assert model.num_parameters(exclude_embeddings=True) == n_all - 2 * 101 * H
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.quantize_experts() is model                     # again: a no-op
    assert_same_bits(model.state_dict(), sd)


def test_quantize_on_meta_and_bad_dtype():
    with torch.device("meta"):
        model = JambaForCausalLM(JambaConfig(**CONFIGS["moe_top2"]))
    model.to(torch.bfloat16).quantize_experts(torch.float8_e4m3fn)
    for ex in experts_of(model):
        assert ex.gate_up_proj.is_meta and ex.gate_up_proj.dtype == FP8 and ex.down_proj_scale.dtype == torch.float32
    model = model.to_empty(device="cpu")
    ex = experts_of(model)[0]
    assert ex.gate_up_proj.device.type == "cpu" and ex.gate_up_proj.dtype == FP8
    assert ex.gate_up_proj_scale.dtype == torch.float32 and model.dtype == torch.bfloat16
    for bad in ("int8", "bf16", torch.bfloat16, "float8_e5m2"):
        with pytest.raises(ValueError, match="fp8"):
            model.quantize_experts(bad)
    model.init_weights(seed=3)                     # transformers' init, quantized one expert at a time
    w = dequantized(ex.gate_up_proj, ex.gate_up_proj_scale)
    assert 0.015 < w.std().item() < 0.025          # N(0, initializer_range = 0.02)


def test_to_dtype_keeps_fp8_bits():
    model = make_model().quantize_experts()
    ids = prompt(2, 9)
    with torch.no_grad():
        ref = model(ids).logits
    want = {k: v.clone() for k, v in model.state_dict().items() if "experts" in k}
    other = copy.deepcopy(model)
    for conv in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to("cpu", torch.float16),
                 lambda m: m.float(), lambda m: m.double(), lambda m: m.type(torch.bfloat16),
                 lambda m: m.to(torch.float32)):
        other = conv(other)
        assert_same_bits({k: v for k, v in other.state_dict().items() if "experts" in k}, want)
    assert other.dtype == torch.float32
    with torch.no_grad():
        b = model.to(torch.bfloat16)
        assert b is model and b.model.embed_tokens.weight.dtype == torch.bfloat16
        lb = b(ids).logits                            # bf16 activations with the same fp8 experts
    assert lb.dtype == torch.bfloat16 and rel(lb, ref) < 0.1      # bf16 rounding alone (measured 0.02-0.03)


# ---- numerics ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_dequantized_twin_and_differ_from_unquantized(name):
    base = make_model(name)
    model = copy.deepcopy(base).quantize_experts()
    twin = twin_of(model, base)
    ids = prompt(2, 11)
    with torch.no_grad():
        want, got, dq = base(ids).logits, model(ids).logits, twin(ids).logits
        err = rel(got, want)
        assert 1e-3 < err < QUANT_REL_MAX[name], f"fp8 against unquantized: relative error {err:.3e}"
        assert rel(got, dq) <= TWIN_REL
        # decode steps (2 tokens: the weight-streaming kernels) through the cache, against the twin
        c1, c2 = model(ids, use_cache=True).cache, twin(ids, use_cache=True).cache
        tok = dq[:, -1].argmax(-1)
        for _ in range(4):
            a, b = model(tok[:, None], cache=c1).logits[:, -1], twin(tok[:, None], cache=c2).logits[:, -1]
            assert rel(a, b) <= TWIN_REL
            tok = b.argmax(-1)


def test_generate_dynamic_and_static():
    model = make_model().quantize_experts()
    ids = prompt(2, 7)
    out = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    assert out.shape == (2, 13) and torch.equal(out[:, :7], ids) and int(out.max()) < 101
    static = model.generate(ids, max_new_tokens=6, eos_token_id=None, static_cache=True)
    assert torch.equal(static, out)
    sampled = model.generate([[5, 6, 7], [9]], max_new_tokens=4, do_sample=True, seed=0, top_p=0.9)
    assert sampled.shape == (2, 7)


def _block(model, i=1):
    return model.model.layers[i].feed_forward


@pytest.mark.parametrize("L", [1, 6], ids=["decode_T2", "prefill_T12"])
def test_moe_block_gradients_match_twin(L):
    """Gradients for x and the router through moe_experts_fp8 equal the twin's (weights frozen: no gradient)."""
    base = make_model()
    model = copy.deepcopy(base).quantize_experts()
    twin = twin_of(model, base)
    x = torch.randn(2, L, 64, generator=torch.Generator().manual_seed(5))
    g = torch.randn(2, L, 64, generator=torch.Generator().manual_seed(6))
    grads = []
    for m in (model, twin):
        blk = _block(m)
        xi = x.clone().requires_grad_(True)
        out, logits = blk(xi)
        ((out * g).sum() + logits.float().square().sum() * 1e-2).backward()
        grads.append((out.detach(), xi.grad, blk.router.weight.grad))
    (o1, dx1, dr1), (o2, dx2, dr2) = grads
    assert rel(o1, o2) <= TWIN_REL and rel(dx1, dx2) <= TWIN_REL and rel(dr1, dr2) <= TWIN_REL
    assert float(dx1.abs().max()) > 0
    ex = _block(model).experts
    assert all(not b.requires_grad and b.grad is None for b in ex.buffers())


def test_lora_trains_on_fp8_model():
    model = make_model().quantize_experts()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "experts" in k}
    names = add_lora(model, r=4, alpha=8)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    before = [p.detach().clone() for p in trainable]
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    ids = prompt(2, 12)
    loss = model(ids, labels=ids, output_router_logits=True).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in trainable)
    # the adapters of layer 0 (before the first MoE layer) get their gradient through the fp8 MoE, among others
    a0 = model.get_submodule(next(n for n in names if n.startswith("model.layers.0."))).lora_b
    assert float(a0.grad.abs().max()) > 0
    opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before))
    assert_same_bits({k: v for k, v in model.state_dict().items() if "experts" in k}, frozen)
    assert all(b.grad is None for ex in experts_of(model) for b in ex.buffers())


def test_autocast_training_step_fp8():
    """fp32 weights under bf16 autocast: x reaches moe_experts_fp8 in bf16, the fp8 weights are not cast."""
    model = make_model().quantize_experts().train()
    ids = prompt(2, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    r = _block(model).router.weight
    assert r.grad is not None and float(r.grad.abs().max()) > 0
    assert _block(model).experts.gate_up_proj.dtype == FP8


# ---- checkpoints ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,per_expert,dtype,spelling", [
    ("moe_top2", True, None, "fp8"),
    ("moe_top2", False, None, "float8_e4m3fn"),
    ("all_moe_top1_tied", True, torch.bfloat16, torch.float8_e4m3fn),
    ("all_moe_top1_tied", False, torch.bfloat16, "fp8"),
])
def test_from_pretrained_fp8_equals_quantize_after_load(tmp_path, monkeypatch, name, per_expert, dtype, spelling):
    make_model(name).save_pretrained(str(tmp_path), per_expert=per_expert)
    want = JambaForCausalLM.from_pretrained(str(tmp_path), dtype=dtype).quantize_experts("fp8")
    pieces = []
    quantize = ops.quantize_fp8

    def spy(w, *a, **kw):                               # the loader quantizes one expert piece at a time
        pieces.append(w.numel())
        return quantize(w, *a, **kw)

    monkeypatch.setattr(ops, "quantize_fp8", spy)
    got = JambaForCausalLM.from_pretrained(str(tmp_path), dtype=dtype, experts_dtype=spelling)
    monkeypatch.undo()
    assert got.experts_fp8 and got.dtype == (dtype or torch.float32)
    assert_same_bits(got.state_dict(), want.state_dict())
    F, H = 80, 64
    assert pieces and max(pieces) == (F * H if per_expert else 2 * F * H)
    ids = prompt(1, 5)
    with torch.no_grad():
        assert torch.equal(got(ids).logits, want(ids).logits)
    with pytest.raises(ValueError, match="experts' dtype"):
        JambaForCausalLM.from_pretrained(str(tmp_path), experts_dtype="int4")
    m = JambaModel.from_pretrained(str(tmp_path), dtype=dtype, experts_dtype="fp8")   # the bare model too
    assert_same_bits(m.state_dict(), want.model.state_dict())


def test_save_refuses_and_state_dicts_both_ways(tmp_path):
    base = make_model()
    model = copy.deepcopy(base).quantize_experts()
    with pytest.raises(ValueError, match="save the model before quantizing"):
        model.save_pretrained(str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x" / "model.safetensors")
    want = model.state_dict()
    assert {k for k in want if "experts" in k} == {f"model.layers.{i}.feed_forward.experts.{n}" for i in (1, 3) for n in
                                                   ("gate_up_proj", "down_proj", "gate_up_proj_scale",
                                                    "down_proj_scale")}
    # an unquantized state dict (fused or per-expert keys) into an fp8 model: quantized, scales filled in
    for sd in (base.state_dict(), to_per_expert_state_dict(base.state_dict())):
        other = make_model(seed=9).quantize_experts()
        other.load_state_dict(sd, strict=True)
        assert_same_bits(other.state_dict(), want)
    # an fp8 state dict into an fp8 model: copied; into an unquantized one: dequantized
    other = make_model(seed=9).quantize_experts()
    other.load_state_dict(want, strict=True)
    assert_same_bits(other.state_dict(), want)
    plain = make_model(seed=9)
    plain.load_state_dict(want, strict=True)
    for a, b in zip(experts_of(plain), experts_of(model)):
        assert torch.equal(a.gate_up_proj, dequantized(b.gate_up_proj, b.gate_up_proj_scale))
        assert torch.equal(a.down_proj, dequantized(b.down_proj, b.down_proj_scale))


def test_cli_generate_experts_fp8(tmp_path, capsys):
    from jamba_ext.__main__ import DEFAULT_CONFIG, main
    from jamba_ext.tokenizer import ByteTokenizer

    base = ["generate", "--prompt", "ab", "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]
    assert main(base + ["--experts-fp8"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("ab") and "experts float8_e4m3fn" in cap.err
    JambaForCausalLM.from_config(JambaConfig(**DEFAULT_CONFIG), seed=0).save_pretrained(str(tmp_path))
    (tmp_path / ByteTokenizer.MARKER).write_text("byte-level\n")
    assert main(base + ["--model", str(tmp_path), "--experts-fp8"]) == 0     # quantized while loading
    cap2 = capsys.readouterr()
    assert cap2.out == cap.out and "experts float8_e4m3fn" in cap2.err     # the same weights, the same tokens


def test_act_fp8_permission(capsys):
    """quantize_experts("fp8", act_fp8=True) sets every MoE layer's permission (again without it: cleared); where no
    W8A8 kernel runs (here: the CPU) the logits are those of the weight-only model, bit for bit. The CLI's --act-fp8
    needs --experts-fp8."""
    from jamba_ext.__main__ import main

    model = make_model().quantize_experts("fp8", act_fp8=True)
    flags = [m.act_fp8 for m in model.modules() if isinstance(m, JambaExperts)]
    assert flags and all(flags)
    ids = prompt(2, 11)
    with torch.no_grad():
        with_act = model(ids).logits
        model.quantize_experts("fp8")
        assert not any(m.act_fp8 for m in model.modules() if isinstance(m, JambaExperts))
        assert torch.equal(model(ids).logits, with_act)
    base = ["generate", "--prompt", "ab", "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(base + ["--act-fp8"])
    assert e.value.code == 2 and "--experts-fp8" in capsys.readouterr().err
    assert main(base + ["--experts-fp8"]) == 0
    plain = capsys.readouterr().out
    assert main(base + ["--experts-fp8", "--act-fp8"]) == 0
    assert capsys.readouterr().out == plain


# ---- CUDA ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_bf16_logits(name):
    base = make_model(name, dtype=torch.bfloat16, device="cuda")
    model = copy.deepcopy(base).quantize_experts()
    assert experts_of(model)[0].gate_up_proj.is_cuda
    twin = twin_of(model, base)
    ids = prompt(2, 24).cuda()                         # 48 tokens: the ring kernels (ops.FP8_RING_MAX_TOKENS)
    with torch.no_grad():
        want, got, dq = base(ids).logits, model(ids).logits, twin(ids).logits
        err = rel(got, want)
        assert 1e-3 < err < QUANT_REL_MAX[name], f"fp8 against unquantized bf16: relative error {err:.3e}"
        # the dequantizing path rounds each weight to bf16 as the twin does: the twin's numbers but for a few
        # roundings in other places
        old = ops.FP8_RING_MAX_TOKENS, ops.FP8_SM90_MAX_TOKENS
        try:
            ops.FP8_RING_MAX_TOKENS, ops.FP8_SM90_MAX_TOKENS = 0, 0
            got_dq_path = model(ids).logits
        finally:
            ops.FP8_RING_MAX_TOKENS, ops.FP8_SM90_MAX_TOKENS = old
        assert rel(got_dq_path, dq) <= 2e-2
        # the ring kernels use the exact fp8 weights (the scale on the fp32 sums, as the CPU op and reference.py):
        # close to the dequantizing path, up to the routing flips that those weights' bf16 rounding causes
        err2 = rel(got, got_dq_path)
        assert err2 <= RING_VS_DEQUANT_REL[name], f"ring against dequantizing path: relative error {err2:.3e}"
        c1, c2 = model(ids, use_cache=True).cache, twin(ids, use_cache=True).cache
        tok = dq[:, -1].argmax(-1)
        for _ in range(3):                              # decode steps: the fp8 weight-streaming kernels
            a, b = model(tok[:, None], cache=c1).logits[:, -1], twin(tok[:, None], cache=c2).logits[:, -1]
            assert rel(a, b) <= 2e-2
            tok = b.argmax(-1)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_graph_decode_fp8(batch):
    """generate(cuda_graph=True) captures the static decode step with fp8 experts and gives eager's tokens."""
    model = make_model(dtype=torch.bfloat16, device="cuda").quantize_experts()
    ids = prompt(batch, 9).cuda()
    eager = model.generate(ids, max_new_tokens=12, eos_token_id=None, cuda_graph=False, static_cache=True)
    graph = model.generate(ids, max_new_tokens=12, eos_token_id=None, cuda_graph=True)
    info = model._decode_graph_info             # (a failed capture warns and decodes eagerly: fail instead)
    assert info["captured"], info.get("error")
    assert torch.equal(graph, eager)
