"""Running transformers' own Jamba on the jamba_ext ops.

Two ways, usable together:

1. `swap_modules(hf_model)`: given a transformers JambaForCausalLM / JambaModel (4.x or 5.x), replaces, in
   place, every Mamba mixer, sparse-MoE block and RMSNorm with a jamba_ext module that holds the SAME
   parameter objects (no copy; state_dict keys unchanged). transformers' forward and generate() then run
   our mixers, MoE and norms; attention, embeddings, masks, cache and sampling stay transformers'. On a
   JambaForCausalLM (transformers >= 4.46) the training loss becomes causal_lm_loss (jamba.cross_entropy on the
   logits in their dtype, no fp32 copy; loss=False keeps transformers').
   The swapped mixer reads and writes transformers' own cache: the 5.x DynamicCache linear-attention
   layers (get_conv_state / update_conv_state / get_recurrent_state / update_recurrent_state) and the
   4.x / early-5.x HybridMambaAttentionDynamicCache (conv_states / ssm_states lists).
   A transformers 4.x per-expert MoE (experts = ModuleList of MLPs) is fused once: its expert weights are
   re-pointed (param.data) into views of one (E, 2F, H) / (E, H, F) buffer, so the Parameter objects stay
   the same and the swapped block reads them without a per-call copy (under grad mode, with the weights
   requiring grad, it stacks them each call instead, so that their gradients reach them).

       model = transformers.JambaForCausalLM.from_pretrained(...)
       from jamba_ext.integrations.transformers import swap_modules
       swap_modules(model)
       model.generate(...)                       # transformers' generate, our kernels

2. `patch_kernel_functions()`: transformers looks up the Mamba kernels by module-level name in
   transformers.models.jamba.modeling_jamba. In 5.24 (checked here) they are bound when that module is
   imported, by `use_kernel_func_from_hub_with_fallback` (integrations/hub_kernels.py): it tries the
   `causal_conv1d` and `mamba_ssm` packages (Hub kernels first with use_kernels=True) and otherwise
   keeps a PyTorch loop; the mixer then calls the module globals `causal_conv1d_fn`,
   `causal_conv1d_update`, `mamba_selective_scan` (selective_scan_fn) and `mamba_selective_state_update`
   (selective_state_update) at call time. Earlier releases (4.x, early 5.x) import `causal_conv1d_fn`,
   `causal_conv1d_update`, `selective_scan_fn`, `selective_state_update` under those names and take
   the CUDA path only when `is_fast_path_available`. `patch_kernel_functions()` rebinds
   whichever of these names the installed module has to the adapters below (mamba_ssm / causal-conv1d
   call signatures, backed by jamba_ext.ops) and sets is_fast_path_available when present, so the
   unmodified transformers mixer runs our kernels (a version with none of these names raises
   RuntimeError: use swap_modules there). Early 5.x releases (5.0 checked) resolve those names again in
   the mixer's __init__ (lazy_load_kernel), so there patch after building the model; they, like 4.x, take
   the kernel path only on CUDA and with config.use_mamba_kernels. It returns a handle whose .restore()
   undoes it; it is also a context manager:

       with patch_kernel_functions():
           model(input_ids)

   Equivalent by hand: `import transformers.models.jamba.modeling_jamba as m;
   m.mamba_selective_scan = jamba_ext.integrations.transformers.selective_scan_fn` (and so on).

The adapters also serve any other code written against mamba_ssm / causal-conv1d:
   causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                    final_states_out=None, activation=None)
   causal_conv1d_update(x, conv_state, weight, bias=None, activation=None)
   selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                     return_last_state=False)
   selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False)
Inputs with a non-unit stride along time (transformers passes transposed views) are copied once,
here, because the kernels need unit stride there.
"""
import sys
import types
from typing import Optional

import torch
from torch import Tensor, nn

from .. import modeling_jamba as _mj
from .. import ops as _ops

__all__ = ["swap_modules", "patch_kernel_functions", "causal_lm_loss", "causal_conv1d_fn", "causal_conv1d_update",
           "selective_scan_fn", "selective_state_update"]


# ---- kernel-function adapters (mamba_ssm / causal-conv1d signatures) -----------------------------------
def _silu_flag(activation) -> bool:
    if activation in (None, False):
        return False
    if activation in ("silu", "swish", True):
        return True
    raise ValueError(f"jamba_ext causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")


def _unit_last(t: Optional[Tensor]) -> Optional[Tensor]:
    """The kernels need unit stride along the last dim; transformers hands over transposed views."""
    return t if t is None or t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _no_packing(op: str, **kw) -> None:
    for k, v in kw.items():
        if v is not None:
            raise NotImplementedError(f"jamba_ext {op}: `{k}` (packed / indexed batches) is not supported")


def causal_conv1d_fn(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, seq_idx=None,
                     initial_states: Optional[Tensor] = None, return_final_states: bool = False,
                     final_states_out: Optional[Tensor] = None, activation=None, **kwargs):
    """x (B, DI, L), weight (DI, K) -> out (B, DI, L) [, final_states (B, DI, K-1)]."""
    _no_packing("causal_conv1d_fn", seq_idx=seq_idx, cu_seqlens=kwargs.get("cu_seqlens"))
    K = weight.shape[-1]
    out, final = _ops.causal_conv1d(_unit_last(x), weight, bias, _unit_last(initial_states), _silu_flag(activation),
                                    K - 1 if return_final_states else 0)
    if not return_final_states:
        return out
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                         activation=None, cache_seqlens=None, conv_state_indices=None, **kwargs) -> Tensor:
    """x (B, DI) or (B, DI, L); conv_state (B, DI, S) updated in place -> out shaped like x."""
    _no_packing("causal_conv1d_update", cache_seqlens=cache_seqlens, conv_state_indices=conv_state_indices)
    return _ops.causal_conv1d_update(_unit_last(x) if x.dim() == 3 else x, conv_state, weight, bias,
                                     _silu_flag(activation))


def _bc(t: Tensor, name: str) -> Tensor:
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise NotImplementedError(f"jamba_ext selective_scan_fn: {name} with {t.shape[1]} groups "
                                      "(only 1 group, as Jamba uses)")
        return t[:, 0]
    if t.dim() != 3:
        raise NotImplementedError(f"jamba_ext selective_scan_fn: {name} must be input-dependent (B, N, L), "
                                  f"got shape {tuple(t.shape)}")
    return t


def selective_scan_fn(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                      z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                      delta_softplus: bool = False, return_last_state: bool = False, **kwargs):
    """u, delta, z (B, DI, L); A (DI, N); B, C (B, N, L) or (B, 1, N, L) -> out [, last_state fp32]."""
    out, last = _ops.selective_scan(_unit_last(u), _unit_last(delta), A.float(), _bc(B, "B"), _bc(C, "C"),
                                    None if D is None else D.float(), _unit_last(z),
                                    None if delta_bias is None else delta_bias.float(), bool(delta_softplus),
                                    None)
    return (out, last) if return_last_state else out


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                           dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                           state_batch_indices=None, **kwargs) -> Tensor:
    """state (B, DI, N) updated in place; x, dt, z (B, DI); B, C (B, N) -> out (B, DI)."""
    _no_packing("selective_state_update", state_batch_indices=state_batch_indices)
    if x.dim() != 2:
        raise NotImplementedError(f"jamba_ext selective_state_update: x must be (batch, dim) (Mamba-1), "
                                  f"got shape {tuple(x.shape)}")
    return _ops.selective_state_update(state, _unit_last(x), _unit_last(dt), A.float(), _unit_last(B),
                                       _unit_last(C), None if D is None else D.float(), _unit_last(z),
                                       None if dt_bias is None else dt_bias.float(), bool(dt_softplus))


_PATCH_NAMES = {
    "causal_conv1d_fn": causal_conv1d_fn,
    "causal_conv1d_update": causal_conv1d_update,
    "selective_scan_fn": selective_scan_fn,
    "mamba_selective_scan": selective_scan_fn,
    "selective_state_update": selective_state_update,
    "mamba_selective_state_update": selective_state_update,
}


class _Patch:
    """A patch_kernel_functions() handle. Handles of one module share its originals (_PATCHED): the functions stay ours
    while any handle is alive and the originals come back when the last one is restored, in whatever order."""

    def __init__(self, module, names):
        self.module, self.names = module, sorted(names)

    def restore(self) -> None:
        entry = _PATCHED.get(id(self.module))
        if entry is None or self not in entry[2]:
            return                                        # restored already
        entry[2].remove(self)
        if not entry[2]:
            for k, v in entry[1].items():
                setattr(self.module, k, v)
            del _PATCHED[id(self.module)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


_PATCHED = {}   # id(module) -> (module, {name: original}, [live handles])


def patch_kernel_functions(module=None) -> _Patch:
    """Rebinds transformers' Jamba kernel globals to jamba_ext (see the module docstring). module: the
    transformers modeling module (default transformers.models.jamba.modeling_jamba). Returns a handle
    with .names (what was patched) and .restore(); nested or overlapping handles restore the originals once the
    last of them is restored."""
    if module is None:
        import transformers.models.jamba.modeling_jamba as module
    if not isinstance(module, types.ModuleType):
        raise TypeError("patch_kernel_functions(module): module is the transformers modeling module (default "
                        f"transformers.models.jamba.modeling_jamba), not a {type(module).__name__}; "
                        "to run a model on jamba_ext modules use swap_modules(model)")
    entry = _PATCHED.get(id(module)) or (module, {}, [])
    saved = entry[1]                                      # the originals: what the first live handle found
    for name, fn in _PATCH_NAMES.items():
        if hasattr(module, name):
            saved.setdefault(name, getattr(module, name))
            setattr(module, name, fn)
    if hasattr(module, "is_fast_path_available"):
        saved.setdefault("is_fast_path_available", module.is_fast_path_available)
        module.is_fast_path_available = True
    if not saved:
        raise RuntimeError(f"{module.__name__} has none of the kernel names {sorted(_PATCH_NAMES)}; this "
                           "transformers version resolves its Mamba kernels differently: use swap_modules()")
    handle = _Patch(module, saved)
    entry[2].append(handle)
    _PATCHED[id(module)] = entry
    return handle


# ---- module swap ---------------------------------------------------------------------------------------
class _HFCache:
    """transformers' cache APIs for a Mamba layer behind one small interface (layer idx fixed):
    'get'    -- get_conv_state / get_recurrent_state accessors (5.2x);
    'layers' -- has_previous_state(layer_idx) and layers[i].conv_states[0] / recurrent_states[0] (5.1x);
    'legacy' -- HybridMambaAttentionDynamicCache lists conv_states[i] / ssm_states[i] (4.x)."""

    def __init__(self, cache, idx: int):
        self.c, self.i = cache, idx
        if hasattr(cache, "get_conv_state"):
            self.api = "get"
        elif hasattr(cache, "update_conv_state") and hasattr(cache, "layers"):
            self.api = "layers"
        else:
            self.api = "legacy"
        self.new_api = self.api != "legacy"

    def states(self):
        """(conv_state, ssm_state) when the layer has a previous state, else (None, None)."""
        c, i = self.c, self.i
        if self.api == "get":
            conv = c.get_conv_state(i)
            return (conv, c.get_recurrent_state(i)) if conv is not None else (None, None)
        if self.api == "layers":
            hp = c.has_previous_state
            if not (hp(i) if callable(hp) else bool(hp)):
                return None, None
            layer = c.layers[i]
            conv, rec = layer.conv_states, layer.recurrent_states
            if isinstance(conv, dict):
                conv, rec = conv.get(0), rec.get(0)
            return (conv, rec) if conv is not None else (None, None)
        if getattr(c, "has_previous_state", False):
            return c.conv_states[i], c.ssm_states[i]
        return None, None

    def recording(self) -> bool:
        if self.api == "get":
            return bool(getattr(self.c, "is_recording_past", lambda i: False)(self.i))
        if self.api == "layers":
            return bool(getattr(self.c.layers[self.i], "record_past", False))
        return False

    def store(self, conv_final: Tensor, ssm_final: Tensor, new_inputs: Optional[Tensor] = None) -> None:
        """conv_final (B, DI, K): the last K (masked) pre-conv inputs, already continued from any previous
        state, so handing it to update_conv_state as the "new inputs" leaves exactly it in the cache. While the
        cache records its past (it then appends the inputs handed to it), new_inputs (B, DI, L): this call's."""
        c, i = self.c, self.i
        if self.new_api:
            c.update_conv_state(conv_final if new_inputs is None else new_inputs, i,
                                conv_kernel_size=conv_final.shape[-1])
            c.update_recurrent_state(ssm_final, i)
        else:
            c.conv_states[i].copy_(conv_final)
            c.ssm_states[i] = ssm_final           # fp32, as transformers' slow path leaves it


class HFJambaMambaMixer(_mj.JambaMambaMixer):
    """Our mixer over a transformers mixer's submodules and parameters (shared, not copied), speaking
    transformers' mixer call convention and cache."""

    def __init__(self, hf_mixer: nn.Module):
        nn.Module.__init__(self)
        self.layer_idx = hf_mixer.layer_idx
        self.hidden_size = hf_mixer.hidden_size
        self.intermediate_size = hf_mixer.intermediate_size
        self.ssm_state_size = hf_mixer.ssm_state_size
        self.conv_kernel_size = hf_mixer.conv_kernel_size
        self.time_step_rank = hf_mixer.time_step_rank
        for name, p in hf_mixer.named_parameters(recurse=False):     # A_log, D (order kept: same state_dict)
            setattr(self, name, p)
        for name, m in hf_mixer.named_children():                     # in_proj, conv1d, ..., c_layernorm
            setattr(self, name, m)
        self.config = getattr(hf_mixer, "config", None)

    def forward(self, hidden_states: Tensor, cache=None, attention_mask: Optional[Tensor] = None,
                cache_params=None, past_key_values=None, **kwargs) -> Tensor:
        with _mj._AmpScope(hidden_states.device.type):   # under torch.autocast: one dtype per op (see _mj)
            return self._forward(hidden_states, cache, attention_mask, cache_params, past_key_values)

    def _forward(self, hidden_states, cache, attention_mask, cache_params, past_key_values) -> Tensor:
        cache = next((c for c in (cache, cache_params, past_key_values) if c is not None), None)
        L = hidden_states.shape[1]
        hc = _HFCache(cache, self.layer_idx) if cache is not None else None
        conv, ssm = hc.states() if hc is not None else (None, None)
        recording = hc is not None and hc.recording()
        if conv is not None and L == 1 and conv.shape[0] == hidden_states.shape[0] and not recording:
            return self.step(hidden_states, conv, ssm)
        mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 and L > 1 else None
        if hc is None:
            return self.prefill(hidden_states, mask, keep_state=False)[0]
        new_inputs = None
        if recording:   # the cache keeps every pre-conv input (for a crop): continue from the last K, add this call's
            conv = None if conv is None else _mj._last_steps(conv, None, self.conv_kernel_size)
            h = hidden_states if mask is None else hidden_states * mask[:, :, None].to(hidden_states.dtype)
            new_inputs = self.in_proj(h)[..., :self.intermediate_size].transpose(1, 2)
        out, conv_final, ssm_final = self.prefill(hidden_states, mask, conv, ssm, keep_state=True)
        hc.store(conv_final, ssm_final, new_inputs)
        return out


class HFJambaSparseMoeBlock(_mj.JambaSparseMoeBlock):
    """Our MoE over a transformers block's router and expert parameters (shared). Returns what the
    transformers version expects: a tensor (5.x) or (tensor, router_logits) (4.x)."""

    def __init__(self, hf_block: nn.Module):
        nn.Module.__init__(self)
        experts = hf_block.experts
        router = hf_block.router
        self.hidden_dim = router.weight.shape[1]
        self.num_experts = router.weight.shape[0]
        self.top_k = getattr(hf_block, "top_k", None) or getattr(router, "top_k")
        self.router = router
        if isinstance(experts, nn.ModuleList):                 # transformers 4.x: fuse once, keep the Parameters
            self._legacy_tuple = True
            self.experts = experts
            self._fused = _repoint_per_expert(experts)
        else:
            self._legacy_tuple = False
            self.experts = experts
            self._fused = None
        self.ffn_dim = self._weights()[1].shape[2]

    def _weights(self):
        if self._fused is not None:
            if torch.is_grad_enabled() and any(p.requires_grad for p in self.experts.parameters()):
                # training: the fused tensors rebuilt from the per-expert Parameters (a copy a call), so that
                # autograd reaches them (the buffer their .data points into is not part of the graph)
                return (torch.stack([torch.cat([ex.gate_proj.weight, ex.up_proj.weight]) for ex in self.experts]),
                        torch.stack([ex.down_proj.weight for ex in self.experts]))
            gu, down = self._fused
            first, last = self.experts[0], self.experts[-1]
            if (first.gate_proj.weight.data_ptr() != gu.data_ptr() or last.down_proj.weight.data_ptr() !=
                    down[-1].data_ptr() or first.gate_proj.weight.dtype != gu.dtype):
                # the Parameters were moved or cast since the swap (model.to(...), half(), a load that replaced
                # .data): fuse them again, so that the buffer is theirs
                self._fused = _repoint_per_expert(self.experts)
            return self._fused
        return self.experts.gate_up_proj, self.experts.down_proj

    def forward(self, hidden_states: Tensor):
        shape = hidden_states.shape
        gu, down = self._weights()
        with _mj._AmpScope(hidden_states.device.type):   # under torch.autocast: the experts' products in its dtype
            hidden_states, gu, down = _mj._amp_lowp(hidden_states, gu, down)
        out, logits = _mj._moe.sparse_moe_forward(hidden_states.reshape(-1, shape[-1]), self.router.weight,
                                                  gu, down, self.top_k)
        out = out.view(shape)
        if self._legacy_tuple:
            return out, logits
        if torch.is_grad_enabled() or _collecting_router_logits(self.router):
            # transformers 5.x records router logits (output_router_logits=True: the aux loss) with a forward hook
            # on the router module, which our fused op does not call: call it for its hook. Also whenever autograd
            # records, so that a checkpointed layer's recomputation (no collector active then) saves the same
            # tensors as its forward did; inference (no_grad) without the logits asked for skips it.
            self.router(hidden_states.reshape(-1, shape[-1]))
        return out


def _collecting_router_logits(router: nn.Module) -> bool:
    """Whether transformers 5.x collects router logits in this forward (its output-capturing hooks are active and
    asked for them). A transformers without that collector: whenever the router carries forward hooks."""
    capture = sys.modules.get("transformers.utils.output_capturing")
    active = getattr(capture, "_active_collector", None)
    if active is None:
        return bool(router._forward_hooks)
    collected = active.get()
    return collected is not None and "router_logits" in collected


def _repoint_per_expert(experts: nn.ModuleList):
    """Per-expert gate/up/down Linear weights -> views into fused (E, 2F, H) and (E, H, F) tensors. The
    Parameter objects keep their identity (their .data is re-pointed); one copy, at swap time."""
    E = len(experts)
    I, H = experts[0].gate_proj.weight.shape
    w = experts[0].gate_proj.weight
    gu = torch.empty(E, 2 * I, H, dtype=w.dtype, device=w.device)
    down = torch.empty(E, H, I, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        for e, ex in enumerate(experts):
            gu[e, :I].copy_(ex.gate_proj.weight)
            gu[e, I:].copy_(ex.up_proj.weight)
            down[e].copy_(ex.down_proj.weight)
            ex.gate_proj.weight.data = gu[e, :I]
            ex.up_proj.weight.data = gu[e, I:]
            ex.down_proj.weight.data = down[e]
    return gu, down


class HFJambaRMSNorm(_mj.JambaRMSNorm):
    """Our RMSNorm over a transformers norm's weight; under torch.autocast its input and weight in one dtype."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        with _mj._AmpScope(hidden_states.device.type):
            return super().forward(hidden_states)


def _swap_norm(hf_norm: nn.Module) -> _mj.JambaRMSNorm:
    n = HFJambaRMSNorm.__new__(HFJambaRMSNorm)
    nn.Module.__init__(n)
    n.weight = hf_norm.weight
    n.variance_epsilon = getattr(hf_norm, "variance_epsilon", getattr(hf_norm, "eps", 1e-6))
    return n


def causal_lm_loss(logits: Tensor, labels: Tensor, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                   shift_labels: Optional[Tensor] = None, **kwargs) -> Tensor:
    """transformers' ForCausalLMLoss (same signature and result: next-token cross entropy, labels of ignore_index
    left out, the mean, or the sum over num_items_in_batch when the Trainer passes it) through the model's own loss
    (modeling_jamba._lm_loss: jamba.cross_entropy reads the logits in their dtype, where transformers' copies them to
    fp32 first: at 8192 tokens of a 65536-word vocabulary 2 GiB more memory and ~9x the time of forward + backward;
    benchmarks/bench_kernels.py --only loss)."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return _mj._lm_loss(logits.reshape(-1, vocab_size), shift_labels.reshape(-1).to(logits.device),
                        num_items_in_batch, ignore_index)


def _swap_loss(hf_model: nn.Module) -> int:
    """Points a transformers causal-LM model's loss_function (a settable property since transformers 4.46) at
    causal_lm_loss; 0 where the model has none (older releases compute the loss inline) or it is already ours."""
    prop = getattr(type(hf_model), "loss_function", None)
    if not isinstance(prop, property) or prop.fset is None or not type(hf_model).__name__.endswith("ForCausalLM"):
        return 0
    if getattr(hf_model, "_loss_function", None) is causal_lm_loss:
        return 0
    hf_model.loss_function = causal_lm_loss
    return 1


def swap_modules(hf_model: nn.Module, mixers: bool = True, moe: bool = True, norms: bool = True,
                 loss: bool = True) -> dict:
    """Replaces transformers' JambaMambaMixer / JambaSparseMoeBlock / JambaRMSNorm modules of hf_model in
    place by jamba_ext modules sharing their parameters, and (loss, on a JambaForCausalLM of transformers >= 4.46)
    its loss_function by causal_lm_loss. Returns counts {'mixers': n, 'moe': n, 'norms': n, 'loss': 0 or 1}.
    Idempotent (already swapped modules are left alone). A model without Jamba modules raises TypeError."""
    if not isinstance(hf_model, nn.Module):
        raise TypeError(f"swap_modules expects a transformers Jamba model (an nn.Module), "
                        f"got {type(hf_model).__name__}")
    if not any(isinstance(m, (_mj.JambaMambaMixer, _mj.JambaSparseMoeBlock, _mj.JambaRMSNorm))
               or type(m).__name__ in ("JambaMambaMixer", "JambaSparseMoeBlock", "JambaRMSNorm")
               for m in hf_model.modules()):
        raise TypeError(f"swap_modules expects a transformers Jamba model (JambaForCausalLM, JambaModel, ...): "
                        f"{type(hf_model).__name__} has no JambaMambaMixer / JambaSparseMoeBlock / JambaRMSNorm module")
    counts = {"mixers": 0, "moe": 0, "norms": 0, "loss": _swap_loss(hf_model) if loss else 0}
    targets = []
    for name, mod in hf_model.named_modules():
        cls = type(mod).__name__
        if mixers and cls == "JambaMambaMixer" and not isinstance(mod, _mj.JambaMambaMixer):
            targets.append((name, "mixers"))
        elif moe and cls == "JambaSparseMoeBlock" and not isinstance(mod, _mj.JambaSparseMoeBlock):
            targets.append((name, "moe"))
        elif norms and cls == "JambaRMSNorm" and not isinstance(mod, _mj.JambaRMSNorm):
            targets.append((name, "norms"))
    # deepest first, so a mixer built after its inner norms were swapped picks up the swapped norms
    for name, kind in sorted(targets, key=lambda t: -t[0].count(".")):
        parent_name, _, attr = name.rpartition(".")
        parent = hf_model.get_submodule(parent_name) if parent_name else hf_model
        old = getattr(parent, attr)
        new = {"mixers": HFJambaMambaMixer, "moe": HFJambaSparseMoeBlock, "norms": _swap_norm}[kind](old)
        new.train(old.training)
        setattr(parent, attr, new)
        counts[kind] += 1
    return counts
