"""torch custom ops of namespace `jamba`, backed by the native core jamba_ext._C.

The only module that touches _C. Each op validates what the core cannot see (devices, ranks needed
to allocate outputs), allocates outputs with torch (`_alloc`, NaN-poisoned under tests), and calls the
core on the tensors' device and on torch's current CUDA stream. The core checks shapes, dtypes and
strides again and its message is raised unchanged (ValueError naming the argument).

Ops (shapes in the letters of csrc/jamba.h):
  rms_norm(x (..., D), weight (D,), eps) -> (..., D)
  add_rms_norm(x, residual, weight, eps) -> (normed, x + residual)
  rms_norm_segments(x (..., D), weight (D,), splits, eps) -> each segment of the last dim normalised on its own
  causal_conv1d(x (B, DI, L), weight (DI, K) | (DI, 1, K), bias?, initial_state? (B, DI, S>=K-1),
                silu, state_len) -> (out (B, DI, L), final_state (B, DI, state_len))
  causal_conv1d_update(x (B, DI) | (B, DI, L), conv_state (B, DI, S) [mutated], weight, bias?, silu) -> out
  selective_scan(u, delta (B, DI, L), A (DI, N) f32, B, C (B, N, L), D? (DI,) f32, z? (B, DI, L),
                 delta_bias? (DI,) f32, delta_softplus, initial_state? (B, DI, N) f32)
                 -> (out (B, DI, L), last_state (B, DI, N) f32)
  selective_state_update(state (B, DI, N) [mutated], x, dt (B, DI), A, B, C (B, N), D?, z?, dt_bias?,
                         dt_softplus) -> out (B, DI)
  mamba_inner_step(x, z (B, DI), conv_state [mutated], conv weights, x_proj / norm / dt_proj weights, A, D, dt_bias,
                   ssm_state [mutated], dt_rank, eps, work?) -> out (B, DI): a Mamba decode step between in_proj
                   and out_proj (one CUDA kernel with `work`)
  moe_route / moe_permute / moe_experts / silu_mul / moe_combine: see the MoE section below.
  selective_scan_bwd(forward's inputs, dout, dlast_state?) -> the gradients of selective_scan (what its autograd
                 runs; on CUDA for d_state <= 32, else the reference's autograd)
The ops that mutate a state in place (`*_update`) are inference-only (no autograd). selective_scan's autograd runs
selective_scan_bwd; moe_experts' eager backward runs the routed rows with torch GEMMs (`_moe_sparse_grads`); the
other differentiable ops have an autograd formula that differentiates `reference.py` (correct, not fast) until
native backward kernels exist. Each op is registered once as torch.ops.jamba.<name> (what opcheck, torch.compile
and autograd see); the module-level functions here run the same implementation and skip the dispatcher in plain
eager inference (see "eager fast path" at the end of this file).
"""
import numbers
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

# Our OpenMP runtime shares the cores with torch's thread pool: threads that spin after a parallel
# region starve the other pool (seen: a CPU decode step 100x slower). Let ours sleep instead; an
# explicit OMP_WAIT_POLICY from the user wins. Must be set before _C (and its libgomp) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _C, reference  # noqa: E402

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3,
               torch.int32: 4, torch.int64: 5, torch.bool: 6, torch.uint8: 6}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_poison = os.environ.get("JAMBA_EXT_POISON", "0") == "1"


def set_poison(on: bool) -> None:
    """Tests: fill every output the ops allocate with NaN (ints with -1), so an unwritten element shows."""
    global _poison
    _poison = bool(on)


def has_cuda_kernels() -> bool:
    return bool(_C.has_cuda())


def cuda_build_note() -> str:
    """Why this build has no CUDA kernels, as its build recorded it ("no CUDA toolkit (nvcc) was found at build time",
    "JAMBA_EXT_CUDA=0 at build time", or the nvcc release and the kernels it failed on); "" when it has them."""
    getter = getattr(_C, "cuda_note", None)
    return getter() if getter else ""


def _archs_compiled_in() -> str:
    """The build's architecture list as setup.py compiled it in: "80;90", "80+ptx" (JAMBA_EXT_PTX=1), "" (none)."""
    getter = getattr(_C, "cuda_archs", None)
    return getter() if getter else ""


def cuda_archs() -> List[int]:
    """The CUDA architectures the kernels were compiled for, e.g. [80, 90] (JAMBA_EXT_ARCHS at build time);
    [] without CUDA kernels. Whether as machine code or PTX: cuda_ptx()."""
    return [int("".join(ch for ch in a if ch.isdigit())) for a in _archs_compiled_in().split(";") if a]


def cuda_ptx() -> bool:
    """Whether the build embeds PTX instead of machine code (JAMBA_EXT_PTX=1 at build time: the driver compiles it
    for the GPU at first use)."""
    return "ptx" in _archs_compiled_in()


def cuda_arch_runs(capability: Tuple[int, int]) -> bool:
    """Whether the compiled kernels run on a GPU of this compute capability (major, minor): machine code for sm_XY
    runs on sm_XZ with Z >= Y, never on another major; PTX (JAMBA_EXT_PTX=1 builds) for compute_XY runs on any GPU
    of capability XY or newer."""
    major, minor = capability
    if cuda_ptx():
        return any(a <= 10 * major + minor for a in cuda_archs())
    return any(a // 10 == major and a % 10 <= minor for a in cuda_archs())


def _alloc(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The one allocation helper for op outputs and states."""
    if _poison:
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(tuple(shape), fill, dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"jamba.{op}: {msg}")


def _float(op: str, name: str, v) -> float:
    """A float argument, or an error naming the op (float("a") would not, and float(True) would pass)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        _fail(op, f"{name} must be a number, got {type(v).__name__} {v!r}")
    return float(v)


def _int(op: str, name: str, v) -> int:
    """An integer argument, or an error naming the op (int(2.7) would truncate silently)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        _fail(op, f"{name} must be an integer, got {type(v).__name__} {v!r}")
    return int(v)


def _flag(op: str, name: str, v) -> bool:
    """A bool argument (or 0 / 1), or an error naming the op: bool("no") is True."""
    if type(v).__module__ == "numpy" and hasattr(v, "item"):  # numpy's bool / integer scalars
        v = v.item()
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(v)
    _fail(op, f"{name} must be True or False, got {type(v).__name__} {v!r}")


def _desc(op: str, name: str, t: Optional[Tensor]):
    if t is None:
        return None
    code = _DTYPE_CODE.get(t.dtype)
    if code is None:
        _fail(op, f"{name} has unsupported dtype {t.dtype}")
    return (t.data_ptr(), code, tuple(t.shape), tuple(t.stride()))


def _check_args(op: str, ref_name: str, ref: Tensor, ranks: dict, **tensors: Optional[Tensor]) -> None:
    """Every given tensor is a Tensor on ref's device with the rank in `ranks` (when listed)."""
    for name, t in [(ref_name, ref)] + list(tensors.items()):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != ref.device:
            _fail(op, f"{name} is on {t.device} but {ref_name} is on {ref.device}; all tensors must be on one device")
        want = ranks.get(name)
        if want is not None and t.dim() not in (want if isinstance(want, tuple) else (want,)):
            _fail(op, f"{name} must have {want} dimensions, got {t.dim()} (shape {tuple(t.shape)})")


def _fake_devices(op: str, **tensors: Optional[Tensor]) -> None:
    """Fake kernels run when any argument is on meta: refuse a mix of devices there too (a meta argument
    among CPU tensors must raise, not return a fake result)."""
    devs = {name: t.device for name, t in tensors.items() if isinstance(t, Tensor)}
    if len(set(devs.values())) > 1:
        first = next(iter(devs))
        for name, d in devs.items():
            if d != devs[first]:
                _fail(op, f"{name} is on {d} but {first} is on {devs[first]}; all tensors must be on one device")


def _raw_stream(idx: int) -> int:
    """cudaStream_t (as an int) of torch's current stream on device idx. The private accessor costs well under
    a microsecond, the public torch.cuda.current_stream() several: it matters for launch-bound decode steps."""
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return get(idx) if get is not None else torch.cuda.current_stream(idx).cuda_stream


def _call(fn_name: str, device: torch.device, op: str, named: List[Tuple[str, Optional[Tensor]]], *scalars):
    if device.type == "cuda":
        if not _C.has_cuda():
            why = cuda_build_note()
            raise RuntimeError(f"jamba.{op}: jamba_ext was built without CUDA kernels{' (' + why + ')' if why else ''}"
                               f"; reinstall with nvcc available (JAMBA_EXT_CUDA=1) to run on {device}")
        idx = device.index if device.index is not None else torch.cuda.current_device()
        backend, stream = 1, _raw_stream(idx)
    elif device.type == "cpu":
        backend, idx, stream = 0, 0, 0
    else:
        raise ValueError(f"jamba.{op}: tensors on {device} are not supported (cpu or cuda)")
    descs = [_desc(op, n, t) for n, t in named]
    getattr(_C, fn_name)(backend, idx, stream, *descs, *scalars)


# ---- autograd through the reference -------------------------------------------------------------------
def _register_reference_autograd(opname: str, ref_fn, n_args: int, tensor_args: Sequence[int]):
    """Registers a backward for torch.ops.jamba.<opname> that differentiates reference.<fn> (fp32 compute
    for low-precision inputs). tensor_args: positions of the (optional) tensor inputs."""
    setup_context, backward = _reference_backward(ref_fn, n_args, tensor_args)
    torch.library.register_autograd(f"jamba::{opname}", backward, setup_context=setup_context)


def _reference_backward(ref_fn, n_args: int, tensor_args: Sequence[int]):
    """(setup_context, backward) of an autograd formula that differentiates ref_fn (see above)."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*[inputs[i] for i in tensor_args])
        ctx.others = {i: inputs[i] for i in range(n_args) if i not in tensor_args}

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        args, leaves = [None] * n_args, []
        for i, t in zip(tensor_args, saved):
            if t is not None and t.dtype.is_floating_point:
                up = t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                up.requires_grad_(ctx.needs_input_grad[i])
                t = up
            args[i] = t
            if t is not None and t.requires_grad:
                leaves.append((i, t))
        for i, v in ctx.others.items():
            args[i] = v
        result = [None] * n_args
        if not leaves:
            return tuple(result)
        with torch.enable_grad():
            outs = ref_fn(*args)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            gi = torch.autograd.grad([o for o, _ in pairs], [t for _, t in leaves],
                                     [g.to(o.dtype) for o, g in pairs], allow_unused=True)
        for (i, _), g in zip(leaves, gi):
            orig = saved[list(tensor_args).index(i)]
            result[i] = None if g is None else g.to(orig.dtype)
        return tuple(result)

    return setup_context, backward


# ---- rms_norm / add_rms_norm ------------------------------------------------------------------------------
def _rows(op: str, name: str, t: Tensor) -> Tensor:
    """(..., D) -> (rows, D) view; a view that cannot be flattened is copied (visible, on purpose)."""
    if t.dim() < 1:
        _fail(op, f"{name} must have at least 1 dimension, got a scalar")
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1]) if t.dim() > 0 else t
    except RuntimeError:
        return t.reshape(-1, t.shape[-1])  # non-flattenable strides: one copy


@torch.library.custom_op("jamba::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dim (HF JambaRMSNorm numerics). x: (..., D); weight: (D,). Returns x's dtype."""
    _check_args("rms_norm", "x", x, {"weight": 1}, weight=weight)
    x2 = _rows("rms_norm", "x", x)
    out = _alloc(x2.shape, x.dtype, x.device)
    _call("rms_norm", x.device, "rms_norm",
          [("out", out), ("x", x2), ("residual", None), ("residual_out", None), ("weight", weight)],
          _float("rms_norm", "eps", eps))
    return out.view(x.shape)


@rms_norm.register_fake
def _(x, weight, eps=1e-6):
    _fake_devices("rms_norm", x=x, weight=weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("jamba::add_rms_norm", mutates_args=())
def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """s = x + residual (rounded to x's dtype); returns (rms_norm(s), s). x, residual: (..., D)."""
    _check_args("add_rms_norm", "x", x, {"weight": 1}, residual=residual, weight=weight)
    if residual.shape != x.shape:
        _fail("add_rms_norm", f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    x2, r2 = _rows("add_rms_norm", "x", x), _rows("add_rms_norm", "residual", residual)
    out = _alloc(x2.shape, x.dtype, x.device)
    res_out = _alloc(x2.shape, x.dtype, x.device)
    _call("rms_norm", x.device, "add_rms_norm",
          [("out", out), ("x", x2), ("residual", r2), ("residual_out", res_out), ("weight", weight)],
          _float("add_rms_norm", "eps", eps))
    return out.view(x.shape), res_out.view(x.shape)


@add_rms_norm.register_fake
def _(x, residual, weight, eps=1e-6):
    _fake_devices("add_rms_norm", x=x, residual=residual, weight=weight)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@torch.library.custom_op("jamba::rms_norm_segments", mutates_args=())
def rms_norm_segments(x: Tensor, weight: Tensor, splits: List[int], eps: float = 1e-6) -> Tensor:
    """RMSNorm of each segment of the last dim on its own (HF JambaRMSNorm numerics per segment): the last dim
    D is cut at the increasing split points (at most 3, inside (0, D)); weight (D,) = the segments' weights
    concatenated. One launch for Mamba's dt / B / C norms. x: (..., D). Returns x's dtype, x's shape."""
    op = "rms_norm_segments"
    _check_args(op, "x", x, {"weight": 1}, weight=weight)
    x2 = _rows(op, "x", x)
    out = _alloc(x2.shape, x.dtype, x.device)
    _call(op, x.device, op, [("out", out), ("x", x2), ("weight", weight)], _float(op, "eps", eps),
          *_segment_ends(op, splits, x.shape[-1]))
    return out.view(x.shape)


def _segment_ends(op: str, splits: Sequence[int], D: int) -> List[int]:
    """The 4 segment-end scalars of the C calls: the split points, then D, then zeros (the C side checks order)."""
    if len(splits) > 3:
        _fail(op, f"at most 3 split points (4 segments), got {list(splits)}")
    ends = [_int(op, "a split point", v) for v in splits] + [int(D)]
    if any(e <= 0 for e in ends[:-1]):
        _fail(op, f"split points must be increasing and inside (0, {D}), got {list(splits)}")
    return ends + [0] * (4 - len(ends))


@rms_norm_segments.register_fake
def _(x, weight, splits, eps=1e-6):
    _fake_devices("rms_norm_segments", x=x, weight=weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("jamba::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(x: Tensor, weight: Tensor, dy: Tensor, splits: List[int], eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Gradients of rms_norm (splits []) and rms_norm_segments (csrc/jamba.h rms_norm_bwd), the forward's roundings
    passed straight through: dy (..., D) in x's dtype. Returns (dx (..., D) x's dtype, dweight (D,) f32, a fixed-order
    sum over the rows: bit-identical run to run). add_rms_norm's gradients are this at its sum s."""
    op = "rms_norm_bwd"
    _check_args(op, "x", x, {"weight": 1}, weight=weight, dy=dy)
    if tuple(dy.shape) != tuple(x.shape):
        _fail(op, f"dy must have the shape of x {tuple(x.shape)}, got {tuple(dy.shape)}")
    if dy.dtype != x.dtype:
        _fail(op, f"dy must have x's dtype {x.dtype}, got {dy.dtype}")
    if x.shape[-1] == 0 and not splits:   # zero-width rows (rms_norm's forward takes them): nothing to differentiate
        return torch.zeros_like(x), torch.zeros(0, dtype=torch.float32, device=x.device)
    ends = _segment_ends(op, splits, x.shape[-1])
    x2 = _rows(op, "x", x)
    if dy.dim() and dy.stride(-1) != 1:  # e.g. an expanded gradient (strides 0)
        dy = dy.contiguous()
    d2 = _rows(op, "dy", dy)
    dx = _alloc(x2.shape, x.dtype, x.device)
    dw = _alloc((x2.shape[1],), torch.float32, x.device)
    ws = None
    if x.device.type == "cuda":
        ws = torch.empty(max(_C.rms_norm_bwd_ws_elems(x2.shape[0], x2.shape[1]), 1), dtype=torch.float32,
                         device=x.device)
    _call(op, x.device, op, [("dx", dx), ("dweight", dw), ("x", x2), ("weight", weight), ("dy", d2), ("ws", ws)],
          _float(op, "eps", eps), *ends)
    return dx.view(x.shape), dw


@rms_norm_bwd.register_fake
def _(x, weight, dy, splits, eps=1e-6):
    _fake_devices("rms_norm_bwd", x=x, weight=weight, dy=dy)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[-1],),
                                                                                 dtype=torch.float32)


# ---- causal_conv1d --------------------------------------------------------------------------------------
def _conv_weight(op: str, weight: Tensor) -> Tensor:
    if weight.dim() == 3 and weight.shape[1] == 1:
        return weight[:, 0, :]
    if weight.dim() != 2:
        _fail(op, f"weight must have shape (d_inner, width) or (d_inner, 1, width), got {tuple(weight.shape)}")
    return weight


@torch.library.custom_op("jamba::causal_conv1d", mutates_args=())
def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  initial_state: Optional[Tensor] = None, silu: bool = True,
                  state_len: int = -1) -> Tuple[Tensor, Tensor]:
    """Depthwise causal conv over time. x: (B, DI, L), unit stride along L; weight (DI, K) or (DI, 1, K),
    K in 2..4; bias (DI,); initial_state (B, DI, S_in >= K-1). Returns (out (B, DI, L),
    final_state (B, DI, state_len)): the last state_len inputs (state_len -1 means K-1, 0 none)."""
    op = "causal_conv1d"
    _check_args(op, "x", x, {"x": 3, "bias": 1, "initial_state": 3},
                weight=weight, bias=bias, initial_state=initial_state)
    w = _conv_weight(op, weight)
    K = w.shape[1]
    state_len = _int(op, "state_len", state_len)
    if state_len < -1:
        _fail(op, f"state_len must be -1 (width - 1), 0 (no final state) or a positive length, got {state_len}")
    S = K - 1 if state_len < 0 else state_len
    out = _alloc(x.shape, x.dtype, x.device)
    final = _alloc((x.shape[0], x.shape[1], S), x.dtype, x.device)
    _call(op, x.device, op, [("out", out), ("x", x), ("weight", w), ("bias", bias),
                             ("initial_state", initial_state), ("final_state", final if S > 0 else None)],
          _flag(op, "silu", silu))
    return out, final


@causal_conv1d.register_fake
def _(x, weight, bias=None, initial_state=None, silu=True, state_len=-1):
    _fake_devices("causal_conv1d", x=x, weight=weight, bias=bias, initial_state=initial_state)
    K = weight.shape[-1]
    S = K - 1 if state_len < 0 else state_len
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[0], x.shape[1], S))


@torch.library.custom_op("jamba::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
                      dout: Tensor, silu: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of causal_conv1d's out (csrc/jamba.h causal_conv1d_bwd), the forward recomputed in fp32: dout
    (B, DI, L) in x's dtype. Returns (dx (B, DI, L) x's dtype, dweight (DI, K) f32, dbias (DI,) f32 (what a bias would
    get, also when absent), dinitial_state (B, DI, S_in) x's dtype, or an empty tensor without initial_state).
    dweight and dbias are fixed-order sums: bit-identical run to run. The final state's gradient is not an input: it
    is a copy of entries of concat(initial_state, x) (causal_conv1d's autograd adds it)."""
    op = "causal_conv1d_bwd"
    _check_args(op, "x", x, {"x": 3, "bias": 1, "initial_state": 3, "dout": 3},
                weight=weight, bias=bias, initial_state=initial_state, dout=dout)
    w = _conv_weight(op, weight)
    if dout.dtype != x.dtype:
        _fail(op, f"dout must have x's dtype {x.dtype}, got {dout.dtype}")
    if dout.dim() == 3 and dout.stride(-1) != 1:  # e.g. an expanded gradient (strides 0)
        dout = dout.contiguous()
    Bsz, DI, L = x.shape
    f32 = torch.float32
    dx = _alloc(x.shape, x.dtype, x.device)
    dw, db = _alloc(tuple(w.shape), f32, x.device), _alloc((DI,), f32, x.device)
    dinit = _alloc(tuple(initial_state.shape), x.dtype, x.device) if initial_state is not None else x.new_empty(0)
    ws = None
    if x.device.type == "cuda":
        ws = torch.empty(max(_C.causal_conv1d_bwd_ws_elems(Bsz, DI, L), 1), dtype=f32, device=x.device)
    _call(op, x.device, op, [("dx", dx), ("dinitial_state", dinit if initial_state is not None else None),
                             ("dweight", dw), ("dbias", db), ("x", x), ("weight", w), ("bias", bias),
                             ("initial_state", initial_state), ("dout", dout), ("ws", ws)], _flag(op, "silu", silu))
    return dx, dw, db, dinit


@causal_conv1d_bwd.register_fake
def _(x, weight, bias, initial_state, dout, silu=True):
    _fake_devices("causal_conv1d_bwd", x=x, weight=weight, bias=bias, initial_state=initial_state, dout=dout)
    f32 = torch.float32
    return (x.new_empty(x.shape), x.new_empty((weight.shape[0], weight.shape[-1]), dtype=f32),
            x.new_empty((weight.shape[0],), dtype=f32),
            x.new_empty(initial_state.shape) if initial_state is not None else x.new_empty(0))


@torch.library.custom_op("jamba::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                         silu: bool = True) -> Tensor:
    """Decode step(s) of causal_conv1d (inference-only). x: (B, DI) or (B, DI, L); conv_state:
    (B, DI, S >= K-1), updated in place to the last S inputs (so it may share memory with no other argument, nor
    with itself: an expanded view is refused). Returns out shaped like x."""
    op = "causal_conv1d_update"
    _check_args(op, "x", x, {"x": (2, 3), "conv_state": 3, "bias": 1},
                conv_state=conv_state, weight=weight, bias=bias)
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    out = _alloc(x3.shape, x.dtype, x.device)
    _call(op, x.device, op, [("out", out), ("x", x3), ("conv_state", conv_state),
                             ("weight", _conv_weight(op, weight)), ("bias", bias)], _flag(op, "silu", silu))
    return out.view(x.shape)


@causal_conv1d_update.register_fake
def _(x, conv_state, weight, bias=None, silu=True):
    _fake_devices("causal_conv1d_update", x=x, conv_state=conv_state, weight=weight, bias=bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- selective_scan ------------------------------------------------------------------------------------
@torch.library.custom_op("jamba::selective_scan", mutates_args=())
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False,
                   initial_state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Mamba-1 selective scan (see reference.selective_scan). u, delta, z: (B, DI, L), unit stride along L;
    A (DI, N) f32; B, C (B, N, L) any strides; D, delta_bias (DI,) f32; initial_state (B, DI, N) f32.
    Returns (out (B, DI, L) in u's dtype, last_state (B, DI, N) f32)."""
    op = "selective_scan"
    _check_args(op, "u", u, {"u": 3, "A": 2, "B": 3, "C": 3, "D": 1, "z": 3, "delta_bias": 1,
                             "initial_state": 3},
                delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    out = _alloc(u.shape, u.dtype, u.device)
    last = _alloc((u.shape[0], u.shape[1], A.shape[1]), torch.float32, u.device)
    _call(op, u.device, op, [("out", out), ("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                             ("z", z), ("delta_bias", delta_bias), ("initial_state", initial_state),
                             ("last_state", last)], _flag(op, "delta_softplus", delta_softplus))
    return out, last


@selective_scan.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    _fake_devices("selective_scan", u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                  initial_state=initial_state)
    return (torch.empty_like(u, memory_format=torch.contiguous_format),
            u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32))


@torch.library.custom_op("jamba::selective_state_update", mutates_args=("state",))
def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                           dt_bias: Optional[Tensor] = None, dt_softplus: bool = False) -> Tensor:
    """One decode step of the scan (inference-only). state (B, DI, N) f32|bf16|f16, updated in place (sharing memory
    with no other argument nor with itself); x, dt, z (B, DI) unit stride along DI; A (DI, N) f32; B, C (B, N); D,
    dt_bias (DI,) f32.
    Returns out (B, DI) in x's dtype."""
    op = "selective_state_update"
    _check_args(op, "state", state, {"state": 3, "x": 2, "dt": 2, "A": 2, "B": 2, "C": 2, "D": 1, "z": 2,
                                     "dt_bias": 1},
                x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    out = _alloc(x.shape, x.dtype, x.device)
    _call(op, x.device, op, [("out", out), ("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B),
                             ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias)], _flag(op, "dt_softplus", dt_softplus))
    return out


@selective_state_update.register_fake
def _(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    _fake_devices("selective_state_update", state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- mamba_inner_step (a Mamba layer's decode step between in_proj and out_proj) -------------------------------
def mamba_inner_step_workspace(d_inner: int, batch: int, x_proj_out: int, device) -> Tensor:
    """The CUDA workspace of mamba_inner_step (int64, zeroed): it holds a grid barrier's counters, so keep it
    between calls (one per layer, or per stream that runs the layer) and do not share it between concurrent calls."""
    n = _C.mamba_inner_step_work_elems(int(d_inner), int(batch), int(x_proj_out))
    return torch.zeros(n, dtype=torch.int64, device=device)


@torch.library.custom_op("jamba::mamba_inner_step", mutates_args=("conv_state", "ssm_state", "work"))
def mamba_inner_step(x: Tensor, z: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                     xproj_weight: Tensor, norm_weight: Tensor, dtproj_weight: Tensor, A: Tensor,
                     D: Optional[Tensor], dt_bias: Optional[Tensor], ssm_state: Tensor, dt_rank: int,
                     eps: float = 1e-6, work: Optional[Tensor] = None) -> Tensor:
    """A Mamba layer's decode step between in_proj and out_proj, with Jamba's dt / B / C norms (inference-only):
    causal_conv1d_update -> x_proj -> rms_norm_segments -> dt_proj -> selective_state_update (softplus, dt_bias),
    exactly that chain's math and roundings (csrc/jamba.h). x, z: (B, DI), unit stride along DI (the halves of
    in_proj's output); conv_state (B, DI, S) and ssm_state (B, DI, N) f32 are updated in place; conv_weight (DI, K)
    or (DI, 1, K); xproj_weight (R + 2N, DI); norm_weight (R + 2N,) (the three norms' weights concatenated);
    dtproj_weight (DI, R); A (DI, N), D, dt_bias (DI,) f32. work: mamba_inner_step_workspace(...) on CUDA to run
    the step as one kernel (where its limits hold; see csrc/cuda/mamba_step.cu), None: five launches.
    Returns out (B, DI) in x's dtype."""
    op = "mamba_inner_step"
    _check_args(op, "x", x, {"x": 2, "z": 2, "conv_state": 3, "conv_bias": 1, "xproj_weight": 2, "norm_weight": 1,
                             "dtproj_weight": 2, "A": 2, "D": 1, "dt_bias": 1, "ssm_state": 3, "work": 1},
                z=z, conv_state=conv_state, conv_weight=conv_weight, conv_bias=conv_bias, xproj_weight=xproj_weight,
                norm_weight=norm_weight, dtproj_weight=dtproj_weight, A=A, D=D, dt_bias=dt_bias,
                ssm_state=ssm_state, work=work)
    B, DI = x.shape
    NO = xproj_weight.shape[0]
    out = _alloc((B, DI), x.dtype, x.device)
    ws = _alloc((B * (2 * DI + 2 * NO),), x.dtype, x.device)
    _call(op, x.device, op, [("out", out), ("x", x), ("z", z), ("conv_state", conv_state),
                             ("conv_weight", _conv_weight(op, conv_weight)), ("conv_bias", conv_bias),
                             ("xproj_weight", xproj_weight), ("norm_weight", norm_weight),
                             ("dtproj_weight", dtproj_weight), ("A", A), ("D", D), ("dt_bias", dt_bias),
                             ("ssm_state", ssm_state), ("ws", ws), ("work", work)],
          _int(op, "dt_rank", dt_rank), _float(op, "eps", eps))
    return out


@mamba_inner_step.register_fake
def _(x, z, conv_state, conv_weight, conv_bias, xproj_weight, norm_weight, dtproj_weight, A, D, dt_bias, ssm_state,
      dt_rank, eps=1e-6, work=None):
    _fake_devices("mamba_inner_step", x=x, z=z, conv_state=conv_state, conv_weight=conv_weight, conv_bias=conv_bias,
                  xproj_weight=xproj_weight, norm_weight=norm_weight, dtproj_weight=dtproj_weight, A=A, D=D,
                  dt_bias=dt_bias, ssm_state=ssm_state, work=work)
    return x.new_empty(x.shape)


# the norms' autograd: the native rms_norm_bwd (add_rms_norm's at its saved sum s, plus the gradient of s itself)
def _norm_setup(ctx, inputs, output):  # rms_norm(x, weight, eps=1e-6)
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.splits, ctx.eps = [], inputs[2] if len(inputs) > 2 else 1e-6


def _seg_norm_setup(ctx, inputs, output):  # rms_norm_segments(x, weight, splits, eps=1e-6)
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.splits, ctx.eps = list(inputs[2]), inputs[3] if len(inputs) > 3 else 1e-6


def _norm_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw = rms_norm_bwd(x, weight, dy.to(x.dtype), ctx.splits, ctx.eps)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dw.to(weight.dtype) if need[1] else None) + (None,) * (len(need) - 2)


def _add_norm_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[2])
    ctx.eps = inputs[3] if len(inputs) > 3 else 1e-6
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)


def _add_norm_backward(ctx, dy, ds_out):
    s, weight = ctx.saved_tensors
    dy = torch.zeros_like(s) if dy is None else dy.to(s.dtype)
    ds, dw = rms_norm_bwd(s, weight, dy, [], ctx.eps)
    if ds_out is not None:  # the returned sum's own gradient: one fp32 sum, one rounding (torch's add of two
        # tensors of s's dtype computes exactly that, in one pass; the .to() below are then no copies)
        ds = ds + ds_out if ds_out.dtype == ds.dtype else ds.float() + ds_out.float()
    need = ctx.needs_input_grad
    return (ds.to(ctx.dtypes[0]) if need[0] else None, ds.to(ctx.dtypes[1]) if need[1] else None,
            dw.to(weight.dtype) if need[2] else None) + (None,) * (len(need) - 3)


torch.library.register_autograd("jamba::rms_norm", _norm_backward, setup_context=_norm_setup)
torch.library.register_autograd("jamba::rms_norm_segments", _norm_backward, setup_context=_seg_norm_setup)
torch.library.register_autograd("jamba::add_rms_norm", _add_norm_backward, setup_context=_add_norm_setup)
# causal_conv1d's autograd: the native causal_conv1d_bwd (the final state's gradient added here: its entries are
# copies of the last state_len entries of concat(zeros, initial_state, x)); the reference's autograd for float64
_conv_ref_setup, _conv_ref_backward = _reference_backward(reference.causal_conv1d, 6, (0, 1, 2, 3))


def _conv_setup(ctx, inputs, output):
    _conv_ref_setup(ctx, inputs, output)
    ctx.native = inputs[0].dtype in FLOAT_DTYPES


def _conv_backward(ctx, dout, dfinal):
    if not ctx.native:
        return _conv_ref_backward(ctx, dout, dfinal)
    x, weight, bias, init = ctx.saved_tensors
    silu, state_len = ctx.others[4], ctx.others[5]
    dout = torch.zeros_like(x) if dout is None else dout.to(x.dtype)
    dx, dw, db, dinit = causal_conv1d_bwd(x, weight, bias, init, dout, silu)
    K = weight.shape[-1]
    S = K - 1 if state_len < 0 else state_len
    if dfinal is not None and S > 0:  # final[..., i] = full[..., F - S + i], full = concat(zeros, init, x)
        L, S_in = x.shape[-1], (init.shape[-1] if init is not None else 0)
        dfin = dfinal.to(x.dtype)
        nx = min(S, L)                 # the last nx entries of x
        if nx:
            dx[..., L - nx:] += dfin[..., S - nx:]
        ni = min(S - nx, S_in)         # then the last ni entries of initial_state
        if ni:
            dinit[..., S_in - ni:] += dfin[..., S - nx - ni:S - nx]
    need = ctx.needs_input_grad
    res = [dx, dw.to(weight.dtype).view(weight.shape), None if bias is None else db.to(bias.dtype),
           None if init is None else dinit]
    return tuple(r if i < len(need) and need[i] else None for i, r in enumerate(res)) + (None, None)


torch.library.register_autograd("jamba::causal_conv1d", _conv_backward, setup_context=_conv_setup)


# ---- selective_scan_bwd (training) ---------------------------------------------------------------------
@torch.library.custom_op("jamba::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       initial_state: Optional[Tensor], dout: Tensor,
                       dlast_state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                      Tensor, Tensor, Tensor]:
    """Gradients of selective_scan (csrc/jamba.h selective_scan_bwd): the forward's inputs, dout (B, DI, L) in u's
    dtype (the gradient of out) and dlast_state (B, DI, N) f32 or None (the gradient of last_state). Returns
    (du, ddelta (B, DI, L) u's dtype; dA (DI, N), dB, dC (B, N, L), dD, ddelta_bias (DI,), dinitial_state
    (B, DI, N): f32; dz (B, DI, L) u's dtype, or an empty tensor without z). dD / ddelta_bias are the gradients a
    D / delta_bias would get (also when absent). On CUDA N <= 32 (the autograd of selective_scan takes the reference
    path above that)."""
    op = "selective_scan_bwd"
    _check_args(op, "u", u, {"u": 3, "A": 2, "B": 3, "C": 3, "D": 1, "z": 3, "delta_bias": 1, "initial_state": 3,
                             "dout": 3, "dlast_state": 3},
                delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state, dout=dout,
                dlast_state=dlast_state)
    Bsz, DI, L = u.shape
    N = A.shape[1]
    f32 = torch.float32
    if dout.dtype != u.dtype:
        _fail(op, f"dout must have u's dtype {u.dtype}, got {dout.dtype}")
    if dout.dim() == 3 and dout.stride(-1) != 1:  # e.g. an expanded gradient (strides 0)
        dout = dout.contiguous()
    if dlast_state is not None and dlast_state.dim() == 3 and dlast_state.stride(-1) != 1:
        dlast_state = dlast_state.contiguous()
    du, ddelta = _alloc(u.shape, u.dtype, u.device), _alloc(u.shape, u.dtype, u.device)
    dz = _alloc(u.shape, u.dtype, u.device) if z is not None else u.new_empty(0)
    dB, dC = _alloc((Bsz, N, L), f32, u.device), _alloc((Bsz, N, L), f32, u.device)
    dA = _alloc((DI, N), f32, u.device)
    dD, ddb = _alloc((DI,), f32, u.device), _alloc((DI,), f32, u.device)
    dinit = _alloc((Bsz, DI, N), f32, u.device)
    ws = None
    if u.device.type == "cuda":
        n_ws = _C.selective_scan_bwd_ws_elems(Bsz, DI, L, N)
        ws = torch.empty(max(n_ws, 1), dtype=f32, device=u.device)
    _call(op, u.device, op, [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                             ("delta_bias", delta_bias), ("initial_state", initial_state), ("dout", dout),
                             ("dlast_state", dlast_state), ("du", du), ("ddelta", ddelta),
                             ("dz", dz if z is not None else None), ("dB", dB), ("dC", dC), ("dA", dA), ("dD", dD),
                             ("ddelta_bias", ddb), ("dinitial_state", dinit), ("ws", ws)],
          _flag(op, "delta_softplus", delta_softplus))
    return du, ddelta, dA, dB, dC, dD, dz, ddb, dinit


@selective_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, dout, dlast_state=None):
    _fake_devices("selective_scan_bwd", u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                  initial_state=initial_state, dout=dout, dlast_state=dlast_state)
    Bsz, DI, L = u.shape
    N = A.shape[1]
    f32 = torch.float32
    return (u.new_empty(u.shape), u.new_empty(u.shape), u.new_empty((DI, N), dtype=f32),
            u.new_empty((Bsz, N, L), dtype=f32), u.new_empty((Bsz, N, L), dtype=f32), u.new_empty((DI,), dtype=f32),
            u.new_empty(u.shape) if z is not None else u.new_empty(0), u.new_empty((DI,), dtype=f32),
            u.new_empty((Bsz, DI, N), dtype=f32))


# selective_scan's autograd: the native selective_scan_bwd; the reference's autograd where that has no kernel (CUDA
# with N > 32) or for float64 inputs (the oracle's own dtype, which the kernels do not take)
_SCAN_ARGS = (0, 1, 2, 3, 4, 5, 6, 7, 9)
_scan_ref_setup, _scan_ref_backward = _reference_backward(reference.selective_scan, 10, _SCAN_ARGS)


def _scan_native_ok(u: Tensor, A: Tensor) -> bool:
    return u.dtype in FLOAT_DTYPES and (u.device.type != "cuda" or A.shape[1] <= 32)


def _scan_setup(ctx, inputs, output):
    _scan_ref_setup(ctx, inputs, output)
    ctx.native = _scan_native_ok(inputs[0], inputs[2])


def _scan_backward(ctx, dout, dlast):
    if not ctx.native:
        return _scan_ref_backward(ctx, dout, dlast)
    u, delta, A, B, C, D, z, delta_bias, initial_state = ctx.saved_tensors
    softplus = ctx.others[8]
    if dout is None:
        dout = torch.zeros_like(u)
    dout = dout.to(u.dtype)
    if dlast is not None:
        dlast = dlast.to(torch.float32)
    du, ddelta, dA, dB, dC, dD, dz, ddb, dinit = torch.ops.jamba.selective_scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, dout, dlast)
    need = ctx.needs_input_grad
    res = [du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD.to(D.dtype),
           None if z is None else dz, None if delta_bias is None else ddb.to(delta_bias.dtype), None,
           None if initial_state is None else dinit.to(initial_state.dtype)]
    return tuple(r if i < len(need) and need[i] else None for i, r in enumerate(res))


torch.library.register_autograd("jamba::selective_scan", _scan_backward, setup_context=_scan_setup)

# ---- MoE (section owned by the MoE family) ------------------------------------------------------------
# JAMBA_MOE_OPS_BEGIN
#   moe_route(router_logits (T, E), top_k) -> (weights (T, TOPK) f32, expert_ids (T, TOPK) i32,
#             expert_offsets (E+1,) i32, sorted_slots (T*TOPK,) i32)
#   moe_permute(expert_ids (T, TOPK), num_experts) -> (expert_offsets, sorted_slots)
#   moe_experts(x (T, H), weights (T, TOPK), expert_ids (T, TOPK), w_gate_up (E, 2F, H), w_down (E, H, F),
#               sorted_slots?, expert_offsets?, impl="auto") -> out (T, H)
# Semantics in csrc/jamba.h (JAMBA_MOE_API). No host synchronisation on CUDA (graph-capturable); the
# permutation is computed on the device when not given. On CUDA an expert id outside [0, E) cannot raise
# without a sync: that token's output row is NaN. On the CPU it raises ValueError.
# CPU path: routing, permutation and combine are C; the expert GEMMs are torch.matmul per expert (the
# CPU BLAS is faster than anything we would write in C), in the model dtype exactly as HF computes them.
_MOE_IMPLS = {"auto": 0, "mma": 1, "gemv": 2, "simt": 3, "grouped_mm": 4, "mma64": 5, "mma256": 6, "wgmma": 7}
# auto on CUDA may switch to torch._grouped_mm (our routing, permutation, activation and combine around it)
# from this many token slots (T*TOPK) on, for bf16 on Hopper (sm_90); None: never (impl "grouped_mm" still
# selects it). H200, Jamba-v0.1 sizes, whole op, our wgmma engine against the torch._grouped_mm engine in the
# same run (benchmarks/results/): 4096 tokens 4.61 vs 4.99 / 5.06 ms (0772d22), 4.64 vs 4.95 (874320e), 4.68 vs
# 5.38 (be9478c); 8192 tokens 9.23 vs 9.80 (32be24a); 16384 tokens, variants timed in turns: 17.56 vs 17.97 /
# 19.36 (874320e), 19.16 vs 18.71 (32be24a), 17.66 vs 18.65 / 19.45 (be9478c): our kernel in two of three runs
# and on average (18.1 vs 18.4 ms), so since session 7 auto keeps our kernels at every size (before: the
# switch at 32768 slots, a tie called for torch._grouped_mm).
MOE_GROUPED_MM_MIN_SLOTS: Optional[int] = None
_SM90 = {}


def _moe_grouped_auto(x: Tensor, slots: int, impl: str) -> bool:
    if impl != "auto" or MOE_GROUPED_MM_MIN_SLOTS is None or slots < MOE_GROUPED_MM_MIN_SLOTS:
        return False
    return _grouped_mm_ok(x)


def _grouped_mm_ok(x: Tensor) -> bool:
    """torch._grouped_mm runs its own grouped kernels (no host sync) for bf16 on Hopper, the GPU we measure it on."""
    if x.device.type != "cuda" or x.dtype != torch.bfloat16 or not hasattr(torch, "_grouped_mm"):
        return False
    return _is_sm90(x)


def _is_sm90(x: Tensor) -> bool:
    """x is on a Hopper GPU (compute capability 9.x) and the build holds sm_90 machine code (not so in a PTX build for
    sm_80, JAMBA_EXT_PTX, whose Hopper-only kernels are empty); cached per device."""
    idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if idx not in _SM90:
        _SM90[idx] = torch.cuda.get_device_capability(idx)[0] == 9 and 90 in cuda_archs()
    return _SM90[idx]


def _moe_ids32(op: str, expert_ids: Tensor, outside_ok: bool = False) -> Tensor:
    """expert_ids as int32. outside_ok: ids outside [0, E) are data (moe_permute buckets them), not a caller's error"""
    if expert_ids.dtype not in (torch.int32, torch.int64):
        _fail(op, f"expert_ids must have dtype int32 or int64, got {expert_ids.dtype}")
    # int64 ids (torch.topk's) become int32, the kernels' index type; a small visible copy. An id beyond int32 becomes
    # -1 (outside [0, E) as it was: the wrap to int32 could land it on a real expert), with no host read
    if expert_ids.dtype == torch.int64:
        big = (expert_ids > 2 ** 31 - 1) | (expert_ids < -2 ** 31)
        if not outside_ok and expert_ids.device.type == "cpu" and not _compiling() and bool(big.any()):
            _fail(op, f"expert_ids must be expert indices, got {int(expert_ids[big][0])}")  # (CPU: the id itself)
        expert_ids = expert_ids.masked_fill(big, -1)
    return expert_ids.to(torch.int32).contiguous()


@torch.library.custom_op("jamba::moe_route", mutates_args=())
def moe_route(router_logits: Tensor, top_k: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Jamba routing: softmax in fp32 over all E experts, top-k, no renormalisation, plus the permutation
    grouping the T*TOPK slots (s = t*TOPK + j) by expert (stable). router_logits: (T, E), unit stride
    along E. Returns (weights (T, TOPK) f32, expert_ids (T, TOPK) int32, expert_offsets (E+1,) int32,
    sorted_slots (T*TOPK,) int32): expert e's slots are sorted_slots[expert_offsets[e]:expert_offsets[e+1]]."""
    op = "moe_route"
    _check_args(op, "router_logits", router_logits, {"router_logits": 2})
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        _fail(op, f"top_k must be an int >= 1, got {top_k!r}")
    top_k = int(top_k)
    T, E = router_logits.shape
    dev = router_logits.device
    w = _alloc((T, top_k), torch.float32, dev)
    ids = _alloc((T, top_k), torch.int32, dev)
    offsets = _alloc((E + 1,), torch.int32, dev)
    slots = _alloc((T * top_k,), torch.int32, dev)
    _call(op, dev, op, [("weights", w), ("expert_ids", ids), ("expert_offsets", offsets),
                        ("sorted_slots", slots), ("router_logits", router_logits)], top_k)
    return w, ids, offsets, slots


@moe_route.register_fake
def _(router_logits, top_k):
    T, E = router_logits.shape
    return (router_logits.new_empty((T, top_k), dtype=torch.float32),
            router_logits.new_empty((T, top_k), dtype=torch.int32),
            router_logits.new_empty((E + 1,), dtype=torch.int32),
            router_logits.new_empty((T * top_k,), dtype=torch.int32))


@torch.library.custom_op("jamba::moe_permute", mutates_args=())
def moe_permute(expert_ids: Tensor, num_experts: int) -> Tuple[Tensor, Tensor]:
    """Stable grouping of the slots of expert_ids (T, TOPK) by expert. Returns (expert_offsets (E+1,) int32,
    sorted_slots (T*TOPK,) int32); ids outside [0, E) are placed after expert_offsets[E]."""
    op = "moe_permute"
    _check_args(op, "expert_ids", expert_ids, {"expert_ids": 2})
    ids = _moe_ids32(op, expert_ids, outside_ok=True)
    num_experts = _int(op, "num_experts", num_experts)
    offsets = _alloc((max(num_experts, 0) + 1,), torch.int32, ids.device)
    slots = _alloc((ids.numel(),), torch.int32, ids.device)
    _call(op, ids.device, op, [("expert_offsets", offsets), ("sorted_slots", slots), ("expert_ids", ids)],
          num_experts)
    return offsets, slots


@moe_permute.register_fake
def _(expert_ids, num_experts):
    return (expert_ids.new_empty((num_experts + 1,), dtype=torch.int32),
            expert_ids.new_empty((expert_ids.numel(),), dtype=torch.int32))


def _rows_apart(t: Tensor) -> Tensor:
    """t (rows, n), copied to a contiguous tensor where it is an expanded view (stride 0 along an axis of size > 1,
    e.g. x.expand(5, n) of one row: read-only, as torch's own ops take it) or its rows overlap (row stride < n): the
    kernels read rows that lie apart. Other layouts go to the kernel as they are (its check names a non-unit stride
    along n)."""
    if t.dim() != 2 or t.numel() == 0:
        return t
    if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)) or (
            t.shape[0] > 1 and t.stride(1) == 1 and t.stride(0) < t.shape[1]):
        return t.contiguous()
    return t


@torch.library.custom_op("jamba::silu_mul", mutates_args=())
def silu_mul(gate_up: Tensor) -> Tensor:
    """SwiGLU activation of a fused gate/up projection, in its dtype with HF's roundings:
    out[..., f] = round(round(silu(g)) * u), g = gate_up[..., f], u = gate_up[..., F + f] (fp32 math).
    gate_up: (..., 2F) f32/f16/bf16, unit stride along the last axis (an expanded view, e.g. one row
    .expand(rows, 2F), is copied first). Returns (..., F)."""
    op = "silu_mul"
    _check_args(op, "gate_up", gate_up, {})
    g2 = _rows_apart(_rows(op, "gate_up", gate_up))
    if g2.shape[-1] % 2:
        _fail(op, f"gate_up must have an even last size (gate then up), got shape {tuple(gate_up.shape)}")
    out = _alloc((g2.shape[0], g2.shape[1] // 2), gate_up.dtype, gate_up.device)
    _call(op, gate_up.device, op, [("out", out), ("gate_up", g2)])
    return out.view(*gate_up.shape[:-1], gate_up.shape[-1] // 2)


@silu_mul.register_fake
def _(gate_up):
    return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))


@torch.library.custom_op("jamba::silu_mul_bwd", mutates_args=())
def silu_mul_bwd(gate_up: Tensor, dout: Tensor) -> Tensor:
    """Gradient of silu_mul (training), one pass: with g, u the gate and up halves of gate_up and s = sigmoid(g),
    returns (..., 2F) = [dout * u * s * (1 + g (1 - s)), dout * g * s] rounded once to gate_up's dtype (fp32 math;
    the forward's roundings passed straight through). gate_up: (..., 2F), dout: (..., F) of its dtype, both with
    unit stride along the last axis (expanded views copied first, as in silu_mul)."""
    op = "silu_mul_bwd"
    _check_args(op, "gate_up", gate_up, {}, dout=dout)
    g2 = _rows_apart(_rows(op, "gate_up", gate_up))
    if g2.shape[-1] % 2:
        _fail(op, f"gate_up must have an even last size (gate then up), got shape {tuple(gate_up.shape)}")
    if tuple(dout.shape) != (*gate_up.shape[:-1], gate_up.shape[-1] // 2):
        _fail(op, f"dout must have shape {(*gate_up.shape[:-1], gate_up.shape[-1] // 2)} (gate_up's with half its "
                  f"last size), got {tuple(dout.shape)}")
    d2 = _rows_apart(_rows(op, "dout", dout))
    out = _alloc(tuple(g2.shape), gate_up.dtype, gate_up.device)
    _call(op, gate_up.device, op, [("dgate_up", out), ("gate_up", g2), ("dout", d2)])
    return out.view(gate_up.shape)


@silu_mul_bwd.register_fake
def _(gate_up, dout):
    _fake_devices("silu_mul_bwd", gate_up=gate_up, dout=dout)
    return gate_up.new_empty(gate_up.shape)


@torch.library.custom_op("jamba::moe_combine", mutates_args=())
def moe_combine(y: Tensor, weights: Tensor, expert_ids: Tensor, sorted_slots: Tensor, num_experts: int) -> Tensor:
    """Weighted combine of expert outputs kept in sorted order (row p of y belongs to slot sorted_slots[p]):
    out[t] = sum_j round(y[pos(t*TOPK + j)] * round(weights[t, j])), rounded to y's dtype after each add, j
    ascending (HF's roundings). y: (T*TOPK, H); weights (T, TOPK) float; expert_ids (T, TOPK) int32/int64;
    sorted_slots (T*TOPK,) int32 from moe_route / moe_permute. Returns (T, H) in y's dtype. A token with an
    id outside [0, num_experts) raises on the CPU and gets a NaN row on CUDA (no host sync)."""
    op = "moe_combine"
    _check_args(op, "y", y, {"y": 2, "weights": 2, "expert_ids": 2, "sorted_slots": 1},
                weights=weights, expert_ids=expert_ids, sorted_slots=sorted_slots)
    ids = _moe_ids32(op, expert_ids)
    if not weights.dtype.is_floating_point:
        _fail(op, f"weights must be a float tensor, got {weights.dtype}")
    w32 = weights.to(torch.float32).contiguous()
    T = ids.shape[0]
    out = _alloc((T, y.shape[1]), y.dtype, y.device)
    pos = _alloc((ids.numel(),), torch.int32, y.device)
    _call(op, y.device, op, [("out", out), ("y", y), ("weights", w32), ("expert_ids", ids),
                             ("sorted_slots", sorted_slots), ("slot_pos", pos)], _int(op, "num_experts", num_experts))
    return out


@moe_combine.register_fake
def _(y, weights, expert_ids, sorted_slots, num_experts):
    _fake_devices("moe_combine", y=y, weights=weights, expert_ids=expert_ids, sorted_slots=sorted_slots)
    return y.new_empty((expert_ids.shape[0], y.shape[1]))


def _moe_experts_torch(x: Tensor, w32: Tensor, ids: Tensor, w_gate_up: Tensor, w_down: Tensor, slots: Tensor,
                       offsets: Tensor, grouped: bool) -> Tensor:
    """moe_experts with torch GEMMs in x's dtype: the routed rows gathered in sorted order, the gate/up GEMM,
    silu_mul (ours), the down GEMM into y (sorted order), moe_combine (ours). GEMMs: a loop over experts (CPU:
    offsets read on the host) or two torch._grouped_mm calls (CUDA, no sync). Rows of y past offsets[E]
    (slots with a bad id) are left unwritten: the combine raises (CPU) or gives those tokens NaN (CUDA)."""
    if grouped:
        return _moe_grouped_forward(x, w32, ids, w_gate_up, w_down, slots, offsets)[0]
    K = ids.shape[1]
    E = w_gate_up.shape[0]
    xs = x.index_select(0, torch.div(slots, K, rounding_mode="floor"))
    y = _alloc((xs.shape[0], x.shape[1]), x.dtype, x.device)
    offs = offsets.tolist()
    for e in range(E):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            torch.matmul(silu_mul(torch.matmul(xs[lo:hi], w_gate_up[e].t())), w_down[e].t(), out=y[lo:hi])
    return moe_combine(y, w32, ids, slots, E)


def _moe_grouped_forward(x, w32, ids, w_gate_up, w_down, slots, offsets):
    """The grouped form of _moe_experts_torch: (out, the gathered rows xs, gate_up pre-activation, expert outputs y),
    all in sorted slot order but out."""
    K, E = ids.shape[1], w_gate_up.shape[0]
    ends = offsets[1:]
    xs = x.index_select(0, torch.div(slots, K, rounding_mode="floor"))
    gu = torch._grouped_mm(xs, w_gate_up.transpose(1, 2), offs=ends)
    y = torch._grouped_mm(silu_mul(gu), w_down.transpose(1, 2), offs=ends)
    return moe_combine(y, w32, ids, slots, E), xs, gu, y


def _moe_check_shapes(op, x, ids, w_gate_up, w_down, sorted_slots, expert_offsets) -> None:
    """The checks the torch GEMM path needs before it runs (the core repeats them, same wording)."""
    T, H = x.shape
    E, F2 = w_gate_up.shape[0], w_gate_up.shape[1]
    if x.dtype not in FLOAT_DTYPES:               # (first: the weights are compared with x's dtype below)
        _fail(op, f"x must have dtype float32, float16 or bfloat16, got {x.dtype}")
    if F2 % 2:
        _fail(op, f"w_gate_up must have shape (E, 2F, H) with an even middle size, got {tuple(w_gate_up.shape)}")
    for name, t, want in (("w_gate_up", w_gate_up, (E, F2, H)), ("w_down", w_down, (E, H, F2 // 2))):
        if tuple(t.shape) != want:
            _fail(op, f"{name} must have shape {want}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            _fail(op, f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if not t.is_contiguous():
            _fail(op, f"{name} must be contiguous, got strides {t.stride()} (make the weights contiguous once at load)")
    if ids.shape[0] != T or ids.shape[1] < 1:
        _fail(op, f"expert_ids must have shape (T, TOPK) = ({T}, >=1), got {tuple(ids.shape)}")
    if sorted_slots is not None:
        _check_perm(op, sorted_slots, expert_offsets, ids.numel(), E)


def _check_perm(op: str, sorted_slots: Tensor, expert_offsets: Tensor, slots: int, E: int) -> None:
    """moe_route's permutation as an op takes it: sorted_slots int32 (slots,), expert_offsets int32 (E + 1,)."""
    if tuple(sorted_slots.shape) != (slots,) or sorted_slots.dtype != torch.int32:
        _fail(op, f"sorted_slots must be int32 of shape ({slots},) (moe_route's), got {sorted_slots.dtype} "
                  f"{tuple(sorted_slots.shape)}")
    if tuple(expert_offsets.shape) != (E + 1,) or expert_offsets.dtype != torch.int32:
        _fail(op, f"expert_offsets must be int32 of shape ({E + 1},) (moe_route's), got {expert_offsets.dtype} "
                  f"{tuple(expert_offsets.shape)}")


# torch 2.4 infers no schema for a str or dtype default (it takes int / float / bool / None): the two ops with one
# give theirs written out, which tests/test_build.py checks against the signature's inferred schema on newer torch
_MOE_EXPERTS_SCHEMA = ("(Tensor x, Tensor weights, Tensor expert_ids, Tensor w_gate_up, Tensor w_down, "
                       "Tensor? sorted_slots=None, Tensor? expert_offsets=None, str impl=\"auto\") -> Tensor")


@torch.library.custom_op("jamba::moe_experts", mutates_args=(), schema=_MOE_EXPERTS_SCHEMA)
def moe_experts(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, w_down: Tensor,
                sorted_slots: Optional[Tensor] = None, expert_offsets: Optional[Tensor] = None,
                impl: str = "auto") -> Tensor:
    """Fused MoE dispatch: out[t] = sum_j round(w[t,j]) * down_e(silu(gate_e x_t) * up_e x_t), e = expert_ids[t,j],
    in x's dtype with HF's roundings (csrc/jamba.h). x: (T, H); weights: (T, TOPK) (fp32 from moe_route, or
    any float: cast to fp32, which is exact); expert_ids: (T, TOPK) int32/int64; w_gate_up: (E, 2F, H), gate
    rows first; w_down: (E, H, F); both contiguous, x's dtype. sorted_slots / expert_offsets: moe_route's
    permutation of these expert_ids (computed here when absent); their shapes and dtypes are checked, and on the CPU
    their ranges; on CUDA their values are not (that would read them on the host, a synchronisation): a permutation
    of other ids gives a wrong result. impl (CUDA): auto | mma | mma64 | mma256 | wgmma | gemv | simt | grouped_mm
    (csrc/jamba.h jamba_moe_impl; grouped_mm: torch._grouped_mm GEMMs inside our routing/combine)."""
    op = "moe_experts"
    _check_args(op, "x", x, {"x": 2, "weights": 2, "expert_ids": 2, "w_gate_up": 3, "w_down": 3,
                             "sorted_slots": 1, "expert_offsets": 1},
                weights=weights, expert_ids=expert_ids, w_gate_up=w_gate_up, w_down=w_down,
                sorted_slots=sorted_slots, expert_offsets=expert_offsets)
    if impl not in _MOE_IMPLS:
        _fail(op, f"impl must be one of {sorted(_MOE_IMPLS)}, got {impl!r}")
    if (sorted_slots is None) != (expert_offsets is None):
        _fail(op, "sorted_slots and expert_offsets are given together (moe_route's outputs) or not at all")
    T, H = x.shape
    E = w_gate_up.shape[0]
    Fd = w_down.shape[2]
    ids = _moe_ids32(op, expert_ids)
    if not weights.dtype.is_floating_point:
        _fail(op, f"weights must be a float tensor, got {weights.dtype}")
    w32 = weights.to(torch.float32).contiguous()  # exact; the kernels round it to x's dtype (HF)
    if ids.shape != w32.shape:
        _fail(op, f"expert_ids must have the shape of weights {tuple(w32.shape)}, got {tuple(ids.shape)}")
    K = ids.shape[1]
    _moe_check_shapes(op, x, ids, w_gate_up, w_down, sorted_slots, expert_offsets)
    xc = x.contiguous()  # rows are gathered with 16-byte loads; a strided x is copied once, visibly
    if sorted_slots is None:
        expert_offsets, sorted_slots = moe_permute(ids, E)
    if x.device.type == "cpu" or impl == "grouped_mm" or _moe_grouped_auto(x, T * K, impl):
        if x.device.type == "cpu" and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= E):
            _fail(op, f"expert_ids must be in [0, {E}), got values in [{int(ids.min())}, {int(ids.max())}]")
        if x.device.type == "cpu" and ids.numel():   # (a bad slot was torch's IndexError from inside the gather)
            lo, hi = int(sorted_slots.min()), int(sorted_slots.max())
            if lo < 0 or hi >= T * K:
                _fail(op, f"sorted_slots must be slot indices in [0, {T * K}) (moe_route's permutation), got values "
                          f"in [{lo}, {hi}]")
            o = expert_offsets.tolist()
            if o[0] != 0 or o[-1] > T * K or any(y < z for z, y in zip(o, o[1:])):
                _fail(op, f"expert_offsets must rise from 0 to at most {T * K} (moe_route's), got {o[:8]}"
                          f"{' ...' if len(o) > 8 else ''}")
        if T == 0:
            return _alloc((0, H), x.dtype, x.device)
        return _moe_experts_torch(xc, w32, ids, w_gate_up, w_down, sorted_slots, expert_offsets,
                                  grouped=x.device.type == "cuda")
    out = _alloc((T, H), x.dtype, x.device)
    slot_out = _alloc((T * K, H), x.dtype, x.device)
    act = _alloc((T * K, Fd), x.dtype, x.device)
    sched = _alloc((2,), torch.int32, x.device)  # tile counters of the persistent Hopper GEMMs (zeroed on device)
    _call(op, x.device, op, [("out", out), ("x", xc), ("weights", w32), ("expert_ids", ids),
                             ("expert_offsets", expert_offsets), ("sorted_slots", sorted_slots),
                             ("w_gate_up", w_gate_up), ("w_down", w_down), ("act", act),
                             ("slot_out", slot_out), ("sched", sched)], _MOE_IMPLS[impl])
    return out


@moe_experts.register_fake
def _(x, weights, expert_ids, w_gate_up, w_down, sorted_slots=None, expert_offsets=None, impl="auto"):
    # a meta argument among CPU tensors lands here: refuse it (it returned uninitialised memory as the result)
    _fake_devices("moe_experts", x=x, weights=weights, expert_ids=expert_ids, w_gate_up=w_gate_up, w_down=w_down,
                  sorted_slots=sorted_slots, expert_offsets=expert_offsets)
    return x.new_empty(x.shape)


def _route_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])  # router_logits, the chosen expert ids


def _route_backward(ctx, dw, *_):
    """moe_route's weights are softmax(logits) at the chosen ids (fp32; fp64 for fp64 logits): the gradient scattered
    to all E probabilities, then the softmax's backward, in a few torch passes over (T, E) (the reference's autograd
    re-ran the sort). An id of -1 (a NaN row on CUDA) takes no gradient; that row's softmax is NaN anyway."""
    logits, ids = ctx.saved_tensors
    if dw is None:
        return None, None
    cd = torch.float64 if logits.dtype == torch.float64 else torch.float32
    p = torch.softmax(logits.to(cd), dim=-1)
    valid = ids >= 0
    dp = torch.zeros_like(p).scatter_(1, torch.where(valid, ids, 0).long(), torch.where(valid, dw.to(cd), 0))
    return (p * (dp - (dp * p).sum(-1, keepdim=True))).to(logits.dtype), None


torch.library.register_autograd("jamba::moe_route", _route_backward, setup_context=_route_setup)


def _silu_mul_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _silu_mul_backward(ctx, grad):
    (gate_up,) = ctx.saved_tensors
    if grad.dtype != gate_up.dtype or gate_up.dtype == torch.float64:  # what the native op does not take
        return reference.silu_mul_bwd(gate_up, grad)
    return silu_mul_bwd(gate_up, grad.contiguous() if grad.dim() and grad.stride(-1) != 1 else grad)


torch.library.register_autograd("jamba::silu_mul", _silu_mul_backward, setup_context=_silu_mul_setup)
_register_reference_autograd("moe_combine", lambda y, w, ids, slots, E: reference.moe_combine(y, w, ids, slots), 5,
                            (0, 1, 2, 3))
# moe_experts' autograd: in eager mode the routed rows only, with torch GEMMs in x's dtype (fp32 accumulation), per
# expert over the sorted slots (one host read of the expert offsets per call); while tracing (torch.compile, AOT
# autograd, opcheck) the data-independent dense form of reference.py, which every expert runs on every token.
_moe_ref_setup, _moe_ref_backward = _reference_backward(
    lambda x, w, ids, gu, d, *_: reference.moe_experts_dense(x, w, ids, gu, d), 8, (0, 1, 2, 3, 4, 5, 6))


def _moe_perm(x, ids, E, perm=None, xs=None):
    """The permutation every MoE backward form starts from (ids as int32, offsets, sorted slots; computed unless the
    forward kept it in perm), the slots as int64 and their tokens, and x in sorted order (unless kept in xs)."""
    if perm is None:
        ids32 = ids.to(torch.int32).contiguous()
        perm = (ids32, *moe_permute(ids32, E))
    ids32, offsets, slots = perm
    sl = slots.long()
    tok = torch.div(sl, ids.shape[1], rounding_mode="floor")
    return ids32, offsets, slots, sl, tok, x.index_select(0, tok) if xs is None else xs


def _moe_grad_rows(go, x, w, ids, E, perm=None, xs=None):
    """_moe_perm, then the output gradient gathered in sorted order and dL/d(expert output) per sorted slot (the
    output gradient times the routing weight rounded to x's dtype, as the forward rounds it), in torch."""
    ids32, offsets, slots, sl, tok, xs = _moe_perm(x, ids, E, perm, xs)
    dt = xs.dtype
    gos = go.to(dt).index_select(0, tok)
    wr = w.to(torch.float32).reshape(-1).index_select(0, sl).to(dt)  # the forward's rounded weights
    return ids32, offsets, slots, sl, tok, xs, gos, gos * wr[:, None]  # one fp32 product, one rounding


@torch.library.custom_op("jamba::moe_grad_rows", mutates_args=())
def moe_grad_rows(go: Tensor, weights: Tensor, sorted_slots: Tensor, y: Optional[Tensor] = None) -> Tuple[Tensor,
                                                                                                        Tensor]:
    """Where the MoE backward's grouped GEMMs start (training): per sorted position p, s = sorted_slots[p] and token
    t = s // TOPK: dys[p] = round(go[t] * round(weights[s])) (dL/d(expert output), the forward's rounding of the routing
    weight; round = to go's dtype) and, when y (the expert outputs in sorted order) is given, dws[p] = sum_h go[t, h]
    y[p, h] in fp32 (the routing weight's gradient, sorted order). go (T, H) f32/f16/bf16 with unit stride along H;
    weights (T, TOPK) float; sorted_slots (T*TOPK,) int32 from moe_route / moe_permute; y (T*TOPK, H) of go's dtype.
    Returns (dys (T*TOPK, H), dws (T*TOPK,) f32, empty without y). One pass over go's gathered rows and y. An entry of
    sorted_slots outside [0, T*TOPK) raises on the CPU and gives a NaN row on CUDA (no host sync)."""
    op = "moe_grad_rows"
    _check_args(op, "go", go, {"go": 2, "weights": 2, "sorted_slots": 1, "y": 2}, weights=weights,
                sorted_slots=sorted_slots, y=y)
    if not weights.dtype.is_floating_point:
        _fail(op, f"weights must be a float tensor, got {weights.dtype}")
    if sorted_slots.dtype != torch.int32:
        _fail(op, f"sorted_slots must be int32 (from moe_route / moe_permute), got {sorted_slots.dtype}")
    w32 = weights.to(torch.float32).contiguous()
    S = w32.numel()
    dys = _alloc((S, go.shape[1]), go.dtype, go.device)
    dws = _alloc((S,) if y is not None else (0,), torch.float32, go.device)
    _call(op, go.device, op, [("dys", dys), ("dws", dws if y is not None else None), ("go", go), ("y", y),
                              ("weights", w32), ("sorted_slots", sorted_slots.contiguous())])
    return dys, dws


@moe_grad_rows.register_fake
def _(go, weights, sorted_slots, y=None):
    _fake_devices("moe_grad_rows", go=go, weights=weights, sorted_slots=sorted_slots, y=y)
    S = weights.numel()
    return go.new_empty((S, go.shape[1])), go.new_empty((S,) if y is not None else (0,), dtype=torch.float32)


def _moe_sparse_grads(go, x, w, ids, wgu, wd, need):
    """(dx, dweights, dw_gate_up, dw_down) of moe_experts, None where not needed. Per expert over its routed rows:
    the forward recomputed with its roundings (gate_up in x's dtype, then silu_mul; the routing weight rounded to
    x's dtype), torch GEMMs in x's dtype (fp32 accumulation) written straight into the weight gradients (no copy
    of the stacked (E, ...) tensors, zero fill only for experts without rows) and silu_mul_bwd for the activation."""
    dt = x.dtype
    T, H = x.shape
    E, K = wgu.shape[0], ids.shape[1]
    _, offsets, slots, sl, tok, xs, gos, dys = _moe_grad_rows(go, x, w, ids, E)
    S = sl.numel()
    dxs = torch.empty(S, H, dtype=dt, device=x.device) if need[0] else None
    dws = torch.empty(S, dtype=torch.float32, device=x.device) if need[1] else None
    dwgu = torch.empty_like(wgu) if need[3] else None
    dwd = torch.empty_like(wd) if need[4] else None
    offs = offsets.tolist()
    for e in range(E):
        lo, hi = offs[e], offs[e + 1]
        if hi <= lo:
            for g in (dwgu, dwd):
                if g is not None:
                    g[e].zero_()
            continue
        xe = xs[lo:hi]
        a = xe @ wgu[e].t()
        act = silu_mul(a)
        if dws is not None:
            dws[lo:hi] = (gos[lo:hi].float() * (act @ wd[e].t())).sum(1)
        dy = dys[lo:hi]
        if dwd is not None:
            torch.matmul(dy.t(), act, out=dwd[e])
        if dxs is None and dwgu is None:
            continue
        da = silu_mul_bwd(a, dy @ wd[e])
        if dwgu is not None:
            torch.matmul(da.t(), xe, out=dwgu[e])
        if dxs is not None:
            torch.matmul(da, wgu[e], out=dxs[lo:hi])
    dx = None if dxs is None else torch.zeros(T, H, dtype=torch.float32, device=x.device).index_add_(
        0, tok, dxs.float()).to(dt)
    return dx, _moe_scatter_dw(dws, sl, w, T, K), dwgu, dwd


def _moe_scatter_dw(dws, sl, w, T, K):
    """The routing weights' gradient from its values in sorted slot order."""
    if dws is None:
        return None
    dw = torch.zeros(T * K, dtype=torch.float32, device=dws.device)
    dw[sl] = dws
    return dw.view(T, K).to(w.dtype)


def _moe_grouped_grads_ok(x, wgu, wd) -> bool:
    """The grouped backward's conditions: bf16 on Hopper (_grouped_mm_ok) and rows of x, the activation and the
    weights whole 16-byte pieces (torch._grouped_mm's TMA strides)."""
    return MOE_BACKWARD_GROUPED and _grouped_mm_ok(x) and x.shape[1] % 8 == 0 and wd.shape[2] % 8 == 0


def _moe_grouped_grads(go, x, w, ids, wgu, wd, need, saved=None):
    """_moe_sparse_grads with torch._grouped_mm: the same products over the routed rows, each a single grouped GEMM
    over all experts with the expert offsets read on the device: no host read, no per-expert loop of torch calls
    (the 512-token training step was host-bound on it). Weight gradients come out as (E, ...) tensors from the
    K-grouped form (mat_a (M, S), mat_b (S, N), one (M, N) product per expert over its rows; zero for an expert
    without rows). dx: moe_combine of the rows' gradients with weights 1, a token's K rows added in slot order and
    rounded to x's dtype after each add (the loop form's fp32 index_add rounds once at the end: the same result for
    top-1 and top-2). saved: (ids32, offsets, slots, xs, gate_up, y) kept by _MoeExpertsSaved's forward; without
    it the forward's gate_up and (for the routing weights' gradient) expert outputs are recomputed, with its
    roundings: 9 GEMM units (one unit = 2 * slots * H * F FLOPs) instead of 6."""
    T, K = ids.shape
    E = wgu.shape[0]
    perm, xs, a, y = (None, None, None, None) if saved is None else (saved[:3], *saved[3:])
    ids32, offsets, slots, sl, _, xs = _moe_perm(x, ids, E, perm, xs)
    ends = offsets[1:]
    if a is None:
        a = torch._grouped_mm(xs, wgu.transpose(1, 2), offs=ends)
    # the activation, one elementwise pass (cheaper to recompute than to keep, S x F), only where it is used
    act = silu_mul(a) if need[4] or (need[1] and y is None) else None
    dx = dwgu = dwd = None
    if need[1] and y is None:
        y = torch._grouped_mm(act, wd.transpose(1, 2), offs=ends)
    # dL/d(expert output) in sorted order and (need[1]) the routing weights' gradient, one pass over go's rows and y
    if MOE_NATIVE_GRAD_ROWS:
        g = go.to(xs.dtype)
        dys, dws = moe_grad_rows(g if g.stride(-1) == 1 else g.contiguous(),
                                 w.to(torch.float32).reshape(T, K).contiguous(), slots, y if need[1] else None)
        dws = dws if need[1] else None
    else:  # torch: the gather, the weighted copy, an fp32 copy of the gathered rows, a product and a sum
        gos, dys = _moe_grad_rows(go, xs, w, ids, E, (ids32, offsets, slots), xs)[6:]
        dws = (gos.float() * y).sum(1) if need[1] else None
    if need[4]:
        dwd = torch._grouped_mm(dys.t(), act, offs=ends)
    if need[0] or need[3]:
        da = silu_mul_bwd(a, torch._grouped_mm(dys, wd, offs=ends))
        if need[3]:
            dwgu = torch._grouped_mm(da.t(), xs, offs=ends)
        if need[0]:
            ones = torch.ones(T, K, dtype=torch.float32, device=xs.device)
            dx = moe_combine(torch._grouped_mm(da, wgu, offs=ends), ones, ids32, slots, E)
    return dx, _moe_scatter_dw(dws, sl, w, T, K), dwgu, dwd


def _moe_check_backward_ids(ids, E):
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(ids)).tolist())  # one host read
    if lo < 0 or hi >= E:
        _fail("moe_experts", f"expert_ids must be in [0, {E}) for the backward, got values in [{lo}, {hi}]")


class _MoeExpertsSaved(torch.autograd.Function):
    """moe_experts for a training forward on Hopper in bf16 (see moe_experts_trainable): _moe_grouped_forward
    (gather, torch._grouped_mm gate_up, silu_mul, torch._grouped_mm down, moe_combine; moe_experts' roundings),
    keeping the gathered rows (slots x H), the gate_up pre-activation (slots x 2F) and the expert outputs (slots x H)
    for the backward, which then runs 6 GEMM units instead of the recomputing form's 9."""

    @staticmethod
    def forward(ctx, x, w32, ids32, wgu, wd, slots, offsets):
        out, xs, a, y = _moe_grouped_forward(x, w32, ids32, wgu, wd, slots, offsets)
        ctx.save_for_backward(w32, ids32, wgu, wd, slots, offsets, xs, a, y)
        return out

    @staticmethod
    def backward(ctx, go):
        w32, ids32, wgu, wd, slots, offsets, xs, a, y = ctx.saved_tensors
        _moe_check_backward_ids(ids32, wgu.shape[0])
        dx, dw, dwgu, dwd = _moe_grouped_grads(go, None, w32, ids32, wgu, wd, ctx.needs_input_grad,
                                               (ids32, offsets, slots, xs, a, y))
        return dx, dw, None, dwgu, dwd, None, None


def moe_experts_trainable(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, w_down: Tensor,
                          sorted_slots: Optional[Tensor] = None, expert_offsets: Optional[Tensor] = None) -> Tensor:
    """moe_experts as the model calls it (moe_route's permutation given). When autograd records a step on Hopper in
    bf16 (eager, not traced; _moe_grouped_grads_ok), the forward's GEMMs run through torch._grouped_mm and keep
    their gate_up pre-activations and expert outputs for the backward (_MoeExpertsSaved: a third fewer backward
    GEMM FLOPs, 2 x slots x (2F + 2H) bytes per layer kept); elsewhere (inference, other GPUs and dtypes, tracing,
    no permutation given, MOE_TRAIN_SAVED False) it is moe_experts: our fused kernels, and a backward that
    recomputes."""
    leaves = (x, weights, w_gate_up, w_down)
    if (MOE_TRAIN_SAVED and torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
            and sorted_slots is not None and expert_offsets is not None
            and not (_compiling() or _modes() or _functorch()) and _moe_grouped_grads_ok(x, w_gate_up, w_down)):
        op = "moe_experts"
        _check_args(op, "x", x, {"x": 2, "weights": 2, "expert_ids": 2, "w_gate_up": 3, "w_down": 3,
                                 "sorted_slots": 1, "expert_offsets": 1},
                    weights=weights, expert_ids=expert_ids, w_gate_up=w_gate_up, w_down=w_down,
                    sorted_slots=sorted_slots, expert_offsets=expert_offsets)
        ids = _moe_ids32(op, expert_ids)
        _moe_check_shapes(op, x, ids, w_gate_up, w_down, sorted_slots, expert_offsets)
        if weights.shape != ids.shape or not weights.dtype.is_floating_point:
            _fail(op, f"weights must be a float tensor of expert_ids' shape {tuple(ids.shape)}, got "
                      f"{weights.dtype} {tuple(weights.shape)}")
        if x.shape[0]:
            return _MoeExpertsSaved.apply(x.contiguous(), weights.to(torch.float32), ids, w_gate_up, w_down,
                                          sorted_slots, expert_offsets)
    return moe_experts(x, weights, expert_ids, w_gate_up, w_down, sorted_slots, expert_offsets)


MOE_SPARSE_BACKWARD = True  # False: the dense reference formula everywhere (what every version before session 30 ran)
MOE_BACKWARD_GROUPED = True  # False: the per-expert loop (_moe_sparse_grads) where the grouped form would run
MOE_TRAIN_SAVED = True  # False: moe_experts_trainable is moe_experts (our kernels forward, a recomputing backward)
MOE_NATIVE_GRAD_ROWS = True  # False: the grouped backward's dL/d(expert output) and routing-weight gradient in torch


def _moe_backward(ctx, go):
    x, w, ids, wgu, wd = ctx.saved_tensors[:5]
    tracing = _compiling() or _modes() or _functorch() or torch._guards.detect_fake_mode((x, go)) is not None
    if tracing or not MOE_SPARSE_BACKWARD or x.dtype not in FLOAT_DTYPES or not ids.numel():
        return _moe_ref_backward(ctx, go)
    _moe_check_backward_ids(ids, wgu.shape[0])
    grads = _moe_grouped_grads if _moe_grouped_grads_ok(x, wgu, wd) else _moe_sparse_grads
    dx, dw, dwgu, dwd = grads(go, x, w, ids, wgu, wd, ctx.needs_input_grad)
    return dx, dw, None, dwgu, dwd, None, None, None


torch.library.register_autograd("jamba::moe_experts", _moe_backward, setup_context=_moe_ref_setup)
# JAMBA_MOE_OPS_END


# ---- fp8 expert weights (weight-only quantisation; section owned by the fp8 family) -------------------------
# JAMBA_FP8_OPS_BEGIN
#   quantize_fp8(w (..., K)) -> (q (..., K) float8_e4m3fn, scale (...) f32): per row over the last dim,
#       scale = max|w_row| / 448 (1 for an all-zero row; at least 2^-149, fp32's smallest subnormal, where the
#       division underflows: rows below ~6.3e-43), q = round_to_e4m3(w / scale). inf / NaN refused. Plain torch (a
#       one-time conversion), chunked over rows so the fp32 temporaries stay small.
#   dequant_fp8(q (..., K) fp8, scale (...) f32, dtype, group_offsets?) -> q's shape in dtype:
#       out[r, k] = round_dtype(float(q[r, k]) * scale[r]) (rows r over q's leading dims). group_offsets (G+1,)
#       int32 (moe_route's expert offsets): the rows form G equal groups and a group with no rows routed to it is
#       left unwritten (its contents are undefined), so a MoE call converts only its touched experts.
#   moe_experts_fp8(x, weights, expert_ids, w_gate_up (E, 2F, H) fp8, s_gate_up (E, 2F) f32, w_down (E, H, F)
#       fp8, s_down (E, H) f32, sorted_slots?, expert_offsets?) -> out (T, H): moe_experts with the weights
#       w = float(q) * scale. Up to FP8_(CUDA_)GEMV_MAX_TOKENS tokens (decode) weight-streaming kernels read the fp8
#       bytes directly (CUDA: csrc/cuda/moe_gemv.cu; CPU: csrc/cpu/fp8.c), sums in fp32 with the row's scale
#       applied to the sum; on CUDA above that the C op reads them too: the ring kernels of moe_experts' decode
#       engine (csrc/cuda/moe.cu, F8: each weight row once per pass over 8-32 of its expert's tokens, converted to
#       bf16 / f16 in registers for mma.sync) and, on Hopper from 28 slots per expert on average, a wgmma kernel
#       (csrc/cuda/moe_wgmma.cu moe_wgmma_f8ws_kernel: each weight row once per 128 of its expert's rows, converted
#       in shared memory by converter warps); the C op picks between those two. Above FP8_SM90_MAX_TOKENS on Hopper,
#       above FP8_RING_MAX_TOKENS on other GPUs and above FP8_GEMV_MAX_TOKENS on the CPU the touched experts are
#       dequantized to x's dtype (dequant_fp8 with the expert offsets) and moe_experts runs on them (one more pass
#       over the touched weights, 1 byte read and 2 written per weight, which the GEMMs then read). Gradients: x and
#       the routing weights (the fp8 weights are frozen: LoRA and the router train on an fp8 model), through the
#       dequantized weights.
#       act_fp8=True (opt-in, like torch's allow_tf32: a permission, not a format): on Hopper from
#       FP8_W8A8_MIN_TOKENS (7) tokens x and act are quantized per row to e4m3 (reference.quantize_rows_fp8) and both
#       GEMMs multiply e4m3 by e4m3 (moe_wgmma_gemm_q8: the bf16 persistent kernel's tiles at twice the rate; fp32
#       accumulation in the tensor cores' order, reference.moe_experts_fp8_w8a8 states the math). Elsewhere (CPU,
#       other GPUs, fewer tokens) it is ignored. Gradients as without (straight through the quantization).
# Semantics in csrc/jamba.h (JAMBA_FP8_API). Why: Jamba-v0.1's experts are 45 of its 52B parameters; with them in
# fp8 the model needs ~58 GB instead of ~104 GB (one 80 GB GPU), and a decode step reads half the expert bytes.
FP8_MAX = 448.0
# The engine by token count. CUDA (Jamba-v0.1 sizes, bf16 x, H200, us; fp8_ring_nt_475caf7.log): the GEMVs up to
# FP8_CUDA_GEMV_MAX_TOKENS (6 tokens: 425 against the ring's 456; 8: 564 against 492), the ring kernels up to
# FP8_RING_MAX_TOKENS (512 tokens: 3545 against the dequantizing path's 4124; 768: 5379 against 4154; with the
# faster dequant_fp8 of 1f4075d 3538 against 3718 at 512, fp8_final_1f4075d.log), then the dequantizing path; on
# Hopper the C op up to FP8_SM90_MAX_TOKENS, whose wgmma kernel (from ~224 tokens) beats the dequantizing path there
# (512 / 2048 tokens 1422 / 3473 against 3733 / 4911 us, fp8_wgmma_cd4ca89.log) but runs at ~2/3 of the bf16 GEMM's
# rate per tile, so from ~3900 tokens one conversion of the experts (2.25 ms) plus the bf16 op costs less (measured
# in turns, fp8_large_98cef0e.log: 2048 tokens 3512 against 4987, 4096: 7073 against 6956, 8192: 13771 against 11476;
# gpu_round_fp8_bbccab0.log's parts at 16384: 23891 against 2273 + 18013). CPU: the GEMV form up to
# FP8_GEMV_MAX_TOKENS, then the dequantizing path.
FP8_GEMV_MAX_TOKENS = 32       # = JAMBA_FP8_GEMV_MAX_TOKENS, the most the C GEMV form takes
FP8_CUDA_GEMV_MAX_TOKENS = 6   # <= FP8_GEMV_MAX_TOKENS
FP8_RING_MAX_TOKENS = 512
# On Hopper the C op (ring kernels, then the wgmma kernel) up to this many tokens (0: the FP8_RING_MAX_TOKENS limit
# applies there too; tests and A/B rows)
FP8_SM90_MAX_TOKENS = 3584
# act_fp8 (W8A8; Hopper only, csrc/cuda/moe.cu fp8_w8a8_launch): x and act quantized per row to e4m3
# (reference.quantize_rows_fp8) and both expert GEMMs on the e4m3 tensor cores (twice the bf16 rate), from this many
# tokens (past the GEMVs' FP8_CUDA_GEMV_MAX_TOKENS); below, and on other devices, act_fp8 is ignored (the weight-only
# engines above). Jamba-v0.1 sizes, bf16 x, H200, us, W8A8 / weight-only fp8 / bf16 op, timed in turns
# (w8a8_small_288324c.log, w8a8_final_6b7a003.log): 8 tokens 589 / 642 / 1177, 16: 618 / 691 / 1159, 32: 695 / 792 /
# 1323, 64: 709 / 957 / 1334, 512: 809 / 1438 / 1411, 2048: 1666 / 3769 / 2708, 4096: 3054 / 7093 / 4711, 16384:
# 10988 / 20769 / 18598. (Before the W8A8 kernel ran half tiles at every size the ring won up to 32 tokens:
# gpu_round_fp8_fe68db6.log, 8 tokens 741 against 644.)
FP8_W8A8_MIN_TOKENS = 7


_F32_TRUE_MIN = 2.0 ** -149  # fp32's smallest positive (subnormal) value


def quantize_fp8(w: Tensor, rows_per_chunk: int = 4096) -> Tuple[Tensor, Tensor]:
    """(q float8_e4m3fn, scale f32) of w, one scale per row over the last dim (see the section's comment)."""
    if not isinstance(w, Tensor) or not w.dtype.is_floating_point or w.dim() < 1:
        raise ValueError(f"quantize_fp8: w must be a float tensor of at least one dimension, got "
                         f"{type(w).__name__ if not isinstance(w, Tensor) else (w.dtype, tuple(w.shape))}")
    if not hasattr(torch, "float8_e4m3fn"):
        raise RuntimeError("quantize_fp8: this torch has no float8_e4m3fn dtype (torch >= 2.1 has it)")
    if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int) or rows_per_chunk < 1:
        raise ValueError(f"quantize_fp8: rows_per_chunk must be a positive int, got {rows_per_chunk!r}")
    K = w.shape[-1]
    w2 = w.detach().reshape(w.shape[:-1].numel(), K)  # (not -1: with an empty last dim -1 is ambiguous)
    q = torch.empty(w2.shape, dtype=torch.float8_e4m3fn, device=w.device)
    scale = torch.empty(w2.shape[0], dtype=torch.float32, device=w.device)
    for r0 in range(0, w2.shape[0], rows_per_chunk):
        c = w2[r0:r0 + rows_per_chunk].to(torch.float32)
        amax = c.abs().amax(dim=1) if K else torch.zeros(c.shape[0], device=c.device)
        if not bool(torch.isfinite(amax).all()):
            if w.dtype == torch.float64 and bool(torch.isfinite(w2[r0:r0 + rows_per_chunk]).all()):
                raise ValueError("quantize_fp8: w holds float64 values beyond float32's range (~3.4e38), which the "
                                 "fp32 scales cannot represent")
            raise ValueError("quantize_fp8: w holds inf or NaN")
        # at least fp32's smallest subnormal: max / 448 underflows to 0 for rows below ~6.3e-43, and a zero scale
        # turned the row's zeros into 0 / 0 = NaN (and its weights into NaN * 0 when dequantized)
        s = torch.where(amax > 0, (amax / FP8_MAX).clamp_min(_F32_TRUE_MIN), torch.ones_like(amax))
        scale[r0:r0 + rows_per_chunk] = s
        q[r0:r0 + rows_per_chunk] = (c / s[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(w.shape), scale.view(w.shape[:-1])


def _fp8_check(op: str, name: str, q: Tensor, s: Tensor, shape: Optional[Tuple[int, ...]] = None) -> None:
    if not isinstance(q, Tensor) or q.dtype != getattr(torch, "float8_e4m3fn", None):
        _fail(op, f"{name} must be a torch.float8_e4m3fn tensor (jamba_ext.ops.quantize_fp8), got "
                  f"{q.dtype if isinstance(q, Tensor) else type(q).__name__}")
    if shape is not None and tuple(q.shape) != shape:
        _fail(op, f"{name} must have shape {shape}, got {tuple(q.shape)}")
    if not isinstance(s, Tensor) or s.dtype != torch.float32 or tuple(s.shape) != tuple(q.shape[:-1]):
        _fail(op, f"the scale of {name} must be float32 of shape {tuple(q.shape[:-1])}, got "
                  f"{s.dtype if isinstance(s, Tensor) else type(s).__name__} "
                  f"{tuple(s.shape) if isinstance(s, Tensor) else ''}")
    if s.device != q.device:
        _fail(op, f"the scale of {name} is on {s.device} but {name} is on {q.device}")


def _u8(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.uint8)


# written out for torch 2.4 (see _MOE_EXPERTS_SCHEMA); 15 is the ScalarType code of torch.bfloat16
_DEQUANT_FP8_SCHEMA = "(Tensor q, Tensor scale, ScalarType dtype=15, Tensor? group_offsets=None) -> Tensor"


@torch.library.custom_op("jamba::dequant_fp8", mutates_args=(), schema=_DEQUANT_FP8_SCHEMA)
def dequant_fp8(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.bfloat16,
                group_offsets: Optional[Tensor] = None) -> Tensor:
    """out = round_dtype(float(q) * scale[..., None]) in q's shape (see the section's comment)."""
    op = "dequant_fp8"
    if isinstance(q, Tensor) and q.dim() < 1:
        _fail(op, "q must have at least one dimension (rows of K weights)")
    _fp8_check(op, "q", q, scale)
    if dtype not in FLOAT_DTYPES:
        _fail(op, f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    K = q.shape[-1]
    R = scale.numel()
    if group_offsets is not None:
        _check_args(op, "q", q, {"group_offsets": 1}, group_offsets=group_offsets)
        G = group_offsets.shape[0] - 1
        if group_offsets.dtype != torch.int32 or G < 1 or R % G:
            _fail(op, f"group_offsets must be int32 of shape (G+1,) with G >= 1 dividing the {R} rows, got "
                      f"{group_offsets.dtype} {tuple(group_offsets.shape)}")
    out = _alloc(q.shape, dtype, q.device)
    if out.numel():
        _call(op, q.device, op, [("out", out.view(R, K)), ("q", _u8(q).view(R, K)),
                                 ("scale", scale.contiguous().view(R)), ("group_offsets", group_offsets)])
    return out


@dequant_fp8.register_fake
def _(q, scale, dtype=torch.bfloat16, group_offsets=None):
    _fake_devices("dequant_fp8", q=q, scale=scale, group_offsets=group_offsets)  # (else: uninitialised CPU memory)
    return torch.empty(q.shape, dtype=dtype, device=q.device)


@torch.library.custom_op("jamba::moe_experts_fp8", mutates_args=())
def moe_experts_fp8(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, s_gate_up: Tensor,
                    w_down: Tensor, s_down: Tensor, sorted_slots: Optional[Tensor] = None,
                    expert_offsets: Optional[Tensor] = None, act_fp8: bool = False) -> Tensor:
    """moe_experts with fp8 expert weights and per-row scales (see the section's comment). act_fp8: allows fp8
    activations (W8A8) where a kernel for them runs (see the section's comment); False keeps x's dtype throughout."""
    op = "moe_experts_fp8"
    _check_args(op, "x", x, {"x": 2, "weights": 2, "expert_ids": 2, "w_gate_up": 3, "w_down": 3,
                             "sorted_slots": 1, "expert_offsets": 1},
                weights=weights, expert_ids=expert_ids, w_gate_up=w_gate_up, w_down=w_down,
                sorted_slots=sorted_slots, expert_offsets=expert_offsets)
    if x.dtype not in FLOAT_DTYPES:
        _fail(op, f"x must be float32, float16 or bfloat16, got {x.dtype}")
    E, H = w_gate_up.shape[0], x.shape[1]
    Fd = w_down.shape[2]
    _fp8_check(op, "w_gate_up", w_gate_up, s_gate_up, (E, 2 * Fd, H))
    _fp8_check(op, "w_down", w_down, s_down, (E, H, Fd))
    if (sorted_slots is None) != (expert_offsets is None):
        _fail(op, "sorted_slots and expert_offsets are given together (moe_route's outputs) or not at all")
    if sorted_slots is not None:  # checked here, by their own names: the CPU decode kernel does not read them, and
        #                           the dequantizing path reported them as dequant_fp8's group_offsets
        _check_perm(op, sorted_slots, expert_offsets, expert_ids.numel(), E)
    ids = _moe_ids32(op, expert_ids)
    if not weights.dtype.is_floating_point or weights.shape != ids.shape:
        _fail(op, f"weights must be a float tensor of expert_ids' shape {tuple(ids.shape)}, got {weights.dtype} "
                  f"{tuple(weights.shape)}")
    T, K = ids.shape
    if x.shape[0] != T:
        _fail(op, f"x has {x.shape[0]} rows but expert_ids has {T}")
    if T == 0:
        return _alloc((0, H), x.dtype, x.device)
    cuda = x.device.type == "cuda"
    gemv_max = min(FP8_CUDA_GEMV_MAX_TOKENS, FP8_GEMV_MAX_TOKENS) if cuda else FP8_GEMV_MAX_TOKENS
    if act_fp8 and fp8_act_applies(x, T, Fd):
        return _moe_experts_w8a8(x, weights, ids, w_gate_up, s_gate_up, w_down, s_down, sorted_slots, expert_offsets)
    ring = cuda and gemv_max < T and (T <= FP8_RING_MAX_TOKENS or (T <= FP8_SM90_MAX_TOKENS and _is_sm90(x)))
    if (T <= gemv_max or ring) and _fp8_gemv_ok(x, H, Fd):
        if x.device.type == "cpu" and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= E):
            _fail(op, f"expert_ids must be in [0, {E}), got values in [{int(ids.min())}, {int(ids.max())}]")
        out = _alloc((T, H), x.dtype, x.device)
        act = _alloc((T * K, Fd), x.dtype, x.device)
        perm = [("expert_offsets", None), ("sorted_slots", None), ("slot_out", None)]
        if ring:
            if sorted_slots is None:
                expert_offsets, sorted_slots = moe_permute(ids, E)
            perm = [("expert_offsets", expert_offsets.contiguous()), ("sorted_slots", sorted_slots.contiguous()),
                    ("slot_out", _alloc((T * K, H), x.dtype, x.device))]
        xc = x.contiguous()
        if xc.data_ptr() % 16:  # the CUDA kernels read x in 16-byte pieces (a view at an odd offset: copied)
            xc = xc.clone()
        _call(op, x.device, op, [("out", out), ("x", xc), ("weights", weights.to(torch.float32).contiguous()),
                                 ("expert_ids", ids), ("w_gate_up", _u8(w_gate_up)),
                                 ("s_gate_up", s_gate_up.contiguous()), ("w_down", _u8(w_down)),
                                 ("s_down", s_down.contiguous()), ("act", act)] + perm
              + [("act8", None), ("x_scale", None), ("act_scale", None), ("sched", None)])
        return out
    if sorted_slots is None:
        expert_offsets, sorted_slots = moe_permute(ids, E)
    gu = dequant_fp8(w_gate_up, s_gate_up, x.dtype, expert_offsets)
    dn = dequant_fp8(w_down, s_down, x.dtype, expert_offsets)
    return moe_experts(x, weights, ids, gu, dn, sorted_slots, expert_offsets)


def fp8_act_applies(x: Tensor, tokens: int, ffn: int) -> bool:
    """Whether moe_experts_fp8(..., act_fp8=True) quantizes the activations (W8A8) for this call: x on a Hopper GPU
    in bf16 / f16, at least FP8_W8A8_MIN_TOKENS tokens, x's width and ffn multiples of 16; otherwise the flag is
    ignored and the result is the weight-only one (tests and `jamba_ext check` pick their oracle by it)."""
    return (x.device.type == "cuda" and tokens >= FP8_W8A8_MIN_TOKENS and _fp8_gemv_ok(x, x.shape[-1], ffn)
            and _is_sm90(x))


def _moe_experts_w8a8(x, weights, ids, w_gate_up, s_gate_up, w_down, s_down, sorted_slots, expert_offsets):
    """moe_experts_fp8 with fp8 activations on Hopper (the C op with the W8A8 workspaces; csrc/cuda/moe.cu
    fp8_w8a8_launch)."""
    op = "moe_experts_fp8"
    T, K = ids.shape
    E, H, Fd = w_down.shape
    if sorted_slots is None:
        expert_offsets, sorted_slots = moe_permute(ids, E)
    dev = x.device
    out = _alloc((T, H), x.dtype, dev)
    xc = x.contiguous()
    if xc.data_ptr() % 16:
        xc = xc.clone()
    _call(op, dev, op, [("out", out), ("x", xc), ("weights", weights.to(torch.float32).contiguous()),
                        ("expert_ids", ids), ("w_gate_up", _u8(w_gate_up)), ("s_gate_up", s_gate_up.contiguous()),
                        ("w_down", _u8(w_down)), ("s_down", s_down.contiguous()),
                        ("act", _alloc((T * K, Fd), x.dtype, dev)),
                        ("expert_offsets", expert_offsets.contiguous()), ("sorted_slots", sorted_slots.contiguous()),
                        ("slot_out", _alloc((T * K, H), x.dtype, dev)),
                        ("act8", _alloc((T * K, Fd), torch.uint8, dev)),
                        ("x_scale", _alloc((T * K,), torch.float32, dev)),
                        ("act_scale", _alloc((T * K,), torch.float32, dev)),
                        ("sched", _alloc((2,), torch.int32, dev))])
    return out


def _fp8_gemv_ok(x: Tensor, H: int, Fd: int) -> bool:
    """The fp8 weight-streaming kernels: CUDA for bf16 / f16 x with H, F multiples of 16 (16 weights a load);
    the CPU's for any."""
    if x.device.type == "cuda":
        return x.dtype in (torch.bfloat16, torch.float16) and H % 16 == 0 and Fd % 16 == 0 and Fd > 0
    return True


@moe_experts_fp8.register_fake
def _(x, weights, expert_ids, w_gate_up, s_gate_up, w_down, s_down, sorted_slots=None, expert_offsets=None,
      act_fp8=False):
    # a meta argument among CPU tensors lands here: refuse it (it returned uninitialised memory as the result)
    _fake_devices("moe_experts_fp8", x=x, weights=weights, expert_ids=expert_ids, w_gate_up=w_gate_up,
                  s_gate_up=s_gate_up, w_down=w_down, s_down=s_down, sorted_slots=sorted_slots,
                  expert_offsets=expert_offsets)
    return x.new_empty(x.shape)


def _fp8_moe_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])


def _fp8_moe_backward(ctx, go):
    """dx and d(routing weights) through the dequantized weights (moe_experts' backward with frozen weights)."""
    x, w, ids, gu, sgu, dn, sdn = ctx.saved_tensors
    nx, nw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if ctx.needs_input_grad[4] or ctx.needs_input_grad[6]:
        _fail("moe_experts_fp8", "the fp8 weights' scales are frozen (no gradient); detach them")
    if ctx.needs_input_grad[3] or ctx.needs_input_grad[5]:  # (was a silent None: the weights seemed to train)
        _fail("moe_experts_fp8", "the fp8 weights are frozen (no gradient; train LoRA adapters or the unquantized "
                                 "model); detach them or set requires_grad=False")
    if not (nx or nw) or not ids.numel():
        return (None,) * 10
    ids32 = _moe_ids32("moe_experts_fp8", ids)
    _moe_check_backward_ids(ids32, gu.shape[0])
    wgu, wd = dequant_fp8(gu, sgu, x.dtype), dequant_fp8(dn, sdn, x.dtype)
    need = (nx, nw, False, False, False)
    grads = _moe_grouped_grads if _moe_grouped_grads_ok(x, wgu, wd) else _moe_sparse_grads
    dx, dw, _, _ = grads(go, x, w.to(torch.float32), ids32, wgu, wd, need)  # act_fp8: as without (straight through)
    return dx, dw, None, None, None, None, None, None, None, None


torch.library.register_autograd("jamba::moe_experts_fp8", _fp8_moe_backward, setup_context=_fp8_moe_setup)
# JAMBA_FP8_OPS_END


# ---- gemv (decode-step projections) ----------------------------------------------------------------------
@torch.library.custom_op("jamba::gemv", mutates_args=())
def gemv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x @ weight.T (+ bias) for a few rows of x (a decode step's projections): fp32 sums in a fixed order, one
    rounding to x's dtype. x: (..., K), unit stride along K; weight: (N, K), x's dtype, unit stride along K;
    bias: (N,), x's dtype or f32. Returns (..., N). Any number of rows is valid; the CUDA kernel reads the weight
    once per 8 rows, so F.linear (a GEMM) is the better choice from ~8 rows on."""
    op = "gemv"
    _check_args(op, "x", x, {"weight": 2, "bias": 1}, weight=weight, bias=bias)
    x2 = _rows(op, "x", x)
    out = _alloc((x2.shape[0], weight.shape[0]), x.dtype, x.device)
    _call(op, x.device, op, [("out", out), ("x", x2), ("weight", weight), ("bias", bias)])
    return out.view(*x.shape[:-1], weight.shape[0])


@gemv.register_fake
def _(x, weight, bias=None):
    _fake_devices("gemv", x=x, weight=weight, bias=bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_register_reference_autograd("gemv", reference.gemv, 3, (0, 1, 2))


# ---- decode_attention (one new token against the KV cache) ----------------------------------------------------
ATTN_SPLITS_PER_SM = 3           # CUDA: the keys are split so that about this many blocks per SM run (one wave
#                                  of the tensor-core kernel, 3 resident blocks of 128 threads at 170 registers)
_SM_COUNT = {}


def _attn_splits(device: torch.device, bh: int, S: int) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return max(1, min(-(-S // 16), -(-ATTN_SPLITS_PER_SM * _SM_COUNT[idx] // max(1, bh)), 65535))


def _rows16(t: Tensor) -> bool:
    es = t.element_size()
    return t.data_ptr() % 16 == 0 and all(st * es % 16 == 0 or n <= 1 for st, n in zip(t.stride()[:-1], t.shape[:-1]))


@torch.library.custom_op("jamba::decode_attention", mutates_args=())
def decode_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None,
                     scale: Optional[float] = None) -> Tensor:
    """Softmax attention of a few query rows per KV head over a KV cache (a decode step; with GQA the query heads
    of one KV head are its rows): q (B, HKV, R, D); k, v (B, HKV, S, D), one float dtype, unit stride along D;
    key_mask (B, S) bool, True where the key takes part (SDPA's boolean mask), None: every key; scale: default
    D^-0.5. fp32 math; a row with no key taking part gives 0. Returns (B, HKV, R, D). CUDA: the keys are split over
    the SMs ("flash decoding"); D in {64, 128, 256} and R <= 8 there (else RuntimeError); rows that do not start
    at 16-byte boundaries are copied first. NaN, as reference.decode_attention: a NaN in a query row, or in the K row
    of a key taking part, makes the row's output NaN; a NaN in element d of such a key's V row makes column d NaN; a
    masked key's K and V rows are never read, and a row with no key taking part gives 0 whatever q holds."""
    op = "decode_attention"
    _check_args(op, "q", q, {"k": 4, "v": 4, "key_mask": 2}, k=k, v=v, key_mask=key_mask)
    if q.dim() != 4:
        _fail(op, f"q must have 4 dimensions (batch, kv_heads, rows, head_dim), got shape {tuple(q.shape)}")
    if key_mask is not None and key_mask.dtype != torch.bool:
        _fail(op, f"key_mask must be a bool tensor (True: the key takes part), got {key_mask.dtype}")
    scale = q.shape[-1] ** -0.5 if scale is None else _float(op, "scale", scale)
    out = _alloc(q.shape, q.dtype, q.device)
    part_ml = part_o = None
    if q.device.type == "cuda":
        q, k, v = (t if _rows16(t) else t.clone(memory_format=torch.contiguous_format) for t in (q, k, v))
        B, H, R, D = q.shape
        P = _attn_splits(q.device, B * H, k.shape[2])                    # k: 4-D (checked above)
        part_ml = torch.empty((B * H, P, R, 2), dtype=torch.float32, device=q.device)
        part_o = torch.empty((B * H, P, R, D), dtype=torch.float32, device=q.device)
    _call(op, q.device, op, [("out", out), ("q", q), ("k", k), ("v", v), ("key_mask", key_mask),
                             ("part_ml", part_ml), ("part_o", part_o)], scale)
    return out


@decode_attention.register_fake
def _(q, k, v, key_mask=None, scale=None):
    _fake_devices("decode_attention", q=q, k=k, v=v, key_mask=key_mask)
    return q.new_empty(q.shape)


_register_reference_autograd("decode_attention", reference.decode_attention, 5, (0, 1, 2, 3))


# ---- language-model loss ------------------------------------------------------------------------------------
def _ce_check(op: str, logits: Tensor, target: Tensor) -> None:
    _check_args(op, "logits", logits, {"logits": 2, "target": 1}, target=target)
    if target.dtype not in (torch.int64, torch.int32):
        _fail(op, f"target must hold class indices (int64 or int32), got {target.dtype}")
    if target.shape[0] != logits.shape[0]:
        _fail(op, f"target must have one entry per row of logits ({logits.shape[0]}), got shape {tuple(target.shape)}")


@torch.library.custom_op("jamba::cross_entropy", mutates_args=())
def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tuple[Tensor, Tensor]:
    """Cross entropy per row (the language-model loss before its mean): logits (N, V) f32/f16/bf16 with unit stride
    along V, target (N,) int64/int32. Returns (loss, lse), both (N,) fp32: lse[n] = log(sum_v exp(logits[n, v])),
    loss[n] = lse[n] - logits[n, target[n]], 0 where target[n] == ignore_index. fp32 math, one read of the logits.
    A target outside [0, V) that is not ignore_index raises on the CPU and gives a NaN loss on CUDA (no host sync).
    A NaN logit makes its row's lse and loss NaN (a row of NaNs too); a row of -inf has lse -inf and loss NaN (both
    as torch); an ignored row's loss is 0 whatever its logits. Logits whose rows are one row expanded (stride 0) are
    copied first. Differentiable in logits: the backward (cross_entropy_bwd) reads the logits once more and writes
    their gradient in their dtype; nothing but lse is kept beside the logits (F.cross_entropy(logits.float()) keeps
    an fp32 copy)."""
    op = "cross_entropy"
    _ce_check(op, logits, target)
    logits = _rows_apart(logits)
    N = logits.shape[0]
    loss = _alloc((N,), torch.float32, logits.device)
    lse = _alloc((N,), torch.float32, logits.device)
    _call(op, logits.device, op, [("loss", loss), ("lse", lse), ("logits", logits), ("target", target.contiguous())],
          _int(op, "ignore_index", ignore_index))
    return loss, lse


@cross_entropy.register_fake
def _(logits, target, ignore_index=-100):
    _fake_devices("cross_entropy", logits=logits, target=target)
    return logits.new_empty(logits.shape[:1], dtype=torch.float32), logits.new_empty(logits.shape[:1],
                                                                                      dtype=torch.float32)


@torch.library.custom_op("jamba::cross_entropy_bwd", mutates_args=())
def cross_entropy_bwd(logits: Tensor, target: Tensor, lse: Tensor, dloss: Tensor, ignore_index: int = -100) -> Tensor:
    """Gradient of cross_entropy's loss: (exp(logits - lse) - onehot(target)) * dloss per row, rounded once to the
    logits' dtype; 0 on the rows whose target is ignore_index. lse: cross_entropy's second output; dloss (N,) fp32.
    Returns (N, V) in the logits' dtype. A target outside [0, V) raises on the CPU, gives a NaN row on CUDA. A row
    whose lse is NaN or -inf (a NaN loss) gets NaN everywhere, -inf logits included, as torch's; an ignored row 0
    whatever its logits hold (torch: NaN where they hold a NaN)."""
    op = "cross_entropy_bwd"
    _ce_check(op, logits, target)
    logits = _rows_apart(logits)
    _check_args(op, "logits", logits, {"lse": 1, "dloss": 1}, lse=lse, dloss=dloss)
    out = _alloc(tuple(logits.shape), logits.dtype, logits.device)
    _call(op, logits.device, op, [("dlogits", out), ("logits", logits), ("target", target.contiguous()),
                                  ("lse", lse), ("dloss", dloss)], _int(op, "ignore_index", ignore_index))
    return out


@cross_entropy_bwd.register_fake
def _(logits, target, lse, dloss, ignore_index=-100):
    _fake_devices("cross_entropy_bwd", logits=logits, target=target, lse=lse, dloss=dloss)
    return logits.new_empty(logits.shape)


def _ce_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output[1])
    ctx.set_materialize_grads(False)  # lse unused downstream (the model): dlse None, not a zero tensor to add
    ctx.ignore_index = inputs[2] if len(inputs) > 2 else -100


def _ce_backward(ctx, dloss, dlse):
    logits, target, lse = ctx.saved_tensors
    if dloss is None:
        dloss = torch.zeros_like(lse)
    g = cross_entropy_bwd(logits, target, lse, dloss.to(torch.float32).contiguous(), ctx.ignore_index)
    if dlse is not None:  # lse used downstream too (rare)
        g = _ce_lse_grad(g, logits, lse, dlse)
    return g, None, None


def _ce_lse_grad(g: Tensor, logits: Tensor, lse: Tensor, dlse: Tensor) -> Tensor:
    """g + softmax(logits) * dlse per row (d lse / d logits = softmax), in fp32, rounded to the logits' dtype (torch
    ops: several fp32 passes over the logits, so the model never has autograd materialise a dlse)."""
    return (g.float() + torch.exp(logits.float() - lse[:, None]) * dlse.float()[:, None]).to(logits.dtype)


torch.library.register_autograd("jamba::cross_entropy", _ce_backward, setup_context=_ce_setup)


# ---- eager fast path ---------------------------------------------------------------------------------------
# A call through the torch dispatcher costs 8 us (rms_norm) to 55 us (selective_state_update: default
# filling, ADInplaceOrView, autograd wrappers) on top of the op itself: more than the kernels of a decode
# step. The public functions below skip it when nothing needs it: plain CPU/CUDA tensors, no gradient being
# recorded for them, no torch.compile tracing, no dispatch/function mode or functorch transform active.
# Otherwise they call the registered op (torch.ops.jamba.*), which opcheck, compile and autograd see.
_PLAIN = (Tensor, torch.nn.Parameter)
_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_fmodes = getattr(torch._C, "_is_torch_function_mode_enabled", lambda: False)
_functorch = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


# ---- sampling: one token a row, each row its own settings ----------------------------------------------------
SAMPLE_PARAMS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty")


def _check_sample_params(op: str, params: Tensor, rng: Optional[Tensor]) -> None:
    """sample_rows' settings on the CPU, as row_sampling.check takes them (NaN fails every rule): a bad value named
    with its row, instead of the kernel's reading of it (a NaN or negative temperature, or top_p <= 0, ran greedy; a
    repetition penalty of 0 divided by it)."""
    if params.dim() != 2 or params.shape[1] != len(SAMPLE_PARAMS) or params.dtype != torch.float32:
        return                                               # (the C check names the shape / dtype)
    t, k, tp, mp, rp, pp, fp = params.double().unbind(1)
    fin = torch.isfinite
    rules = ((t >= 0) & fin(t), (k >= 0) & fin(k) & (k == k.floor()), (tp > 0) & (tp <= 1), (mp >= 0) & (mp <= 1),
             (rp > 0) & fin(rp), fin(pp), fin(fp))
    what = ("a number >= 0 (0: greedy)", "a whole number >= 0 (0: off)", "a number in (0, 1] (1: off)",
            "a number in [0, 1] (0: off)", "a finite number > 0 (1: off)", "a finite number (0: off)",
            "a finite number (0: off)")
    for j, ok in enumerate(rules):
        if not bool(ok.all()):
            r = int((~ok).nonzero()[0, 0])
            _fail(op, f"params[{r}, {j}] ({SAMPLE_PARAMS[j]}): expected {what[j]}, got {float(params[r, j])}")
    if rng is not None and rng.dtype == torch.int64 and rng.numel() and bool((rng < 0).any()):
        _fail(op, "rng: each row's key and counter must be >= 0 (as seed and offset)")


@torch.library.custom_op("jamba::sample_rows", mutates_args=())
def sample_rows(logits: Tensor, params: Tensor, seen: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                seed: int = 0, offset: int = 0, rng: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One token per row of logits (R, V) f32/f16/bf16 (unit stride along V), each row with its own settings: params
    (R, 7) fp32, a row's SAMPLE_PARAMS (temperature 0: greedy; top_k 0, top_p 1, min_p 0, penalties 1 / 0 / 0: off;
    checked here on the CPU, not on a GPU, where jamba_ext.row_sampling.check is the way to validate them); seen
    (R, V) bool (repetition_penalty: the row's prompt and new tokens) and counts (R, V) int32 (presence / frequency
    penalties: the row's new tokens), each optional. seed, offset: the draws' Philox key and counter, ints in
    [0, 2^63) (a new offset a step: the same pair draws the same). rng (R, 2) int64, optional: each row's own key and
    counter instead (row r draws as row 0 of a call with seed rng[r, 0] and offset rng[r, 1]: its draws do not depend
    on its place in the batch -- a request's own seed). Returns (tokens (R,) int64, tau (R,) fp32: the smallest score
    kept, on the penalised logits / temperature scale; greedy rows: the argmax's penalised logit). One kernel, no
    host synchronisation; exact semantics in csrc/jamba.h (transformers' repetition penalty, top_k, top_p and min_p
    in its order; OpenAI's presence and frequency penalties; a Gumbel-max draw from the softmax of the kept scores).
    NaN: a NaN logit (or penalised logit) counts as -inf, greedy or sampled: never the argmax, never drawn while the
    row has a finite one. A row whose logits are all NaN / -inf gives token 0 and tau -inf in either mode."""
    op = "sample_rows"
    _check_args(op, "logits", logits, {"logits": 2, "params": 2, "seen": 2, "counts": 2, "rng": 2}, params=params,
                seen=seen, counts=counts, rng=rng)
    if seen is not None and seen.dtype != torch.bool:
        _fail(op, f"seen must be a bool tensor, got {seen.dtype}")
    for name, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 63:
            _fail(op, f"{name} must be an int in [0, 2^63), got {v!r}")
    if params.device.type == "cpu" and not _compiling():     # (on a GPU they stay unchecked: no host reads)
        _check_sample_params(op, params, rng)
    R = logits.shape[0]
    tokens = _alloc((R,), torch.int64, logits.device)
    tau = _alloc((R,), torch.float32, logits.device)
    ws = _alloc((R * logits.shape[1],), torch.float32, logits.device) if logits.is_cuda else None
    _call(op, logits.device, op, [("tokens", tokens), ("tau", tau), ("logits", logits), ("params", params),
                                  ("seen", None if seen is None else seen.view(torch.uint8)), ("counts", counts),
                                  ("ws", ws), ("rng", rng)], seed, offset)
    return tokens, tau


@sample_rows.register_fake
def _(logits, params, seen=None, counts=None, seed=0, offset=0, rng=None):
    _fake_devices("sample_rows", logits=logits, params=params, seen=seen, counts=counts, rng=rng)
    R = logits.shape[0]
    return logits.new_empty((R,), dtype=torch.int64), logits.new_empty((R,), dtype=torch.float32)


def _eager_ok(args, kwargs) -> bool:
    if _compiling() or _modes() or _fmodes() or _functorch():
        return False
    grad = torch.is_grad_enabled()
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            if type(a) not in _PLAIN or a.device.type not in ("cpu", "cuda") or (grad and a.requires_grad):
                return False
    return True


def _fast_path(op_def):
    impl = op_def._init_fn

    def call(*args, **kwargs):
        return impl(*args, **kwargs) if _eager_ok(args, kwargs) else op_def(*args, **kwargs)

    call.__name__, call.__qualname__, call.__doc__ = impl.__name__, impl.__qualname__, impl.__doc__
    call.__wrapped__ = impl          # (inspect.signature / help() show the op's own arguments)
    call.custom_op = op_def          # the registered torch custom op (torch.ops.jamba.<name>)
    return call


rms_norm = _fast_path(rms_norm)
rms_norm_segments = _fast_path(rms_norm_segments)
add_rms_norm = _fast_path(add_rms_norm)
causal_conv1d = _fast_path(causal_conv1d)
causal_conv1d_update = _fast_path(causal_conv1d_update)
selective_scan = _fast_path(selective_scan)
selective_state_update = _fast_path(selective_state_update)
selective_scan_bwd = _fast_path(selective_scan_bwd)
rms_norm_bwd = _fast_path(rms_norm_bwd)            # the backward ops run with grad mode off: eager calls skip the
causal_conv1d_bwd = _fast_path(causal_conv1d_bwd)  # dispatcher (its ~20 us a call weighed in the host-bound
silu_mul_bwd = _fast_path(silu_mul_bwd)            # 512-token training step); traced backwards keep the ops
mamba_inner_step = _fast_path(mamba_inner_step)
moe_route = _fast_path(moe_route)
moe_permute = _fast_path(moe_permute)
moe_experts = _fast_path(moe_experts)
silu_mul = _fast_path(silu_mul)
moe_combine = _fast_path(moe_combine)
moe_grad_rows = _fast_path(moe_grad_rows)
gemv = _fast_path(gemv)
decode_attention = _fast_path(decode_attention)
cross_entropy = _fast_path(cross_entropy)
cross_entropy_bwd = _fast_path(cross_entropy_bwd)
sample_rows = _fast_path(sample_rows)
dequant_fp8 = _fast_path(dequant_fp8)
moe_experts_fp8 = _fast_path(moe_experts_fp8)
