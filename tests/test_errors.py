"""Bad inputs for every op: each raises ValueError whose message names the offending argument, before
anything is written (in-place states stay untouched), never a crash or a silently wrong result."""
import pytest
import torch

from conftest import HAS_GPU, make_A, randn
from jamba_ext import ops

B, DI, N, L, K, H = 2, 6, 4, 7, 4, 24     # distinct sizes


def valid(op, device):
    """A valid call of each op: keyword arguments that the op accepts."""
    dev = dict(device=device)
    if op == "rms_norm":
        return dict(x=randn(3, 5, H, **dev), weight=randn(H, **dev, shift=1.0), eps=1e-6)
    if op == "add_rms_norm":
        return dict(x=randn(3, H, **dev), residual=randn(3, H, **dev), weight=randn(H, **dev, shift=1.0), eps=1e-6)
    if op == "causal_conv1d":
        return dict(x=randn(B, DI, L, **dev), weight=randn(DI, K, **dev), bias=randn(DI, **dev),
                    initial_state=randn(B, DI, K - 1, **dev), silu=True, state_len=-1)
    if op == "causal_conv1d_update":
        return dict(x=randn(B, DI, **dev), conv_state=randn(B, DI, K - 1, **dev), weight=randn(DI, K, **dev),
                    bias=randn(DI, **dev), silu=True)
    if op == "selective_scan":
        return dict(u=randn(B, DI, L, **dev), delta=randn(B, DI, L, **dev), A=make_A(DI, N, device),
                    B=randn(B, N, L, **dev), C=randn(B, N, L, **dev), D=randn(DI, **dev), z=randn(B, DI, L, **dev),
                    delta_bias=randn(DI, **dev), delta_softplus=True, initial_state=randn(B, DI, N, **dev))
    if op == "selective_state_update":
        return dict(state=randn(B, DI, N, **dev), x=randn(B, DI, **dev), dt=randn(B, DI, **dev),
                    A=make_A(DI, N, device), B=randn(B, N, **dev), C=randn(B, N, **dev), D=randn(DI, **dev),
                    z=randn(B, DI, **dev), dt_bias=randn(DI, **dev), dt_softplus=True)
    raise AssertionError(op)


def strided_last(t):
    """Same values, stride 2 along the last dim (a slice of a tensor twice as wide)."""
    wide = torch.stack([t, torch.randn_like(t)], dim=-1).flatten(-2)
    return wide[..., ::2]


def not_unit(t, dim):
    """Same shape and values, but a non-unit stride along `dim`."""
    return t.movedim(dim, 0).contiguous().movedim(0, dim)


def set_(name, fn):
    def mutate(kw, device):
        kw[name] = fn(kw, device)
        return kw
    return mutate


def with_x_dtype(dtype, name, fn):
    """Casts every activation of the call to dtype, then replaces `name` by fn(kw)."""
    def mutate(kw, device):
        for k in ("x", "residual", "u", "delta", "z", "initial_state", "conv_state", "dt"):
            if k in kw and kw[k] is not None and not (k == "initial_state" and "u" in kw):
                kw[k] = kw[k].to(dtype)
        kw[name] = fn(kw, device)
        return kw
    return mutate


def resize_scan_N(n):
    def mutate(kw, device):
        kw["A"] = make_A(DI, n, device)
        kw["B"] = randn(B, n, L, device=device)
        kw["C"] = randn(B, n, L, device=device)
        kw["initial_state"] = randn(B, DI, n, device=device)
        return kw
    return mutate


def resize_ssu_N(n):
    def mutate(kw, device):
        kw["A"] = make_A(DI, n, device)
        kw["B"] = randn(B, n, device=device)
        kw["C"] = randn(B, n, device=device)
        kw["state"] = randn(B, DI, n, device=device)
        return kw
    return mutate


def width(k):
    def mutate(kw, device):
        kw["weight"] = randn(DI, k, device=device)
        return kw
    return mutate


# (op, case id, mutate(kw, device) -> kw, argument the message must name)
CASES = [
    # rms_norm
    ("rms_norm", "x_int", set_("x", lambda kw, d: kw["x"].to(torch.int32)), "x"),
    ("rms_norm", "x_f64", set_("x", lambda kw, d: kw["x"].double()), "x"),
    ("rms_norm", "x_scalar", set_("x", lambda kw, d: kw["x"][0, 0, 0]), "x"),
    ("rms_norm", "x_stride_dim", set_("x", lambda kw, d: strided_last(kw["x"])), "x"),
    ("rms_norm", "weight_size", set_("weight", lambda kw, d: randn(H + 1, device=d)), "weight"),
    ("rms_norm", "weight_rank2", set_("weight", lambda kw, d: randn(1, H, device=d)), "weight"),
    ("rms_norm", "weight_int", set_("weight", lambda kw, d: kw["weight"].to(torch.int64)), "weight"),
    ("rms_norm", "weight_f64", set_("weight", lambda kw, d: kw["weight"].double()), "weight"),
    ("rms_norm", "weight_f16_x_bf16", with_x_dtype(torch.bfloat16, "weight", lambda kw, d: kw["weight"].half()),
     "weight"),
    ("rms_norm", "weight_strided", set_("weight", lambda kw, d: strided_last(kw["weight"])), "weight"),
    ("rms_norm", "eps_negative", set_("eps", lambda kw, d: -1e-6), "eps"),
    ("rms_norm", "eps_nan", set_("eps", lambda kw, d: float("nan")), "eps"),
    # add_rms_norm
    ("add_rms_norm", "x_f64", set_("x", lambda kw, d: kw["x"].double()), "x"),
    ("add_rms_norm", "residual_shape", set_("residual", lambda kw, d: randn(4, H, device=d)), "residual"),
    ("add_rms_norm", "residual_int", set_("residual", lambda kw, d: kw["residual"].to(torch.int32)), "residual"),
    ("add_rms_norm", "residual_f16", set_("residual", lambda kw, d: kw["residual"].half()), "residual"),
    ("add_rms_norm", "residual_stride_dim", set_("residual", lambda kw, d: strided_last(kw["residual"])),
     "residual"),
    ("add_rms_norm", "weight_size", set_("weight", lambda kw, d: randn(H - 1, device=d)), "weight"),
    ("add_rms_norm", "eps_negative", set_("eps", lambda kw, d: -0.5), "eps"),
    # causal_conv1d
    ("causal_conv1d", "x_int", set_("x", lambda kw, d: kw["x"].to(torch.int32)), "x"),
    ("causal_conv1d", "x_f64", set_("x", lambda kw, d: kw["x"].double()), "x"),
    ("causal_conv1d", "x_rank2", set_("x", lambda kw, d: kw["x"][0]), "x"),
    ("causal_conv1d", "x_rank4", set_("x", lambda kw, d: kw["x"][None]), "x"),
    ("causal_conv1d", "x_stride_L", set_("x", lambda kw, d: not_unit(kw["x"], 2)), "x"),
    ("causal_conv1d", "width_5", width(5), "weight"),
    ("causal_conv1d", "width_1", width(1), "weight"),
    ("causal_conv1d", "weight_DI", set_("weight", lambda kw, d: randn(DI + 1, K, device=d)), "weight"),
    ("causal_conv1d", "weight_3d_mid2", set_("weight", lambda kw, d: randn(DI, 2, K, device=d)), "weight"),
    ("causal_conv1d", "weight_rank1", set_("weight", lambda kw, d: randn(K, device=d)), "weight"),
    ("causal_conv1d", "weight_f64", set_("weight", lambda kw, d: kw["weight"].double()), "weight"),
    ("causal_conv1d", "weight_f16_x_bf16", with_x_dtype(torch.bfloat16, "weight", lambda kw, d: kw["weight"].half()),
     "weight"),
    ("causal_conv1d", "bias_size", set_("bias", lambda kw, d: randn(DI + 2, device=d)), "bias"),
    ("causal_conv1d", "bias_rank2", set_("bias", lambda kw, d: randn(DI, 1, device=d)), "bias"),
    ("causal_conv1d", "bias_int", set_("bias", lambda kw, d: kw["bias"].to(torch.int32)), "bias"),
    ("causal_conv1d", "bias_f16_x_f32", set_("bias", lambda kw, d: kw["bias"].half()), "bias"),
    ("causal_conv1d", "initial_state_narrow", set_("initial_state", lambda kw, d: randn(B, DI, K - 2, device=d)),
     "initial_state"),
    ("causal_conv1d", "initial_state_batch", set_("initial_state", lambda kw, d: randn(B + 1, DI, K - 1, device=d)),
     "initial_state"),
    ("causal_conv1d", "initial_state_bf16", set_("initial_state", lambda kw, d: kw["initial_state"].bfloat16()),
     "initial_state"),
    ("causal_conv1d", "initial_state_rank2", set_("initial_state", lambda kw, d: kw["initial_state"][0]),
     "initial_state"),
    ("causal_conv1d", "initial_state_stride", set_("initial_state", lambda kw, d: not_unit(kw["initial_state"], 2)),
     "initial_state"),
    ("causal_conv1d", "state_len_-2", set_("state_len", lambda kw, d: -2), "state_len"),
    # causal_conv1d_update
    ("causal_conv1d_update", "x_rank1", set_("x", lambda kw, d: kw["x"][0]), "x"),
    ("causal_conv1d_update", "x_rank4", set_("x", lambda kw, d: kw["x"][:, :, None, None]), "x"),
    ("causal_conv1d_update", "x_int", set_("x", lambda kw, d: kw["x"].to(torch.int32)), "x"),
    ("causal_conv1d_update", "x_f64", set_("x", lambda kw, d: kw["x"].double()), "x"),
    ("causal_conv1d_update", "conv_state_narrow", set_("conv_state", lambda kw, d: randn(B, DI, K - 2, device=d)),
     "conv_state"),
    ("causal_conv1d_update", "conv_state_bf16", set_("conv_state", lambda kw, d: kw["conv_state"].bfloat16()),
     "conv_state"),
    ("causal_conv1d_update", "conv_state_stride", set_("conv_state", lambda kw, d: not_unit(kw["conv_state"], 2)),
     "conv_state"),
    ("causal_conv1d_update", "conv_state_DI", set_("conv_state", lambda kw, d: randn(B, DI + 1, K - 1, device=d)),
     "conv_state"),
    ("causal_conv1d_update", "conv_state_rank2", set_("conv_state", lambda kw, d: kw["conv_state"][0]),
     "conv_state"),
    ("causal_conv1d_update", "width_5", width(5), "weight"),
    ("causal_conv1d_update", "width_1", width(1), "weight"),
    ("causal_conv1d_update", "bias_size", set_("bias", lambda kw, d: randn(DI - 1, device=d)), "bias"),
    # selective_scan
    ("selective_scan", "u_int", set_("u", lambda kw, d: kw["u"].to(torch.int32)), "u"),
    ("selective_scan", "u_f64", set_("u", lambda kw, d: kw["u"].double()), "u"),
    ("selective_scan", "u_rank2", set_("u", lambda kw, d: kw["u"][0]), "u"),
    ("selective_scan", "u_stride_L", set_("u", lambda kw, d: not_unit(kw["u"], 2)), "u"),
    ("selective_scan", "delta_bf16", set_("delta", lambda kw, d: kw["delta"].bfloat16()), "delta"),
    ("selective_scan", "delta_shape", set_("delta", lambda kw, d: randn(B, DI, L + 1, device=d)), "delta"),
    ("selective_scan", "delta_stride_L", set_("delta", lambda kw, d: not_unit(kw["delta"], 2)), "delta"),
    ("selective_scan", "A_bf16", set_("A", lambda kw, d: kw["A"].bfloat16()), "A"),
    ("selective_scan", "A_f64", set_("A", lambda kw, d: kw["A"].double()), "A"),
    ("selective_scan", "A_shape", set_("A", lambda kw, d: make_A(DI + 1, N, d)), "A"),
    ("selective_scan", "A_rank1", set_("A", lambda kw, d: kw["A"][0]), "A"),
    ("selective_scan", "d_state_257", resize_scan_N(257), "A"),
    ("selective_scan", "B_shape", set_("B", lambda kw, d: randn(B, N + 1, L, device=d)), "B"),
    ("selective_scan", "B_rank4", set_("B", lambda kw, d: kw["B"][:, None]), "B"),
    ("selective_scan", "B_f16", set_("B", lambda kw, d: kw["B"].half()), "B"),
    ("selective_scan", "B_int", set_("B", lambda kw, d: kw["B"].to(torch.int32)), "B"),
    ("selective_scan", "C_shape", set_("C", lambda kw, d: randn(B, N, L - 1, device=d)), "C"),
    ("selective_scan", "D_size", set_("D", lambda kw, d: randn(DI + 1, device=d)), "D"),
    ("selective_scan", "D_bf16", set_("D", lambda kw, d: kw["D"].bfloat16()), "D"),
    ("selective_scan", "D_rank2", set_("D", lambda kw, d: kw["D"][None]), "D"),
    ("selective_scan", "delta_bias_f16", set_("delta_bias", lambda kw, d: kw["delta_bias"].half()), "delta_bias"),
    ("selective_scan", "delta_bias_size", set_("delta_bias", lambda kw, d: randn(DI - 1, device=d)), "delta_bias"),
    ("selective_scan", "z_bf16", set_("z", lambda kw, d: kw["z"].bfloat16()), "z"),
    ("selective_scan", "z_shape", set_("z", lambda kw, d: randn(B, DI, L + 2, device=d)), "z"),
    ("selective_scan", "z_stride_L", set_("z", lambda kw, d: not_unit(kw["z"], 2)), "z"),
    ("selective_scan", "initial_state_bf16", set_("initial_state", lambda kw, d: kw["initial_state"].bfloat16()),
     "initial_state"),
    ("selective_scan", "initial_state_shape", set_("initial_state", lambda kw, d: randn(B, DI, N + 1, device=d)),
     "initial_state"),
    ("selective_scan", "initial_state_stride_N",
     set_("initial_state", lambda kw, d: not_unit(kw["initial_state"], 2)), "initial_state"),
    # selective_state_update
    ("selective_state_update", "state_int", set_("state", lambda kw, d: kw["state"].to(torch.int32)), "state"),
    ("selective_state_update", "state_f64", set_("state", lambda kw, d: kw["state"].double()), "state"),
    ("selective_state_update", "state_shape", set_("state", lambda kw, d: randn(B, DI + 1, N, device=d)), "state"),
    ("selective_state_update", "state_stride_N", set_("state", lambda kw, d: not_unit(kw["state"], 2)), "state"),
    ("selective_state_update", "state_rank2", set_("state", lambda kw, d: kw["state"][0]), "state"),
    ("selective_state_update", "x_f64", set_("x", lambda kw, d: kw["x"].double()), "x"),
    ("selective_state_update", "x_rank3", set_("x", lambda kw, d: kw["x"][..., None]), "x"),
    ("selective_state_update", "x_stride_DI", set_("x", lambda kw, d: not_unit(kw["x"], 1)), "x"),
    ("selective_state_update", "dt_bf16", set_("dt", lambda kw, d: kw["dt"].bfloat16()), "dt"),
    ("selective_state_update", "dt_shape", set_("dt", lambda kw, d: randn(B + 1, DI, device=d)), "dt"),
    ("selective_state_update", "A_bf16", set_("A", lambda kw, d: kw["A"].bfloat16()), "A"),
    ("selective_state_update", "d_state_257", resize_ssu_N(257), "A"),
    ("selective_state_update", "B_shape", set_("B", lambda kw, d: randn(B, N + 2, device=d)), "B"),
    ("selective_state_update", "C_int", set_("C", lambda kw, d: kw["C"].to(torch.int64)), "C"),
    ("selective_state_update", "D_bf16", set_("D", lambda kw, d: kw["D"].bfloat16()), "D"),
    ("selective_state_update", "dt_bias_size", set_("dt_bias", lambda kw, d: randn(DI + 3, device=d)), "dt_bias"),
    ("selective_state_update", "z_stride_DI", set_("z", lambda kw, d: not_unit(kw["z"], 1)), "z"),
    # scalar arguments of the wrong type: float("a") fails without naming the op, bool("no") is True,
    # int(2.5) truncates; each must be a named ValueError instead
    ("rms_norm", "eps_str", set_("eps", lambda kw, d: "1e-6"), "eps"),
    ("add_rms_norm", "eps_bool", set_("eps", lambda kw, d: True), "eps"),
    ("causal_conv1d", "silu_str", set_("silu", lambda kw, d: "no"), "silu"),
    ("causal_conv1d", "state_len_float", set_("state_len", lambda kw, d: 2.5), "state_len"),
    ("causal_conv1d_update", "silu_2", set_("silu", lambda kw, d: 2), "silu"),
    ("selective_scan", "delta_softplus_str", set_("delta_softplus", lambda kw, d: "False"), "delta_softplus"),
    ("selective_scan", "delta_softplus_none", set_("delta_softplus", lambda kw, d: None), "delta_softplus"),
    ("selective_state_update", "dt_softplus_str", set_("dt_softplus", lambda kw, d: "yes"), "dt_softplus"),
]

OPS = ["rms_norm", "add_rms_norm", "causal_conv1d", "causal_conv1d_update", "selective_scan",
       "selective_state_update"]


@pytest.mark.parametrize("op", OPS)
def test_valid_baseline_runs(device, op):
    """The unmodified argument sets are valid (so each error case fails for its one change)."""
    getattr(ops, op)(**valid(op, device))


@pytest.mark.parametrize("op,case,mutate,name", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_raises_value_error_naming_argument(device, op, case, mutate, name):
    kw = mutate(valid(op, device), device)
    before = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=rf"{op}: {name}\b"):
        getattr(ops, op)(**kw)
    for k, v in before.items():   # nothing was written, in-place states included
        assert torch.equal(kw[k], v), f"{k} was modified by a call that failed"


def _other_devices(device):
    if device.type == "cuda":
        return ["cpu"]
    return ["meta"] + (["cuda"] if HAS_GPU else [])


# argument moved to another device, per op (one that is not the op's first tensor argument)
MOVED = [("rms_norm", "weight"), ("add_rms_norm", "residual"), ("causal_conv1d", "weight"),
         ("causal_conv1d", "initial_state"), ("causal_conv1d_update", "conv_state"), ("selective_scan", "B"),
         ("selective_scan", "initial_state"), ("selective_state_update", "x"), ("selective_state_update", "A")]


@pytest.mark.parametrize("op,name", MOVED, ids=[f"{o}-{n}" for o, n in MOVED])
def test_mixed_devices_raise_value_error(device, op, name):
    """One argument on another device (meta, or cpu/cuda): a ValueError naming it, never a result computed
    from the wrong memory (a meta argument must not route a CPU call to the fake kernel)."""
    for other in _other_devices(device):
        kw = valid(op, device)
        kw[name] = kw[name].to(other)
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            getattr(ops, op)(**kw)


@pytest.mark.parametrize("op", OPS)
def test_all_meta_runs_fake(op):
    """Every tensor on meta: the fake kernel gives outputs with the right shapes (no native call)."""
    kw = valid(op, torch.device("meta"))
    ref = valid(op, torch.device("cpu"))
    got = getattr(ops, op)(**kw)
    want = getattr(ops, op)(**ref)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert g.device.type == "meta" and g.shape == w.shape and g.dtype == w.dtype


def test_cuda_tensor_without_cuda_kernels_names_the_device(monkeypatch):
    """A build without the CUDA kernels says so, and names the device, for a GPU tensor (no GPU needed: the check
    runs before any tensor is touched)."""
    monkeypatch.setattr(ops._C, "has_cuda", lambda: False)
    with pytest.raises(RuntimeError, match=r"jamba\.rms_norm: jamba_ext was built without CUDA kernels.*on cuda:1$"):
        ops._call("rms_norm", torch.device("cuda", 1), "rms_norm", [])


@pytest.mark.parametrize("op", ["selective_scan", "selective_state_update"])
@pytest.mark.parametrize("arg", ["B", "C", "state"])
def test_d_state_mismatch_names_A(device, op, arg):
    """B, C and the states take their d_state from A: a mismatch says so (naming both), so that a wrong A does not
    read as a wrong B (the message once asked for B of shape (1, 5, 5) when A had one column too many)."""
    kw = valid(op, device)
    name = {"state": "state" if op == "selective_state_update" else "initial_state"}.get(arg, arg)
    t = kw[name]
    kw[name] = torch.cat([t, t.narrow(-1 if name.endswith("state") else 1, 0, 1)],
                         dim=-1 if name.endswith("state") else 1)
    before = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=rf"jamba\.{op}: {name} has d_state {N + 1} \(its dim \d\) but A has {N} "):
        getattr(ops, op)(**kw)
    assert all(torch.equal(kw[k], v) for k, v in before.items() if k != name)   # nothing written


def test_in_place_states_must_not_overlap(device):
    """A state written in place may not share memory with itself (an expanded or overlapping view: its rows would
    overwrite each other, a silently wrong result before session 61) nor with another operand (an x inside the state,
    once taken by the CPU loop, came out right only for the state's last column); the states are left untouched."""
    dev = dict(device=device)
    st, w, x = randn(B, DI, K - 1, **dev), randn(DI, K, **dev), randn(B, DI, **dev)
    flat = randn(B, DI * (K - 1) + 1, **dev)
    ssu = valid("selective_state_update", device)
    cases = [
        (lambda: ops.causal_conv1d_update(x, st[:1].expand(B, DI, K - 1), w), "conv_state is written in place, so"),
        (lambda: ops.causal_conv1d_update(st[:, :, -1], st, w), "x must not overlap conv_state"),
        (lambda: ops.causal_conv1d_update(flat[:, 1:DI + 1], flat[:, :-1].view(B, DI, K - 1), w),
         "x must not overlap conv_state"),
        (lambda: ops.causal_conv1d_update(x, st, st.view(-1)[:DI * K].view(DI, K)),
         "weight must not overlap conv_state"),
        (lambda: ops.selective_state_update(**{**ssu, "state": ssu["state"][:1].expand(B, DI, N)}),
         "state is written in place, so"),
        (lambda: ops.selective_state_update(**{**ssu, "x": ssu["state"].view(B, -1)[:, :DI]}),
         "x must not overlap state"),
        (lambda: ops.selective_state_update(**{**ssu, "B": ssu["state"][:, 0, :]}), "B must not overlap state"),
    ]
    before = [st.clone(), ssu["state"].clone()]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    assert torch.equal(st, before[0]) and torch.equal(ssu["state"], before[1])
    ops.causal_conv1d_update(x, st.clone(), w)                          # apart: runs
    ops.selective_state_update(**{**ssu, "state": ssu["state"].clone()})


def test_shape_wildcards_print_as_star(device):
    """An expected shape's free sizes print as *, not -1 (gemv's weight: (*, K))."""
    with pytest.raises(ValueError, match=r"jamba\.gemv: weight must have shape \(\*, 8\), got \(3, 9\)"):
        ops.gemv(randn(2, 8, device=device), randn(3, 9, device=device))


def test_scalar_arguments_of_other_ops(device):
    """The scalar arguments of the ops outside CASES: a wrong type is a ValueError naming the op and the
    argument; numpy scalars of the right kind are accepted."""
    import numpy as np
    x = randn(3, H, device=device)
    w = randn(H, device=device, shift=1.0)
    ids = torch.zeros(3, 2, dtype=torch.int32, device=device)
    logits = randn(4, 5, device=device)
    target = torch.zeros(4, dtype=torch.int64, device=device)
    bad = [("rms_norm_segments", "a split point", lambda: ops.rms_norm_segments(x, w, [4.5])),
           ("rms_norm_segments", "eps", lambda: ops.rms_norm_segments(x, w, [4], eps=None)),
           ("moe_route", "top_k", lambda: ops.moe_route(logits, 2.0)),
           ("moe_permute", "num_experts", lambda: ops.moe_permute(ids, 4.0)),
           ("cross_entropy", "ignore_index", lambda: ops.cross_entropy(logits, target, ignore_index="-100"))]
    for op, name, call in bad:
        with pytest.raises(ValueError, match=rf"jamba\.{op}: {name} must be"):
            call()
    # numpy scalars are numbers like Python's: accepted, same result
    ref = ops.rms_norm(x, w, 1e-5)
    assert torch.equal(ops.rms_norm(x, w, np.float32(1e-5)), ops.rms_norm(x, w, float(np.float32(1e-5))))
    assert ref.shape == x.shape
    kw = valid("selective_scan", device)
    out_np = ops.selective_scan(**dict(kw, delta_softplus=np.bool_(True)))[0]
    assert torch.equal(out_np, ops.selective_scan(**kw)[0])
    offsets, _ = ops.moe_permute(ids, np.int64(4))
    assert offsets.shape == (5,)
