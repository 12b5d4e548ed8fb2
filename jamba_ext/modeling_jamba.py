"""The Jamba model (AI21, arXiv 2403.19887) on the jamba_ext native ops, HuggingFace-compatible.

    JambaConfig            reads a transformers config.json (same field names, defaults, layer schedule)
    JambaModel             embeddings -> decoder layers (Mamba | attention mixer, dense MLP | MoE) -> norm
    JambaForCausalLM       + lm_head; logits_to_keep, loss, from_pretrained(dir), save_pretrained,
                           generate (static_cache=, cuda_graph=: the decode step replayed from a CUDA graph),
                           quantize_experts("fp8") / from_pretrained(dir, experts_dtype="fp8"): MoE expert weights in
                           float8_e4m3fn with per-row scales (weight-only; JambaExperts.quantize_fp8_)
    dispatch(device_map) / from_pretrained(dir, device_map="auto")   the layers over several GPUs (jamba_ext.placement)
    JambaHybridCache       KV per attention layer, conv state (B, DI, K) + fp32 SSM state (B, DI, N) per Mamba layer;
                           static=True: fixed-size KV + device-side length/mask (CUDA-graph-capturable decode step)
    to_per_expert_state_dict(sd)   5.x fused expert layout -> transformers 4.x / on-disk per-expert keys

Parameter names are transformers' (model.layers.{i}.mamba.in_proj.weight, ...), so
`ours.load_state_dict(hf.state_dict(), strict=True)` and the reverse both work. Experts are stored in the
transformers 5.x fused layout (experts.gate_up_proj (E, 2F, H) gate rows first, experts.down_proj
(E, H, F)); per-expert keys (transformers 4.x, checkpoints on disk) are fused by a load_state_dict
pre-hook. Math: ../shared/docs/jamba-architecture.md section 4 (HF reference numerics); Mamba, conv,
norms and MoE go through jamba_ext.ops / jamba_ext.moe; attention through
F.scaled_dot_product_attention (GQA, causal, no positional embeddings).

Shape letters (csrc/jamba.h): B batch, L new tokens, P cached tokens, H hidden, DI mamba inner width,
N d_state, K conv width, R dt rank, E experts, F ffn width, V vocab, nh / nkv query / KV heads, hd head dim.
transformers is not needed at runtime; only the parity tests import it.
"""
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import numbers
import os
import pickle
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import logits_filters as _filters
from . import placement as _placement
from . import moe as _moe
from . import ops as _ops
from . import reference as _reference
from .tokenizer import read_json_object

if TYPE_CHECKING:
    from .beam_search import BeamGenerateOutput

__all__ = ["JambaConfig", "JambaModel", "JambaForCausalLM", "JambaHybridCache", "CausalLMOutput", "GenerateOutput",
           "to_per_expert_state_dict", "set_backend"]


# ---- op backend ----------------------------------------------------------------------------------------
class _ReferenceBackend:
    """reference.py behind the ops API (the slow path): the decode ops write their state back in place."""
    rms_norm = staticmethod(_reference.rms_norm)
    rms_norm_segments = staticmethod(_reference.rms_norm_segments)
    add_rms_norm = staticmethod(_reference.add_rms_norm)
    causal_conv1d = staticmethod(_reference.causal_conv1d)
    selective_scan = staticmethod(_reference.selective_scan)
    gemv = staticmethod(_reference.gemv)
    decode_attention = staticmethod(_reference.decode_attention)
    silu_mul = staticmethod(_reference.silu_mul)

    @staticmethod
    def causal_conv1d_update(x, conv_state, weight, bias=None, silu=True):
        out, new_state = _reference.causal_conv1d_update(x, conv_state, weight, bias, silu)
        conv_state.copy_(new_state)
        return out

    @staticmethod
    def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
        out, new_state = _reference.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
        state.copy_(new_state)
        return out


_BACKENDS = {"ops": _ops, "reference": _ReferenceBackend}
_K = _BACKENDS[os.environ.get("JAMBA_EXT_MODEL_BACKEND", "ops")]


def set_backend(name: str) -> None:
    """'ops' (native kernels, the default) or 'reference' (reference.py, slow; for debugging)."""
    global _K
    if name not in _BACKENDS:
        raise ValueError(f"set_backend: name must be one of {sorted(_BACKENDS)}, got {name!r}")
    _K = _BACKENDS[name]


def _torch_version() -> Tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


_SDPA_HAS_GQA = _torch_version() >= (2, 5)

# Decode steps (a few query rows against a KV length that grows every step) keep SDPA off the cuDNN
# backend: on the H200 (torch 2.11) SDPA picked cuDNN there, and cuDNN built a new execution plan for
# every new KV length, 133 ms of host time per attention call (benchmarks/profile_decode.py).
try:
    from torch.nn.attention import SDPBackend as _SDPBackend, sdpa_kernel as _sdpa_kernel

    _DECODE_SDPA_BACKENDS = [_SDPBackend.FLASH_ATTENTION, _SDPBackend.EFFICIENT_ATTENTION, _SDPBackend.MATH]
except ImportError:  # torch < 2.3
    _sdpa_kernel = None


# Prefills up to this many query rows keep SDPA off cuDNN too: cuDNN builds an execution plan for every new shape,
# 64-76 ms of host time the first time a prompt length is seen, while flash attention has no plan to build (H200,
# bf16, 32 x 8 heads of 128, causal, batch 1; dev/sdpa_prefill_probe.py, benchmarks/results/sdpa_prefill_probe.log):
# first call / steady per layer, cuDNN 66 / 0.13 ms at 2K, 64.6 / 0.99 at 8K, 76 / 14.1 at 32K; flash 0.31 / 0.24,
# 1.9 / 1.9, 29 / 25.7. A new prompt length is the common case outside benchmarks (every request of a server), and
# Jamba-v0.1's 4 attention layers make flash the faster choice for a first call up to ~40K keys. Prefills with a
# padding mask (left-padded batches: generate_many, continuous batching's grouped prefills) take the memory-efficient
# kernel instead (flash takes no mask; session 52: with cuDNN every new (batch, length) of a left-padded group paid
# the plan, and continuous batching's grouped prefills ran slower than one prompt at a time). Longer prompts keep
# SDPA's own choice. Env JAMBA_EXT_PREFILL_NO_CUDNN_MAX (read at import) moves the limit; 0 leaves every prefill to
# SDPA's choice (A/B); JAMBA_EXT_PREFILL_MASK_CUDNN=1 leaves the masked ones to it (A/B).
_PREFILL_NO_CUDNN_MAX = int(os.environ.get("JAMBA_EXT_PREFILL_NO_CUDNN_MAX", "32768"))
_PREFILL_MASK_CUDNN = os.environ.get("JAMBA_EXT_PREFILL_MASK_CUDNN", "0") == "1"


def _sdpa_backends(L: int, masked: bool):
    """The SDPA backends a CUDA attention call of L query rows is restricted to (None: SDPA's own choice)."""
    if _sdpa_kernel is None:
        return None
    if L <= 16 or (L <= _PREFILL_NO_CUDNN_MAX and not (masked and _PREFILL_MASK_CUDNN)):
        return _DECODE_SDPA_BACKENDS
    return None


def _sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], is_causal: bool, gqa: bool,
          dropout_p: float = 0.0) -> Tensor:
    kw = dict(attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)
    if gqa:
        kw["enable_gqa"] = True
    backends = _sdpa_backends(q.shape[-2], attn_mask is not None) if q.is_cuda else None
    if backends is not None:
        with _sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _sdpa_offset_causal(q: Tensor, k: Tensor, v: Tensor, gqa: bool, dropout_p: float = 0.0) -> Tensor:
    """Causal attention of L new queries against P + L keys (query i sees keys <= P + i), with no padding: a chunk of a
    chunked prefill. torch's lower-right causal bias runs flash attention (GQA included) without materialising the
    (L, P + L) mask, which at long contexts would take gigabytes (a 16K chunk after 240K tokens: 4 GB as bool); where
    flash does not apply, torch materialises it."""
    from torch.nn.attention.bias import causal_lower_right          # torch >= 2.3
    kw = {"enable_gqa": True} if gqa else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[-2], k.shape[-2]),
                                          dropout_p=dropout_p, **kw)


# ---- configuration -------------------------------------------------------------------------------------
_DEFAULTS = dict(
    vocab_size=65536, tie_word_embeddings=False, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
    initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, num_logits_to_keep=1,
    output_router_logits=False, router_aux_loss_coef=0.001, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    sliding_window=None, max_position_embeddings=262144, attention_dropout=0.0, num_experts_per_tok=2,
    num_experts=16, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4,
    use_mamba_kernels=True, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto",
    mamba_conv_bias=True, mamba_proj_bias=False,
)
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "num_experts_per_tok", "num_experts", "expert_layer_period",
                  "attn_layer_period", "mamba_d_state", "mamba_d_conv", "mamba_expand", "mamba_dt_rank")
_BOOLS = ("tie_word_embeddings", "use_cache", "output_router_logits", "use_mamba_kernels", "mamba_conv_bias",
          "mamba_proj_bias")
# properties computed from the fields above: a config may list them (a config.json written by other code), but only
# with the value they derive to
_DERIVED = ("layers_block_type", "layers_num_experts", "layer_types", "head_dim", "mamba_d_inner", "eos_token_ids")


def _local_path(path) -> str:
    """A str or pathlib.Path location as a str, "~" expanded as a shell would: unexpanded, "~/ckpt" was reported
    missing, and save_pretrained("~/ckpt") wrote into a directory named "~" under the working directory."""
    return os.path.expanduser(os.fspath(path))


def _typo_warning(keys: Iterable[str], values: dict) -> None:
    """A warning for each unknown key that is one typo away from a field (hiden_size would otherwise be kept as an
    attribute while hidden_size silently stays 4096); keys of other libraries' configs have no close field."""
    import difflib
    for k in keys:
        if k in _DEFAULTS or k.endswith("_token_id"):
            continue
        close = difflib.get_close_matches(k, list(_DEFAULTS), n=1, cutoff=0.8)
        if close:
            warnings.warn(f"JambaConfig: unknown field {k!r} (kept as an attribute, not used); did you mean "
                          f"{close[0]!r}? ({close[0]} is {values[close[0]]!r})", stacklevel=3)


class JambaConfig:
    """Jamba hyper-parameters with transformers' field names and defaults (jamba-architecture.md 1.1).

    JambaConfig(**fields) or JambaConfig.from_json_file(path) / from_pretrained(dir) / from_dict(d).
    Unknown keys of a config.json (architectures, dtype, transformers_version, ...) are kept as
    attributes. Bad values raise ValueError naming the field. "num_local_experts" is an alias of
    num_experts; mamba_dt_rank "auto" resolves to ceil(hidden_size / 16).
    """
    model_type = "jamba"

    def __init__(self, **kwargs):
        if "num_local_experts" in kwargs:
            alias = kwargs.pop("num_local_experts")
            if "num_experts" in kwargs and kwargs["num_experts"] != alias:
                raise ValueError(f"JambaConfig.num_experts: {kwargs['num_experts']} disagrees with its alias "
                                 f"num_local_experts {alias}")
            kwargs["num_experts"] = alias
        kwargs.pop("model_type", None)
        derived = {k: kwargs.pop(k) for k in _DERIVED if k in kwargs}
        values = dict(_DEFAULTS)
        values.update(kwargs)
        _typo_warning(kwargs, values)
        for k, v in values.items():
            setattr(self, k, v)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.mamba_dt_rank == "auto":
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16) if isinstance(self.hidden_size, int) else None
        self.validate()
        for k, v in derived.items():
            want = getattr(self, k)
            if (list(v) if isinstance(v, (list, tuple)) else v) != want:
                raise ValueError(f"JambaConfig.{k}: this value is derived from the other fields, which give "
                                 f"{want!r}; got {v!r} (leave it out, or change the fields it comes from)")

    # -- validation
    def validate(self) -> None:
        def bad(field, expected):
            raise ValueError(f"JambaConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        for f in _POSITIVE_INTS:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(f, "a positive int")
        for f in _BOOLS:
            if not isinstance(getattr(self, f), bool):
                bad(f, "a bool")
        for f, period in (("attn_layer_offset", "attn_layer_period"), ("expert_layer_offset", "expert_layer_period")):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(f, "a non-negative int")
            if v >= getattr(self, period):
                bad(f, f"a value smaller than {period} ({getattr(self, period)})")
        if self.hidden_size % self.num_attention_heads:
            bad("num_attention_heads", f"a divisor of hidden_size ({self.hidden_size})")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"a divisor of num_attention_heads ({self.num_attention_heads})")
        # (only where a layer is MoE: transformers' dense configs, num_experts=1, keep the default top-k 2)
        if self.num_experts_per_tok > self.num_experts and max(self.layers_num_experts) > 1:
            bad("num_experts_per_tok", f"at most num_experts ({self.num_experts})")
        if not 2 <= self.mamba_d_conv <= 4:
            bad("mamba_d_conv", "2, 3 or 4 (the conv kernels keep the taps in registers)")
        if self.mamba_d_state > 256:
            bad("mamba_d_state", "at most 256 (JAMBA_MAX_D_STATE)")
        if self.hidden_act not in ("silu", "swish"):
            bad("hidden_act", "'silu' (the Mamba kernels hard-wire SiLU, as mamba_ssm does)")
        if not isinstance(self.rms_norm_eps, (int, float)) or isinstance(self.rms_norm_eps, bool) \
                or not self.rms_norm_eps > 0:
            bad("rms_norm_eps", "a positive float")
        if isinstance(self.initializer_range, bool) or not isinstance(self.initializer_range, (int, float)) \
                or not 0 <= self.initializer_range < math.inf:             # (NaN: NaN weights from from_config)
            bad("initializer_range", "a non-negative float")
        if isinstance(self.router_aux_loss_coef, bool) or not isinstance(self.router_aux_loss_coef, (int, float)) \
                or not math.isfinite(self.router_aux_loss_coef):
            bad("router_aux_loss_coef", "a finite float")
        if isinstance(self.attention_dropout, bool) or not isinstance(self.attention_dropout, (int, float)) \
                or not 0 <= self.attention_dropout < 1:
            bad("attention_dropout", "a float in [0, 1) (dropout on the attention weights in training)")
        for f in ("pad_token_id", "bos_token_id"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                bad(f, "an int or null")
        eos = self.eos_token_id
        if eos is not None and not (isinstance(eos, int) or
                                    (isinstance(eos, (list, tuple)) and all(isinstance(e, int) for e in eos))):
            bad("eos_token_id", "an int, a list of ints or null")
        if self.pad_token_id is not None and not -self.vocab_size <= self.pad_token_id < self.vocab_size:
            bad("pad_token_id", f"an id below vocab_size ({self.vocab_size})")

    # -- derived quantities (exactly as transformers)
    @property
    def layers_block_type(self) -> List[str]:
        return ["attention" if i % self.attn_layer_period == self.attn_layer_offset else "mamba"
                for i in range(self.num_hidden_layers)]

    @property
    def layers_num_experts(self) -> List[int]:
        return [self.num_experts if i % self.expert_layer_period == self.expert_layer_offset else 1
                for i in range(self.num_hidden_layers)]

    @property
    def layer_types(self) -> List[str]:
        return ["linear_attention" if t == "mamba" else "full_attention" for t in self.layers_block_type]

    @property
    def num_local_experts(self) -> int:
        return self.num_experts

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_expand * self.hidden_size

    @property
    def eos_token_ids(self) -> List[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    # transformers' PretrainedConfig fields and helpers that libraries read (PEFT, the Trainer, evaluation harnesses)
    is_encoder_decoder = False
    use_return_dict = True
    _commit_hash = None                    # (transformers 4.x's pipeline reads these three)
    task_specific_params = None
    prefix = None

    def get_text_config(self, *args, **kwargs) -> "JambaConfig":
        return self

    # -- (de)serialisation
    def to_dict(self) -> dict:
        # (a torch.dtype, JambaConfig(torch_dtype=torch.bfloat16) as transformers takes it, by its name as transformers
        # writes it: json cannot hold the object)
        d = {k: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else v
             for k, v in vars(self).items() if not k.startswith("_")}
        d["model_type"] = "jamba"
        return d

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json's text (transformers' name; every field, whatever use_diff says)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "JambaConfig":
        d = dict(d)
        mt = d.get("model_type", "jamba")
        if mt != "jamba":
            raise ValueError(f"JambaConfig.model_type: expected 'jamba', got {mt!r}")
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: str) -> "JambaConfig":
        """A config.json file (a str or pathlib.Path; "~" expanded, as from_pretrained does: it was a missing file)."""
        return cls.from_dict(read_json_object(_local_path(path)))

    @classmethod
    def from_pretrained(cls, path: str) -> "JambaConfig":
        path = _local_path(path)
        p = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no config.json in {path!r}")
        return cls.from_json_file(p)

    def save_pretrained(self, path: str) -> None:
        path = _local_path(path)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write(self.to_json_string())

    def to_transformers(self):
        """The equivalent transformers.JambaConfig (needs transformers)."""
        from transformers import JambaConfig as HFJambaConfig
        d = {k: v for k, v in self.to_dict().items() if k in _DEFAULTS}
        try:
            return HFJambaConfig(**d)
        except (TypeError, ValueError):                          # a version without some legacy fields
            known = HFJambaConfig().to_dict()
            return HFJambaConfig(**{k: v for k, v in d.items() if k in known})

    def __repr__(self) -> str:
        return f"JambaConfig({json.dumps(self.to_dict(), sort_keys=True, default=str)})"


# ---- cache ---------------------------------------------------------------------------------------------
class JambaHybridCache:
    """Inference state of one batch.

    Attention layer i: keys/values (B, nkv, P, hd) in model dtype, stored before GQA repetition, in
    buffers grown by doubling (or sized once from max_length). Mamba layer i: conv_states[i]
    (B, DI, K), the last K pre-conv inputs in model dtype (the transformers layout); ssm_states[i]
    (B, DI, N) fp32. key_mask (B, P) bool, or None when no position is padding.

    static=True (needs max_length): the static decode mode, for CUDA-graph capture. The KV buffers are
    allocated once, zero-filled, with `capacity` = max_length rounded up to a multiple of 16 positions,
    plus a device-side key mask `static_mask` (B, capacity) bool (False past the stored tokens and at
    padding) and a device-side length `cache_position` (1,) int64. A one-token decode step (no
    attention_mask given) then has fixed shapes and no per-step Python ints: the new K/V are written with
    index_copy_ at cache_position, the mask entry is set with index_fill_, attention runs over the whole
    buffer under static_mask, and cache_position.add_(1) ends the step. Prefill (and any forward with an
    attention_mask) takes the ordinary path, writing into the same buffers and resetting the mask and
    position from the host-side seq_len.
    """

    def __init__(self, config: JambaConfig, batch_size: int, max_length: Optional[int] = None,
                 static: bool = False):
        n = config.num_hidden_layers
        if static and (max_length is None or max_length <= 0):
            raise ValueError(f"JambaHybridCache: static=True needs max_length > 0, got {max_length!r}")
        self.batch_size = batch_size
        self.max_length = max_length
        self.static = bool(static)
        self.capacity = -(-max_length // 16) * 16 if static else None
        self.conv_states: List[Optional[Tensor]] = [None] * n
        self.ssm_states: List[Optional[Tensor]] = [None] * n
        self._keys: List[Optional[Tensor]] = [None] * n
        self._values: List[Optional[Tensor]] = [None] * n
        self.seq_len = 0
        self._key_mask: Optional[Tensor] = None
        self._padded = False                       # static: whether static_mask holds any padding
        self.static_mask: Optional[Tensor] = None  # static: (B, capacity) bool
        self.cache_position: Optional[Tensor] = None  # static: (1,) int64, = seq_len on the device
        self._mirrors: Dict[torch.device, Tuple[Tensor, Tensor]] = {}   # static, layers on other devices: copies

    # -- key mask (static: a view of static_mask, so a captured step's mask updates are seen by the host path)
    @property
    def key_mask(self) -> Optional[Tensor]:
        if not self.static:
            return self._key_mask
        if not self._padded or self.static_mask is None:
            return None
        return self.static_mask[:, :self.seq_len]

    @key_mask.setter
    def key_mask(self, m: Optional[Tensor]) -> None:
        if not self.static:
            self._key_mask = m
            return
        self._padded = m is not None
        if self.static_mask is not None:
            self.static_mask.zero_()
            if m is None:
                self.static_mask[:, :self.seq_len] = True
            else:
                self.static_mask[:, :m.shape[1]].copy_(m)

    def _ensure_static(self, device: torch.device) -> None:
        """static: the device-side mask and position, made on the first forward (which knows the device)."""
        if self.static_mask is None:
            self.static_mask = torch.zeros(self.batch_size, self.capacity, dtype=torch.bool, device=device)
            self.cache_position = torch.zeros(1, dtype=torch.long, device=device)

    def static_on(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        """static: (static_mask, cache_position) on `device`: the tensors themselves on their own device, elsewhere
        copies refreshed from them now (a model split over devices calls this where its layers change device, after
        the step's mask update; the copies are made once and then overwritten in place, so a capture replays)."""
        if device == self.static_mask.device:
            return self.static_mask, self.cache_position
        m = self._mirrors.get(device)
        if m is None or m[0].shape != self.static_mask.shape:
            m = (torch.empty_like(self.static_mask, device=device), torch.empty_like(self.cache_position, device=device))
            self._mirrors[device] = m
        m[0].copy_(self.static_mask)
        m[1].copy_(self.cache_position)
        return m

    def _sync_static(self) -> None:
        """static: after a host-path forward, set the device-side position from seq_len (outside any capture)."""
        if self.cache_position is not None:
            self.cache_position.fill_(self.seq_len)

    def get_seq_length(self) -> int:
        return self.seq_len

    def has_state(self, layer_idx: int) -> bool:
        return self.ssm_states[layer_idx] is not None

    def update_kv(self, layer_idx: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """k, v: (B, nkv, L, hd) of the new tokens -> views (B, nkv, P + L, hd) over the stored buffers."""
        past, L = self.seq_len, k.shape[2]
        need = past + L
        kb, vb = self._keys[layer_idx], self._values[layer_idx]
        if self.static:
            if need > self.capacity:
                raise ValueError(f"JambaHybridCache: static cache of max_length {self.max_length} "
                                 f"(capacity {self.capacity}) cannot hold {need} tokens")
            if kb is None:
                kb, vb = self._alloc_static(layer_idx, k, v)
        elif kb is None or kb.shape[2] < need:
            # max_length reserved at once, up to 64K positions past what is needed (a huge max_new_tokens with an
            # early EOS must not allocate them all: that asked for 25 GB once); beyond, the buffers double
            cap = max(need, min(self.max_length or 0, need + 65536), 2 * kb.shape[2] if kb is not None else 0)
            nk = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            nv = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if kb is not None and past:
                nk[:, :, :past].copy_(kb[:, :, :past])
                nv[:, :, :past].copy_(vb[:, :, :past])
            self._keys[layer_idx], self._values[layer_idx] = kb, vb = nk, nv
        kb[:, :, past:need].copy_(k)
        vb[:, :, past:need].copy_(v)
        return kb[:, :, :need], vb[:, :, :need]

    def _alloc_static(self, layer_idx: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        # zero-filled: positions past the stored tokens are masked, but garbage (NaN, inf) there would
        # still reach the output through 0 * NaN in the attention
        kb = k.new_zeros(k.shape[0], k.shape[1], self.capacity, k.shape[3])
        vb = v.new_zeros(v.shape[0], v.shape[1], self.capacity, v.shape[3])
        self._keys[layer_idx], self._values[layer_idx] = kb, vb
        return kb, vb

    def update_kv_static(self, layer_idx: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Static decode step: k, v (B, nkv, 1, hd) written at cache_position (index_copy_, no host int);
        returns the whole buffers (B, nkv, capacity, hd), to be read under static_mask."""
        kb, vb = self._keys[layer_idx], self._values[layer_idx]
        if kb is None:
            kb, vb = self._alloc_static(layer_idx, k, v)
        pos = self.cache_position if k.device == self.cache_position.device else self._mirrors[k.device][1]
        kb.index_copy_(2, pos, k)
        vb.index_copy_(2, pos, v)
        return kb, vb

    def keys(self, layer_idx: int) -> Optional[Tensor]:
        k = self._keys[layer_idx]
        return None if k is None else k[:, :, :self.seq_len]

    def values(self, layer_idx: int) -> Optional[Tensor]:
        v = self._values[layer_idx]
        return None if v is None else v[:, :, :self.seq_len]

    # -- beam search: rows copied after the prefill, then reordered after every step
    def repeat_rows(self, n: int) -> None:
        """Every row n times in a row (row b -> rows b * n .. b * n + n - 1): the prefill of B prompts becomes the
        state of B * n beams. New tensors: call it before a CUDA graph is captured over this cache."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        for ts in (self.conv_states, self.ssm_states, self._keys, self._values):
            ts[:] = [rep(t) for t in ts]
        self._key_mask, self.static_mask = rep(self._key_mask), rep(self.static_mask)
        self.batch_size *= n

    def reorder_rows(self, rows: Tensor, shared: int = 0) -> None:
        """Row i of the state becomes a copy of row rows[i] (rows: (batch,) int64 on the cache's device), in place:
        a captured decode step keeps reading the same tensors. shared: positions before it are equal in row i and
        row rows[i] already (beam search: the prompt's keys, values and mask, copied by repeat_rows to all of its
        beams, while rows only mixes beams of one prompt), so only the KV positions shared .. seq_len move."""
        P = self.seq_len
        on = {rows.device: rows}                            # (a model over several devices: rows on each)

        def at(t: Tensor) -> Tensor:
            r = on.get(t.device)
            if r is None:
                r = on[t.device] = rows.to(t.device)
            return r
        for ts in (self.conv_states, self.ssm_states):
            for t in ts:
                if t is not None:
                    t.copy_(t.index_select(0, at(t)))
        if P > shared:
            for ts in (self._keys, self._values):
                for t in ts:
                    if t is not None:
                        t[:, :, shared:P].copy_(t[:, :, shared:P].index_select(0, at(t)))
            if self._key_mask is not None:                  # (a new tensor: it may be a view of the caller's mask)
                m = self._key_mask
                self._key_mask = torch.cat((m[:, :shared], m[:, shared:].index_select(0, rows)), dim=1)
            if self.static_mask is not None:
                self.static_mask[:, shared:P] = self.static_mask[:, shared:P].index_select(0, rows)

    def nbytes(self) -> int:
        """Bytes of the tensors the cache holds (states, KV buffers, static mask and position, mirrors)."""
        ts = [t for ts in (self.conv_states, self.ssm_states, self._keys, self._values) for t in ts if t is not None]
        ts += [t for t in (self.static_mask, self.cache_position, self._key_mask) if t is not None]
        ts += [t for m in self._mirrors.values() for t in m]
        return sum(t.numel() * t.element_size() for t in ts)

    def assign_(self, other: "JambaHybridCache") -> None:
        """static: this cache takes other's state (a static cache of the same rows, capacity and layers), copied into
        this cache's own tensors, so that a decode graph captured over this cache replays on other's prefill."""
        if not (self.static and other.static and self.batch_size == other.batch_size and
                self.capacity == other.capacity):
            raise ValueError(f"JambaHybridCache.assign_: needs two static caches of the same rows and capacity, got "
                             f"{self.batch_size} x {self.capacity} and {other.batch_size} x {other.capacity}")
        for mine, theirs in ((self.conv_states, other.conv_states), (self.ssm_states, other.ssm_states),
                             (self._keys, other._keys), (self._values, other._values)):
            for i, (a, b) in enumerate(zip(mine, theirs)):
                if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or a.dtype != b.dtype)):
                    raise ValueError(f"JambaHybridCache.assign_: layer {i}'s state differs in kind or shape")
                if a is not None:
                    a.copy_(b)
        self.static_mask.copy_(other.static_mask)
        self.cache_position.copy_(other.cache_position)
        self.seq_len, self._padded, self.max_length = other.seq_len, other._padded, other.max_length

    # -- snapshots (CUDA-graph warm-up runs real steps; the state is put back afterwards)
    def _snapshot(self):
        clone = lambda ts: [None if t is None else t.clone() for t in ts]  # noqa: E731
        return (self.seq_len, clone(self.conv_states), clone(self.ssm_states),
                None if self.static_mask is None else self.static_mask.clone(),
                None if self.cache_position is None else self.cache_position.clone())

    def _restore(self, snap) -> None:
        """Puts back a _snapshot in place (the tensors a captured graph reads keep their addresses). The KV
        slots a warm-up step wrote lie past seq_len: masked, and overwritten by the next real step."""
        self.seq_len = snap[0]
        for dst, src in ((self.conv_states, snap[1]), (self.ssm_states, snap[2])):
            for i, t in enumerate(src):
                if t is not None:
                    dst[i].copy_(t)
        if snap[3] is not None:
            self.static_mask.copy_(snap[3])
            self.cache_position.copy_(snap[4])


@dataclass
class _Step:
    """What every layer needs to know about the current forward (built once per forward)."""
    past: int                          # P, tokens already in the cache
    length: int                        # L, new tokens
    mamba_mask: Optional[Tensor]       # (B, L) in model dtype, or None (no padding among the new tokens)
    attn_mask: Optional[Tensor]        # (B, 1, L, P + L) bool (True = attend), or None
    is_causal: bool                    # let SDPA apply the causal mask itself (no padding, no past)
    static: bool = False               # static decode step: KV at cache.cache_position, attn over the buffer
    offset_causal: bool = False        # L > 1 new tokens after P > 0, no padding: causal, aligned at the end


# ---- modules -------------------------------------------------------------------------------------------
class JambaRMSNorm(nn.Module):
    """RMSNorm through jamba.rms_norm: fp32 statistics, cast to the input dtype, times weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        return _K.rms_norm(*_one_dtype(hidden_states, self.weight), self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


# Projections of at most this many rows of activations in a static-cache decode step (the step that
# generate(cuda_graph=True) captures and replays; eager with static_cache=True) run jamba.gemv instead of F.linear.
# cuBLAS reads the long-K, short-N weights of a decode step at 15-88% of the bandwidth floor and cannot overlap our PDL
# kernels; jamba.gemv (its tensor-core ring kernel from 2 rows, and at 1 row for 512-8192 outputs) beats it on every
# projection but the widest two, which it reads within 2% (H200 bf16, gpu_round_660e493.log, 8 rows: out_proj 17.8
# against 21.8 us, MLP down 28.9 / 31.7, attention q|o 10.3 / 13.1, k|v 5.2 / 7.7, LM head 123.1 / 126.4, in_proj
# 33.8 / 33.3; 1 row, gpu_round_9c8ab66.log: out_proj 17.5 / 21.3, x_proj 3.7 / 7.5).
# Graph decode of one block with 8 against 1 (cuBLAS from 2 rows), two runs each: +3.5-4.7% / +2.4-3.2% / +1.0-1.8%
# at batch 2 / 4 / 8 (ab_gemv_rows_660e493.log). Not in the dynamic-cache decode step (run eagerly, host-bound: our
# op's Python path costs more than F.linear's). 0 turns it off (A/B timing).
GEMV_MAX_ROWS = int(os.environ.get("JAMBA_EXT_GEMV_ROWS", "8"))

# generate(cuda_graph=None) on a CUDA model replays its decode steps from a CUDA graph when at least this many new
# tokens are asked for. The capture (2 warm-up steps + capture, once per generate() call unless a graph was kept:
# KEEP_GRAPH_MAX_BYTES below) costs about 12 eager
# steps; H200, bf16, batch 1, 2K prompt (bench_model_L32_*_1b499f9.json, model_full_3ab32e5.log): the whole
# Jamba-v0.1 decodes 63-67 tok/s eagerly (host-bound) and 146-147 from the graph after a 106 ms capture, one block
# 166-230 against 528-552 after 27 ms.
GRAPH_MIN_NEW_TOKENS = 16

# generate() sizes a static cache for T + max_new_tokens positions rounded up to a multiple of STATIC_BUCKET (the
# decode attention reads the whole buffer under a length mask, so the capacity, not the length, shapes the step), and
# after it returns keeps its captured decode graph, with the static cache the graph runs over, on the model when that
# cache's tensors take at most KEEP_GRAPH_MAX_BYTES. A later generate() whose decode has the same rows, the same
# capacity and the same parameters and module settings (JambaForCausalLM._graph_key) moves its prefill's state into
# that cache and replays the graph: no warm-up steps and no capture. The same tokens as a fresh capture (the same
# kernels over tensors of the same shapes). Whole Jamba-v0.1, bf16, H200, 300-379-token prompts
# (kept_graph_98759a1.log): a call of 32 new tokens 255.8 ms against 275.9 with the capture at batch 1, 736.7 / 797.7
# at batch 8 (128 new tokens: 846.7 / 879.3, 2614 / 2665).
# clear_decode_graph() frees it; .to() / .cuda() / .cpu() (any nn.Module._apply) and dispatch() drop it. The
# environment switches that kernels read per call (docs/SWITCHES.md, for A/B timing) are not part of the key: a kept
# graph replays the kernels chosen when it was captured.
STATIC_BUCKET = 256
KEEP_GRAPH_MAX_BYTES = 2 << 30

# generate() runs a prompt longer than this many tokens (batch x length) as a chunked prefill through its cache,
# chunks of PREFILL_CHUNK_TOKENS // batch steps (a multiple of 8): the prefill's transient activations (the MoE
# layers' expert intermediates are 115 KB a token in bf16, 27 GB at 128K tokens at once) then stay those of one
# chunk, so the whole Jamba-v0.1 (103 GB) takes long prompts on one 141 GB GPU, at the speed of 16K-token prefills
# (which run as fast per token as 2K-8K ones). generate(prefill_chunk=N) overrides it; 0 prefills in one forward.
PREFILL_CHUNK_TOKENS = 16384


def prefill_chunks(length: int, batch: int, prefill_chunk: Optional[int] = None) -> List[Tuple[int, int]]:
    """The (start, end) steps of generate()'s prefill chunks for a prompt of `length` steps and `batch` rows.
    prefill_chunk: None (PREFILL_CHUNK_TOKENS // batch, rounded down to a multiple of 8), 0 (one forward) or >= 8 (a
    chunk of one token would take the decode step's path, which has no padding mask for the Mamba layers)."""
    if prefill_chunk is not None and (not isinstance(prefill_chunk, int) or 0 < prefill_chunk < 8
                                      or prefill_chunk < 0):
        raise ValueError(f"prefill_chunk: expected 0 (no chunks) or an int >= 8, got {prefill_chunk!r}")
    C = prefill_chunk if prefill_chunk is not None else max(8, PREFILL_CHUNK_TOKENS // batch // 8 * 8)
    return [(s, min(length, s + C)) for s in range(0, length, C)] if 0 < C < length else [(0, length)]

# generate() enqueues decode step i + 1 before it waits for token i on the host (the streamer and the EOS test
# read a host copy, made asynchronously): the host's work per step (Python, launches) then overlaps the GPU's
# instead of adding to it. None: on for CUDA models (on a CPU model the steps run synchronously, nothing to
# overlap, and the step after the last EOS would cost its full time); True / False force it (tests, A/B).
# Env JAMBA_EXT_RUN_AHEAD=0 / 1 sets it at import.
RUN_AHEAD: Optional[bool] = {"0": False, "1": True}.get(os.environ.get("JAMBA_EXT_RUN_AHEAD", ""))
_HOOKS = tuple(getattr(nn.modules.module, n, {}) for n in ("_global_forward_hooks", "_global_forward_pre_hooks"))
_gemv_on = False                                   # inside a static decode step (set by _GemvScope)
# A Mamba layer's decode step between in_proj and out_proj as one jamba.mamba_inner_step at batch <= 2 on CUDA (one
# kernel instead of conv update, x_proj, norms, dt_proj, state update: 10.9 against 13.2 us a layer at batch 1; the
# whole layer step 63.0 against 65.7 us, graph decode of one block +3.6%: mamba_step_timing / probe logs, ecff4ec).
# Env JAMBA_EXT_MAMBA_STEP=0 turns it off (A/B).
MAMBA_STEP_FUSED = os.environ.get("JAMBA_EXT_MAMBA_STEP", "1") != "0"
# The kernel's batch limit (larger batches run the five launches, faster there: 23.2 against 28.4 us at batch 8 for
# an 8-row instance of the fused kernel, gpu_round_519cb9a.log).
MAMBA_STEP_MAX_BATCH = 2


class _GemvScope:
    """with _GemvScope(on): _proj may take jamba.gemv (on) or not, restored on exit."""

    def __init__(self, on: bool):
        self.on = bool(on)

    def __enter__(self):
        global _gemv_on
        self.prev, _gemv_on = _gemv_on, self.on

    def __exit__(self, *exc):
        global _gemv_on
        _gemv_on = self.prev


# ---- autocast ----------------------------------------------------------------------------------------
# Under torch.autocast the products (F.linear, matmul, SDPA) run in the autocast dtype and return it, while the
# parameters keep theirs (fp32 master weights, the usual mixed-precision recipe). Our ops take one dtype for their
# activations and weights (A, D, dt_bias and the SSM states fp32 by contract), so while JambaModel.forward runs under
# autocast (_AmpScope) the model hands them one dtype: the widest of the tensors involved for the norms, the conv and
# the scan (in fp32 with fp32 weights, as autocast runs norms), the autocast dtype for the MoE's expert products (the
# weights cast per call, as autocast casts a Linear's). Outside autocast every helper returns its inputs unchanged.
_amp: Optional[torch.dtype] = None


class _AmpScope:
    """with _AmpScope(device_type): _amp = the autocast dtype while autocast is on for that device, else None."""

    def __init__(self, device_type: str):
        on = device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type) if on else None

    def __enter__(self):
        global _amp
        self.prev, _amp = _amp, self.dtype

    def __exit__(self, *exc):
        global _amp
        _amp = self.prev


def _outside_autocast(fn):
    """generate() and the like run in the model's dtype: an enclosing torch.autocast is switched off for the call
    (with a warning). Its decode step (static cache, fused Mamba step, CUDA graphs) takes one dtype; for bf16
    inference load the model in bf16 (from_pretrained(..., dtype=torch.bfloat16))."""

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        t = self.device.type
        if t in ("cpu", "cuda") and torch.is_autocast_enabled(t):
            warnings.warn(f"{fn.__name__}() runs in the model's dtype {self.dtype}; the enclosing torch.autocast is "
                          f"off inside it (for bf16 inference load the model in bf16)", stacklevel=2)
            with torch.autocast(t, enabled=False):
                return fn(self, *args, **kwargs)
        return fn(self, *args, **kwargs)
    return call


# a GenerationConfig's fields that say nothing about how to generate (ids of other models, bookkeeping)
_GENERATION_CONFIG_IGNORED = ("transformers_version", "_from_model_config", "_commit_hash", "bos_token_id",
                              "decoder_start_token_id")


def _with_generation_config(fn):
    """generate(..., generation_config=GenerationConfig(...)) and generate(inputs=...), as transformers': the config's
    non-default fields become arguments, those given explicitly win; fields the generate here does not take go to its
    argument check (accepted at their no-op values, else a ValueError naming them)."""

    @functools.wraps(fn)
    def call(self, *args, generation_config=None, inputs=None, **kwargs):
        if inputs is not None:
            if args or "input_ids" in kwargs:
                raise ValueError("generate: give the prompt as input_ids or inputs, not both")
            kwargs["input_ids"] = inputs
        if generation_config is not None:
            diff = generation_config.to_diff_dict() if hasattr(generation_config, "to_diff_dict") else \
                dict(vars(generation_config))
            for k, v in diff.items():
                if k not in _GENERATION_CONFIG_IGNORED and not k.startswith("_") and k not in kwargs:
                    kwargs[k] = v
        return fn(self, *args, **kwargs)
    return call


def _amp_call(dtype: Optional[torch.dtype], layer: nn.Module, h: Tensor, residual: Optional[Tensor], step):
    """layer(h, residual, step) with _amp = dtype (a checkpointed layer: its recomputation runs in the backward)."""
    global _amp
    prev, _amp = _amp, dtype
    try:
        return layer(h, residual, step, None)
    finally:
        _amp = prev


def _one_dtype(*ts: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """Under autocast: the tensors cast to their widest floating dtype (None entries kept); else unchanged."""
    if _amp is None:
        return ts
    dt = None
    for t in ts:
        if t is not None:
            dt = t.dtype if dt is None else torch.promote_types(dt, t.dtype)
    return tuple(t if t is None or t.dtype == dt else t.to(dt) for t in ts)


def _amp_lowp(*ts: Tensor) -> Tuple[Tensor, ...]:
    """Under autocast: floating tensors cast to the autocast dtype (inputs of products); else unchanged."""
    if _amp is None:
        return ts
    return tuple(t.to(_amp) if t.dtype.is_floating_point and t.dtype != _amp else t for t in ts)


def _proj(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias); jamba.gemv for a CUDA x of at most GEMV_MAX_ROWS rows in a static decode step
    (no gradient taken)."""
    if (_gemv_on and x.is_cuda and x.numel() <= GEMV_MAX_ROWS * x.shape[-1] and x.dtype == weight.dtype
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return _K.gemv(x, weight, bias)
    return F.linear(x, weight, bias)


# ---- joint projections ---------------------------------------------------------------------------------
# Projections that read the same input (an MLP's gate and up, attention's q / k / v) run as one matrix product when
# their weights lie back to back in one buffer: one GEMM or jamba.gemv launch instead of two or three (a decode
# step's projections are a few microseconds of ramp-up each over their weight bytes), and the MLP's activation as
# one silu_mul. from_config / from_pretrained lay the weights out so (fuse_projections); the parameters stay
# separate nn.Linear weights with their usual names (views of the buffer), so state_dict, load_state_dict (in
# place) and save_pretrained see no difference. Anything that moves a weight elsewhere (model.to(another dtype),
# assigning a new Parameter) leaves the layers on the separate products, with the same results.
FUSE_PROJECTIONS = os.environ.get("JAMBA_EXT_FUSE_PROJ", "1") != "0"   # env 0: from_* leave the weights apart
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _hookless_linear(mod: nn.Module) -> bool:
    """An nn.Linear (not a subclass or wrapper) that no forward hook, its own or a global one, would see called."""
    return type(mod) is nn.Linear and not (mod._forward_hooks or mod._forward_pre_hooks or any(_HOOKS))


def _plain_linear(mod: nn.Module) -> bool:
    return _hookless_linear(mod) and mod.bias is None


def _fuse_linears(linears: Sequence[nn.Module]) -> bool:
    """Re-points the weights of bias-free nn.Linears with one input size, dtype and device at consecutive row blocks
    of one new buffer (values copied). Returns whether it did."""
    if len(linears) < 2 or not all(_plain_linear(m) for m in linears):
        return False
    ws = [m.weight for m in linears]
    K, dt, dev = ws[0].shape[1], ws[0].dtype, ws[0].device
    if dev.type == "meta" or any(w.shape[1] != K or w.dtype != dt or w.device != dev for w in ws):
        return False
    buf = torch.empty(sum(w.shape[0] for w in ws), K, dtype=dt, device=dev)
    o = 0
    with torch.no_grad():
        for m, w in zip(linears, ws):
            n = w.shape[0]
            buf[o:o + n].copy_(w)
            m.weight = nn.Parameter(buf[o:o + n], requires_grad=w.requires_grad)
            o += n
    return True


def _joint_weight(linears: Sequence[nn.Module], grad_ok: bool = False) -> Optional[Tensor]:
    """The weights of `linears` as one (sum of outputs, in) matrix when they lie back to back in one storage
    (_fuse_linears), are plain bias-free nn.Linears without hooks and no gradient is taken for them (grad_ok: or
    one is, the caller routing it through _JointLinear); else None."""
    if _compiling() or not all(_plain_linear(m) for m in linears):
        return None                            # (traced: data pointers are not traceable; separate products)
    first = linears[0].weight
    if not grad_ok and torch.is_grad_enabled() and any(m.weight.requires_grad for m in linears):
        return None                            # autograd of an as_strided view would not reach the later weights
    K, el, ptr, st = first.shape[1], first.element_size(), first.data_ptr(), first.untyped_storage().data_ptr()
    n = 0
    for m in linears:
        w = m.weight
        if (w.dim() != 2 or w.shape[1] != K or w.stride() != (K, 1) or w.dtype != first.dtype
                or w.data_ptr() != ptr + n * K * el or w.untyped_storage().data_ptr() != st):
            return None
        n += w.shape[0]
    return first.detach().as_strided((n, K), (K, 1))


class _JointLinear(torch.autograd.Function):
    """x (..., I) @ joint^T -> (..., sum of O_i) while autograd records, joint the (sum O_i, I) view of weights that
    lie back to back (_joint_weight); the weights are the Function's inputs, so each gets its gradient: the rows of
    dJoint = G^T x (one GEMM), and dx = G joint (one GEMM, no sum of per-weight input gradients). For an MLP's gate
    and up this also lets the activation run as one silu_mul (with its native backward) instead of torch's silu, mul
    and their backward (five elementwise passes over (T, F))."""

    @staticmethod
    def forward(ctx, x: Tensor, joint: Tensor, *weights: Tensor) -> Tensor:
        ctx.save_for_backward(x, joint)
        ctx.rows = [w.shape[0] for w in weights]
        return F.linear(x, joint)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, joint = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = g.reshape(-1, joint.shape[0])
        dx = torch.mm(g2, joint).view(x.shape) if need[0] else None
        dws = [None] * len(ctx.rows)
        if any(need[2:]):
            dj = torch.mm(g2.t(), x.reshape(-1, joint.shape[1]))
            dws = [d if n else None for d, n in zip(dj.split(ctx.rows), need[2:])]
        return (dx, None, *dws)


def _joint_proj(linears: Sequence[nn.Module], x: Tensor) -> Optional[Tensor]:
    """x @ [W_0; W_1; ...]^T as one product when the weights lie back to back (_joint_weight), also while autograd
    records (_JointLinear; one dtype, no autocast, TRAIN_PROJ_FUNCTIONS); else None (the caller runs them apart)."""
    w = _joint_weight(linears, grad_ok=True)
    if w is None:
        return None
    if torch.is_grad_enabled() and any(m.weight.requires_grad for m in linears):
        return _JointLinear.apply(x, w, *[m.weight for m in linears]) if _functions_ok(w, x) else None
    return _proj(x, w)                      # (a gradient for x alone flows through F.linear of the joint view)


def _linear(mod: nn.Module, x: Tensor) -> Tensor:
    """mod(x) for an nn.Linear; through _proj when mod is a plain nn.Linear with no hooks (a wrapped or hooked
    projection, e.g. an adapter, keeps its own forward)."""
    if _hookless_linear(mod):
        return _proj(x, mod.weight, mod.bias)
    return mod(x)


def _linear_t(x: Tensor, weight: Tensor) -> Tensor:
    """x (B, L, I) with any strides (typically a transposed (B, I, L) tensor) @ weight (O, I)^T -> (B, L, O)
    contiguous, as one batched GEMM without copying x (F.linear would fold x into 2-D, a copy). While autograd
    records, through _LinearT (its backward makes no transposing copies either)."""
    if _records(weight, x):
        return _LinearT.apply(x, weight)
    return _linear_t_out(x, weight)


def _linear_t_out(x: Tensor, weight: Tensor) -> Tensor:
    if x.shape[0] == 1:                                   # one GEMM; a transposed x is a BLAS transpose flag
        # squeeze, not x[0]: select's backward writes the gradient into a zero-filled tensor of x's shape in
        # row-major order (a fill and a transposed copy), squeeze's is a view keeping the product's layout
        return F.linear(x.squeeze(0), weight).unsqueeze(0)
    return torch.bmm(x, weight.t().expand(x.shape[0], -1, -1))


# False: the prefill's projections in a recorded step go through torch's autograd of torch.matmul / bmm /
# F.linear (what ran before session 34; docs/SWITCHES.md). Read at each call.
TRAIN_PROJ_FUNCTIONS = True


def _functions_ok(weight: Tensor, x: Tensor) -> bool:
    """Whether a recorded projection may run through its autograd.Function (_ProjT, _LinearT, _JointLinear):
    TRAIN_PROJ_FUNCTIONS, outside torch.compile, one dtype and no autocast (else torch's own products, which
    handle those)."""
    return (TRAIN_PROJ_FUNCTIONS and not _compiling() and weight.dtype == x.dtype
            and not torch.is_autocast_enabled(x.device.type))


def _records(weight: Tensor, x: Tensor) -> bool:
    """Whether a prefill projection runs through _ProjT / _LinearT: autograd records it and _functions_ok."""
    return torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad) and _functions_ok(weight, x)


def _fold_batch(t: Tensor) -> Tensor:
    """t (B, M, L) -> the (M, B*L) matrix [t_0 | t_1 | ...]: a view at batch 1, else one copy that moves whole
    time rows (unlike the transposing copies torch.matmul's backward makes, ~4x slower on the H200)."""
    B, M, L = t.shape
    return t.permute(1, 0, 2).reshape(M, B * L)


def _fold_pays(B: int, L: int, other: int) -> bool:
    """Whether a weight gradient sum_b A_b (M, L) B_b (L, other) over a batch of B > 1 should fold the batch into K
    (one GEMM after a copy of the operand that is not a view, ~B*M*L elements; one rounding) rather than run B
    products into a (B, M, other) tensor and sum it (~B*M*other elements written and read): fold unless the other
    extent is below the time extent (e.g. x_proj's 288 outputs, dt_proj's 256 inputs: their folds copied ~30x
    more bytes than their products at 4 x 2048 tokens)."""
    return B == 1 or other > L


class _ProjT(torch.autograd.Function):
    """_proj_t while autograd records. Forward: one GEMM writing (B, O, L), as in inference. Backward: two plain
    GEMMs over the folded batch, D = dout as (O, B*L) (_fold_batch) and X = x_t's (B*L, I) rows (a view when x_t is
    a transposed (B, L, I) tensor, as in the model): dW = D X, and dx = (D^T W) returned as the transposed view of a
    (B, L, I) tensor, i.e. in the layout of the tensor x_t was transposed from (with a narrow input, I below L:
    batched products, see _fold_pays). torch.matmul of a 2-D and a 3-D operand had copied the product in the forward
    and dout in the backward, both transposing (~2.9 ms a step over 7 in_proj at batch 4 x 512 tokens,
    dev/train_step_probe.py --batch 4)."""

    @staticmethod
    def forward(ctx, weight: Tensor, x_t: Tensor) -> Tensor:
        ctx.save_for_backward(weight, x_t)
        return _proj_t_out(weight, x_t)

    @staticmethod
    def backward(ctx, dout: Tensor):
        weight, x_t = ctx.saved_tensors
        B, I, L = x_t.shape
        if _fold_pays(B, L, I):
            d = _fold_batch(dout)                                               # (O, B*L)
            dw = torch.mm(d, x_t.transpose(1, 2).reshape(B * L, I)) if ctx.needs_input_grad[0] else None
            dx = torch.mm(d.t(), weight).view(B, L, I).transpose(1, 2) if ctx.needs_input_grad[1] else None
            return dw, dx
        dw = torch.bmm(dout, x_t.transpose(1, 2)).sum(0) if ctx.needs_input_grad[0] else None
        dx = (torch.bmm(dout.transpose(1, 2), weight.expand(B, -1, -1)).transpose(1, 2)
              if ctx.needs_input_grad[1] else None)
        return dw, dx


class _LinearT(torch.autograd.Function):
    """_linear_t while autograd records. Forward as in inference. Backward with dout (B, L, O) as G (B*L, O): when x
    is a transposed (B, I, L) tensor (unit stride along time, as in the model), dx = W^T dout_b^T per batch row,
    written as (B, I, L) (the layout the producer of x keeps; the scan's and conv's backward take it without a
    copy), and dW = G^T X with X = _fold_batch of that (B, I, L) tensor (a view at batch 1; with few outputs,
    O below L, batched products, see _fold_pays); otherwise dx = G W and dW = G^T x as (B*L, I). The autograd of
    the bmm of an expanded weight had made dW as a (B, O, I) product plus a sum over B at every size."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _linear_t_out(x, weight)

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, weight = ctx.saved_tensors
        B, L, I = x.shape
        g = dout.reshape(B * L, weight.shape[0])
        time_major = x.stride(1) == 1 and L > 1
        dx = dw = None
        if ctx.needs_input_grad[0]:
            if time_major:
                dx = torch.bmm(weight.t().expand(B, -1, -1), dout.transpose(1, 2)).transpose(1, 2)
            else:
                dx = torch.mm(g, weight).view(B, L, I)
        if ctx.needs_input_grad[1]:
            if not time_major:
                dw = torch.mm(g.t(), x.reshape(B * L, I))
            elif _fold_pays(B, L, weight.shape[0]):
                dw = torch.mm(g.t(), _fold_batch(x.transpose(1, 2)).t())
            else:
                dw = torch.bmm(dout.transpose(1, 2), x).sum(0)
        return dx, dw


# Mamba prefill: the time axis of the (B, DI, time) activations is padded to a multiple of this many steps (see
# JambaMambaMixer.prefill), and the pad steps' delta is PAD_DELTA (softplus(PAD_DELTA + any dt bias) == 0 in fp32,
# representable in fp16 and bf16).
PREFILL_PAD_STEPS = 8
PAD_DELTA = -30000.0


def _proj_t(weight: Tensor, x_t: Tensor) -> Tensor:
    """weight (O, I) @ x_t (B, I, L), x_t with any strides -> (B, O, L) contiguous, as one GEMM that writes this
    layout itself: torch.matmul of a 2-D and a 3-D operand computes the transposed product and copies it into this
    layout (a third of a Mamba layer's prefill time at 2048 tokens, dev/prefill_ops_probe.py). While autograd
    records, through _ProjT (its backward makes no transposing copies either)."""
    if _records(weight, x_t):
        return _ProjT.apply(weight, x_t)
    if _compiling() or _amp is not None or torch.is_grad_enabled() and (weight.requires_grad or x_t.requires_grad):
        if x_t.shape[0] == 1 and not _compiling():  # mm writes (O, L) itself (squeeze: see _linear_t_out)
            return torch.mm(weight, x_t.squeeze(0)).unsqueeze(0)
        return torch.matmul(weight, x_t)            # out= records no gradients, and dynamo refuses a strided out=
    return _proj_t_out(weight, x_t)


def _proj_t_out(weight: Tensor, x_t: Tensor) -> Tensor:
    B, _, L = x_t.shape
    out = x_t.new_empty((B, weight.shape[0], L))
    if B == 1:
        torch.mm(weight, x_t[0], out=out[0])
    else:
        torch.bmm(weight.expand(B, -1, -1), x_t, out=out)
    return out


def _last_steps(x: Tensor, initial: Optional[Tensor], S: int) -> Tensor:
    """The last S entries along time of concat(zeros, initial, x) as a contiguous (B, DI, S) tensor: causal_conv1d's
    final_state for x (B, DI, L) and initial_state initial (B, DI, S_in) or None."""
    B, DI, L = x.shape
    if L >= S:
        return x[..., L - S:].contiguous()
    parts = [x.new_zeros((B, DI, S))] + ([initial.to(x.dtype)] if initial is not None else []) + [x]
    return torch.cat(parts, dim=-1)[..., -S:].contiguous()


class JambaMambaMixer(nn.Module):
    """Mamba-1 mixer with Jamba's dt/B/C RMSNorms (jamba-architecture.md 4.3), on the jamba ops.

    forward(hidden_states (B, L, H), cache, layer_idx from construction, mamba_mask (B, L) or None)
    -> (B, L, H). With a cache holding this layer's state and L == 1 it runs the decode step
    (causal_conv1d_update + selective_state_update, states updated in place); otherwise the prefill
    (causal_conv1d + selective_scan), starting from the cached state when there is one, and stores
    the final conv / SSM state in the cache.
    """

    def __init__(self, config: JambaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = H = config.hidden_size
        self.intermediate_size = DI = config.mamba_d_inner
        self.ssm_state_size = N = config.mamba_d_state
        self.conv_kernel_size = K = config.mamba_d_conv
        self.time_step_rank = R = config.mamba_dt_rank
        self.in_proj = nn.Linear(H, 2 * DI, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(DI, DI, K, groups=DI, padding=K - 1, bias=config.mamba_conv_bias)
        self.x_proj = nn.Linear(DI, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, DI, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(DI, 1))
        self.D = nn.Parameter(torch.ones(DI))
        self.out_proj = nn.Linear(DI, H, bias=config.mamba_proj_bias)
        self.dt_layernorm = JambaRMSNorm(R, eps=config.rms_norm_eps)
        self.b_layernorm = JambaRMSNorm(N, eps=config.rms_norm_eps)
        self.c_layernorm = JambaRMSNorm(N, eps=config.rms_norm_eps)

    def _ssm_params(self):
        """(A = -exp(A_log) (DI, N), D (DI,), dt_bias (DI,)), all fp32 as the kernels take them. Cached
        while the parameters are unchanged (their version counters) and no gradient is being recorded, so
        a decode step does not recompute them. While a gradient is recorded the cache is neither read nor
        written: a value cached by an inference call has no graph (before session 34 a training step after
        one got no gradient for A_log, nor, in bf16, for D and dt_bias)."""
        bias = getattr(self.dt_proj, "bias", None)                       # (a wrapped dt_proj may have none)
        srcs = tuple(t for t in (self.A_log, self.D, bias) if t is not None)
        if _compiling() or torch.is_grad_enabled() and any(t.requires_grad for t in srcs):
            # traced (no cache, no data_ptr) or recorded (autograd needs the live graph)
            return -torch.exp(self.A_log.float()), self.D.float(), None if bias is None else bias.float()
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in srcs) + (torch.is_inference_mode_enabled(),)
        cached = getattr(self, "_ssm_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        A = -torch.exp(self.A_log.float())                               # (DI, N) fp32
        D = self.D.float()                                                # (DI,) fp32
        dt_bias = None if bias is None else bias.float()                 # (DI,) fp32, added inside the kernels
        self._ssm_cache = (key, (A, D, dt_bias))
        return A, D, dt_bias

    def _xproj_norms(self, xdbl: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """dt, B, C: the dt / B / C RMSNorms of x_proj's output (..., R+2N), as views of one
        rms_norm_segments result (one launch instead of three, for the launch-bound decode step) over the
        concatenated weights, cached while they are unchanged. Three separate norms when a gradient is
        recorded for the weights or the norms differ in eps / weight dtype (a swapped-in foreign module)."""
        R, N = self.time_step_rank, self.ssm_state_size
        w_eps = self._xproj_norm_weight()
        if w_eps is None:
            return self.dt_layernorm(xdbl[..., :R]), self.b_layernorm(xdbl[..., R:R + N]), \
                self.c_layernorm(xdbl[..., R + N:])
        y = _K.rms_norm_segments(xdbl, w_eps[0], [R, R + N], w_eps[1])
        return y[..., :R], y[..., R:R + N], y[..., R + N:]

    def _xproj_norm_weight(self) -> Optional[Tuple[Tensor, float]]:
        """(the dt / B / C norm weights concatenated, eps), cached while the weights are unchanged; None when
        the fused norm does not apply (see _xproj_norms). The prefill calls it too, so that the first decode
        step runs the same ops as the next ones (what a CUDA-graph capture of a step relies on)."""
        norms = (self.dt_layernorm, self.b_layernorm, self.c_layernorm)
        eps = [getattr(m, "variance_epsilon", None) for m in norms]
        ws = [getattr(m, "weight", None) for m in norms]
        if (eps[0] is None or eps.count(eps[0]) != 3 or any(w is None or w.dtype != ws[0].dtype for w in ws)
                or (torch.is_grad_enabled() and any(w.requires_grad for w in ws))):
            return None
        if _compiling():
            return torch.cat(ws), float(eps[0])
        key = tuple((w.data_ptr(), w._version, w.device) for w in ws)
        cached = getattr(self, "_norm_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, (torch.cat([w.detach() for w in ws]), float(eps[0])))
            self._norm_cache = cached
        return cached[1]

    def forward(self, hidden_states: Tensor, cache: Optional[JambaHybridCache] = None,
                mamba_mask: Optional[Tensor] = None) -> Tensor:
        i = self.layer_idx
        if cache is not None and cache.has_state(i) and hidden_states.shape[1] == 1:
            return self.step(hidden_states, cache.conv_states[i], cache.ssm_states[i])
        conv0 = ssm0 = None
        if cache is not None and cache.has_state(i):                      # chunked prefill: continue the state
            conv0, ssm0 = cache.conv_states[i], cache.ssm_states[i]
        out, conv_state, ssm_state = self.prefill(hidden_states, mamba_mask, conv0, ssm0,
                                                  keep_state=cache is not None)
        if cache is not None:
            cache.conv_states[i], cache.ssm_states[i] = conv_state, ssm_state
        return out

    def prefill(self, hidden_states: Tensor, mamba_mask: Optional[Tensor] = None,
                conv_state: Optional[Tensor] = None, ssm_state: Optional[Tensor] = None,
                keep_state: bool = True) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """hidden_states (B, L, H) -> (out (B, L, H), conv state (B, DI, K) | None, ssm state (B, DI, N) fp32)."""
        Bsz, L, _ = hidden_states.shape
        DI, R, N = self.intermediate_size, self.time_step_rank, self.ssm_state_size
        if keep_state:
            self._xproj_norm_weight()                                     # ready for the decode steps
        if mamba_mask is not None:                                        # 0. padding in: zero x and z there
            hidden_states = hidden_states * mamba_mask[:, :, None].to(hidden_states.dtype)
        # The time axis is padded to Lp = L rounded up to PREFILL_PAD_STEPS (8): cuBLAS picks its slow pre-Hopper
        # kernels for products whose contiguous extent is not a multiple of 8 (in_proj 2.8 ms instead of 0.36 at
        # 2041 tokens) and the bf16 scan's fast path needs it too (dev/prefill_ops_probe.py). The pad steps
        # (L .. Lp-1) run through conv and scan and leave no trace: their input rows are zero, their delta is
        # PAD_DELTA (softplus gives dt = 0 exactly, so exp(dt A) = 1 and dt B x = 0: the state passes them
        # unchanged), their outputs are dropped. Not while autograd records (in-place writes) nor under
        # torch.compile (the compiler picks its own layouts).
        plain = _compiling() or torch.is_grad_enabled() and (hidden_states.requires_grad
                                                             or any(p.requires_grad for p in self.parameters()))
        Lp = L if plain else -(-L // PREFILL_PAD_STEPS) * PREFILL_PAD_STEPS
        if Lp > L:
            hidden_states = F.pad(hidden_states, (0, 0, 0, Lp - L))
        # 1. xz = in_proj(h) as (B, 2DI, Lp), unit stride along time, so x and z are slices without copies
        own = self._plain_projections()          # else a wrapped projection (e.g. LoRA): its module is called
        if own:
            xz = _proj_t(self.in_proj.weight, hidden_states.transpose(1, 2))          # (B, 2DI, Lp)
            if self.in_proj.bias is not None:
                xz = xz + self.in_proj.bias[:, None]
        else:
            xz = self.in_proj(hidden_states).transpose(1, 2).contiguous()
        x, z = xz.split(DI, dim=1)  # (B, DI, Lp) views; split, not two slices: its backward is one cat
        # the padding mask over the Lp steps, (B, 1, Lp) in x's dtype (None: no padding)
        m = None if mamba_mask is None else (mamba_mask if Lp == L else F.pad(mamba_mask, (0, Lp - L)))[:, None, :]
        if m is not None and getattr(self.in_proj, "bias", None) is not None:
            # an in_proj bias (mamba_proj_bias) makes x non-zero at the pads although its input was zeroed: zero x
            # there again (transformers 4.x and 5.0 mask x after in_proj; 5.17-5.24 only the input, so the bias of
            # the pads reaches the first real tokens through the conv window: 0.11-0.21 off a separate run's logits)
            x = x * m.to(x.dtype)
        # 2. depthwise causal conv + SiLU; final state = last K pre-conv inputs (HF cache layout)
        S = self.conv_kernel_size if keep_state else 0
        x_in, conv0 = x, conv_state
        x, conv_state = _K.causal_conv1d(*_one_dtype(x, self.conv1d.weight, self.conv1d.bias, conv0), True,
                                         S if Lp == L else 0)                       # (B, DI, Lp)
        if S and Lp > L:                                                  # the last S inputs before the pads
            conv_state = _last_steps(x_in[..., :L], conv0, S)
        if m is not None:                                                 # silu(bias) at pads -> 0 again
            x = x * m.to(x.dtype)
        # 3. dt, B, C = x_proj(x), each RMS-normalised over its own width
        xdbl = (_linear_t(x.transpose(1, 2), self.x_proj.weight) if own
                else self.x_proj(x.transpose(1, 2)))                                # (B, Lp, R+2N)
        dtx, bx, cx = xdbl.split([R, N, N], dim=-1)   # views (split: one cat in the backward, not three slices')
        dt = self.dt_layernorm(dtx)                                                 # (B, Lp, R)
        Bm = self.b_layernorm(bx)                                                   # (B, Lp, N)
        Cm = self.c_layernorm(cx)                                                   # (B, Lp, N)
        # 4. delta = W_dt dt (bias added in fp32 inside the scan, as the fast path does)
        if own:
            delta = _proj_t(self.dt_proj.weight, dt.transpose(1, 2))               # (B, DI, Lp)
        else:                                                 # (the module adds its bias: none in the scan)
            delta = self.dt_proj(dt).transpose(1, 2).contiguous()
        if Lp > L:
            delta[..., L:].fill_(PAD_DELTA)
        A, D, dt_bias = self._ssm_params()
        dt_bias = dt_bias if own else None
        # 5. selective scan, y = (C.h + D x) * silu(z)
        x, delta, Bm, Cm, z = _one_dtype(x, delta, Bm, Cm, z)                    # (autocast: one dtype)
        y, last = _K.selective_scan(x, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), D, z, dt_bias,
                                    True, ssm_state)                                # (B, DI, Lp), (B, DI, N)
        # 6. out_proj (over all Lp steps: an extent of 8k keeps the fast kernels), the L real ones kept
        out = (_linear_t(y.transpose(1, 2), self.out_proj.weight) if own
               else self.out_proj(y.transpose(1, 2)))                               # (B, Lp, H)
        if Lp > L:                                        # (a copy at batch > 1, which add_rms_norm would make)
            out = out[:, :L] if Bsz == 1 else out[:, :L].contiguous()
        if own and self.out_proj.bias is not None:
            out = out + self.out_proj.bias
        return out, (conv_state if keep_state else None), (last if keep_state else None)

    def _plain_projections(self) -> bool:
        """Whether in_proj, x_proj, dt_proj and out_proj are plain nn.Linears without hooks, so that the layer may
        run their products on their weights in its own layouts; else (a wrapper such as a LoRA layer, a hook) each
        projection's module is called, so that what it adds is not bypassed."""
        ms = self._modules                   # (not nn.Module.__getattr__: ~0.6 instead of ~3 us a call on the VM)
        return (_hookless_linear(ms["in_proj"]) and _hookless_linear(ms["x_proj"]) and _hookless_linear(ms["dt_proj"])
                and _hookless_linear(ms["out_proj"]))

    def _fused_step_work(self, x: Tensor, ssm_state: Tensor) -> Optional[Tensor]:
        """The CUDA workspace of jamba.mamba_inner_step for this layer when the fused step applies to this call
        (MAMBA_STEP_FUSED, CUDA, batch <= MAMBA_STEP_MAX_BATCH (the kernel's limit), one dtype for the step's
        weights, an fp32 state, no gradient, not tracing), else None. Kept between calls (it holds the kernel's
        grid-barrier count)."""
        if (not (MAMBA_STEP_FUSED and _K is _ops and x.is_cuda and x.shape[0] <= MAMBA_STEP_MAX_BATCH
                 and ssm_state.dtype == torch.float32) or _compiling()):
            return None
        ws = (self.x_proj.weight, self.dt_proj.weight, self.conv1d.weight)
        if any(w.dtype != x.dtype for w in ws) or (self.conv1d.bias is not None and self.conv1d.bias.dtype != x.dtype):
            return None
        if torch.is_grad_enabled() and any(p.requires_grad for p in (*ws, self.A_log, self.D, self.dt_proj.bias)):
            return None
        work = getattr(self, "_step_work", None)
        if work is None or work.device != x.device:
            work = _K.mamba_inner_step_workspace(self.intermediate_size, MAMBA_STEP_MAX_BATCH,
                                                 self.x_proj.weight.shape[0], x.device)
            self._step_work = work
        return work

    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One decode token. hidden_states (B, 1, H); conv_state (B, DI, K) and ssm_state (B, DI, N) are
        updated in place. Returns (B, 1, H)."""
        DI = self.intermediate_size  # R = time_step_rank, N = ssm_state_size in the shape comments
        if not self._plain_projections():                                   # a wrapped projection: its module
            return self._step_modules(hidden_states, conv_state, ssm_state)
        xz = _proj(hidden_states[:, 0], self.in_proj.weight, self.in_proj.bias)      # (B, 2DI)
        x, z = xz[:, :DI], xz[:, DI:]                                               # (B, DI), unit stride
        work = self._fused_step_work(x, ssm_state)
        w_eps = self._xproj_norm_weight() if work is not None else None
        if w_eps is not None and w_eps[0].dtype == x.dtype:                 # conv .. state update as one op
            A, D, dt_bias = self._ssm_params()
            y = _K.mamba_inner_step(x, z, conv_state, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                    w_eps[0], self.dt_proj.weight, A, D, dt_bias, ssm_state, self.time_step_rank,
                                    w_eps[1], work)                         # (B, DI)
            return _proj(y, self.out_proj.weight, self.out_proj.bias)[:, None]
        x = _K.causal_conv1d_update(x, conv_state, self.conv1d.weight, self.conv1d.bias, True)  # (B, DI)
        xdbl = _proj(x, self.x_proj.weight)                                         # (B, R+2N)
        dt, Bm, Cm = self._xproj_norms(xdbl)                                        # (B, R), (B, N), (B, N) views
        dt = _proj(dt, self.dt_proj.weight)                                         # (B, DI), no bias
        A, D, dt_bias = self._ssm_params()
        y = _K.selective_state_update(ssm_state, x, dt, A, Bm, Cm, D, z, dt_bias, True)  # (B, DI)
        return _proj(y, self.out_proj.weight, self.out_proj.bias)[:, None]           # (B, 1, H)

    def _step_modules(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """step() with each projection's module called (see _plain_projections); dt_proj's module adds its bias."""
        DI = self.intermediate_size
        xz = self.in_proj(hidden_states[:, 0])                                       # (B, 2DI)
        x, z = xz[:, :DI].contiguous(), xz[:, DI:].contiguous()
        x = _K.causal_conv1d_update(x, conv_state, self.conv1d.weight, self.conv1d.bias, True)  # (B, DI)
        dt, Bm, Cm = self._xproj_norms(self.x_proj(x))                              # (B, R), (B, N), (B, N)
        dt = self.dt_proj(dt)                                                       # (B, DI), with its bias
        A, D, _ = self._ssm_params()
        y = _K.selective_state_update(ssm_state, x, dt, A, Bm, Cm, D, z, None, True)  # (B, DI)
        return self.out_proj(y)[:, None]                                            # (B, 1, H)


class JambaAttention(nn.Module):
    """Grouped-query causal attention, no positional embeddings, no biases, scale hd^-0.5 (SDPA)."""

    def __init__(self, config: JambaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attention_dropout = float(config.attention_dropout)   # on the attention weights, in training only
        H, hd = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(H, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(H, self.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(H, self.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, H, bias=False)

    def forward(self, hidden_states: Tensor, step: _Step, cache: Optional[JambaHybridCache] = None) -> Tensor:
        Bsz, L, _ = hidden_states.shape
        hd = self.head_dim
        nkv = self.num_key_value_heads
        qkv = _joint_proj((self.q_proj, self.k_proj, self.v_proj), hidden_states)
        if qkv is not None:                                                    # one product, split in views
            q, k, v = qkv.split([self.num_heads * hd, nkv * hd, nkv * hd], dim=-1)
        else:
            q, k, v = (_linear(m, hidden_states) for m in (self.q_proj, self.k_proj, self.v_proj))
        q = q.view(Bsz, L, self.num_heads, hd).transpose(1, 2)                                   # (B, nh, L, hd)
        k = k.view(Bsz, L, nkv, hd).transpose(1, 2)                                              # (B, nkv, L, hd)
        v = v.view(Bsz, L, nkv, hd).transpose(1, 2)
        if step.static:
            k, v = cache.update_kv_static(self.layer_idx, k, v)                                   # (B, nkv, cap, hd)
        elif cache is not None:
            k, v = cache.update_kv(self.layer_idx, k, v)                                           # (B, nkv, P+L, hd)
        rep = self.num_heads // self.num_key_value_heads
        drop = self.attention_dropout if self.training else 0.0
        if L == 1 and q.is_cuda and hd in (64, 128, 256) and rep <= 8 and Bsz * nkv <= 65535 and not drop and not (
                torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
            # one new token on CUDA: jamba.decode_attention splits the keys over the SMs (SDPA runs one block per
            # (batch, KV head) here: ~190 us against a 4.5K-key cache, 19 MB of K / V). Query head h = kv * rep + r.
            km = None if step.attn_mask is None else step.attn_mask[:, 0, 0, :]                    # (B, S) bool
            o = _K.decode_attention(q.reshape(Bsz, nkv, rep, hd), k, v, km)
            return _linear(self.o_proj, o.reshape(Bsz, 1, self.num_heads * hd))
        # With enable_gqa and a key mask SDPA has only its math path left (flash takes no mask, the efficient
        # kernel no unequal head counts; cuDNN is kept off for decode, see _sdpa): it materialises the scores
        # and copies K/V rep times per call. So, with a mask (static-cache decode of the CUDA graphs, padded
        # batches, chunked prefill):
        if L == 1 and rep > 1 and not step.is_causal:
            # one new token: the rep query heads of a KV head become rep query rows, (B, nkv, rep, hd) against
            # (B, nkv, S, hd): no K/V copy, no enable_gqa; the mask (B, 1, 1, S) broadcasts over the rows.
            # Query head h = kv * rep + r, as repeat_interleave / enable_gqa pair them.
            o = _sdpa(q.reshape(Bsz, self.num_key_value_heads, rep, hd), k, v, step.attn_mask, False, False, drop)
            return _linear(self.o_proj, o.reshape(Bsz, 1, self.num_heads * hd))
        gqa = rep > 1
        if gqa and (not _SDPA_HAS_GQA or step.attn_mask is not None):  # several rows under a mask: repeat K/V
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            gqa = False
        if step.offset_causal:                                          # a chunk of a chunked prefill
            o = _sdpa_offset_causal(q, k, v, gqa, drop)
        else:
            o = _sdpa(q, k, v, step.attn_mask, step.is_causal, gqa, drop)
        o = o.transpose(1, 2).reshape(Bsz, L, self.num_heads * hd)                                 # (B, L, nh*hd)
        if step.mamba_mask is not None:  # padded queries (which attended everywhere, see _step) give 0, as in
            o = o * step.mamba_mask[:, :, None].to(o.dtype)   # transformers: a left pad's logits predict the
        return _linear(self.o_proj, o)                        # first real token, which the loss counts


class JambaMLP(nn.Module):
    """Dense SwiGLU MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: JambaConfig):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        gu = _joint_proj((self.gate_proj, self.up_proj), x)
        if gu is not None:                                  # one (2F, H) product, then silu_mul (HF's roundings)
            return _linear(self.down_proj, _K.silu_mul(gu)), None
        return _linear(self.down_proj, F.silu(_linear(self.gate_proj, x)) * _linear(self.up_proj, x)), None


class JambaTopKRouter(nn.Module):
    """Router weight (E, H), no bias (key feed_forward.router.weight, as in transformers 4.x and 5.x)."""

    def __init__(self, config: JambaConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))


# ---- fp8 experts (weight-only quantisation) -----------------------------------------------------------------
# JambaExperts.quantize_fp8_ (model.quantize_experts("fp8"), from_pretrained(..., experts_dtype="fp8")) stores the
# expert weights as float8_e4m3fn with one f32 scale per weight row (ops.quantize_fp8: scale = max|row| / 448), and the
# MoE runs ops.moe_experts_fp8 on them. Jamba-v0.1's experts are 45 of its 52B parameters: ~58 GB instead of ~104 GB.
_FP8 = getattr(torch, "float8_e4m3fn", None)
_FP8_NAMES = {"fp8": _FP8, "float8_e4m3fn": _FP8, "torch.float8_e4m3fn": _FP8}
_EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")


def _as_experts_dtype(d, where: str) -> Optional[torch.dtype]:
    """None (experts unquantized) or torch.float8_e4m3fn, from "fp8" / "float8_e4m3fn" / torch.float8_e4m3fn."""
    if d is None:
        return None
    dt = _FP8_NAMES.get(d) if isinstance(d, str) else d
    if dt is None or dt != _FP8:
        raise ValueError(f"{where}: the experts' dtype must be None (unquantized), \"fp8\", \"float8_e4m3fn\" or "
                         f"torch.float8_e4m3fn (weight-only e4m3 with a per-row scale), got {d!r}")
    return dt


def _quantize_into(q: Tensor, s: Tensor, w: Tensor, dtype: Optional[torch.dtype] = None,
                   name: str = "the expert weights") -> None:
    """q (..., R, K) fp8 and s (..., R) f32 <- ops.quantize_fp8(w), w of q's shape in any float dtype on any device:
    one (R, K) matrix at a time, moved to q's device and rounded to dtype first (when given), so the temporaries
    (fp32 inside quantize_fp8) stay one matrix's, never a whole expert tensor's. name: what w is (a state-dict key,
    a checkpoint file), in the error a weight quantize_fp8 refuses (inf / NaN) raises: it named neither."""
    if w.dim() > 2:
        for e in range(w.shape[0]):
            _quantize_into(q[e], s[e], w[e], dtype, f"{name}, expert {e}")
        return
    try:
        qe, se = _ops.quantize_fp8(w.detach().to(device=q.device, dtype=dtype or w.dtype))
    except ValueError as err:
        raise ValueError(f"{name}: {err} (fp8 quantization needs finite weights)") from None
    q.copy_(qe)
    s.copy_(se)


def _check_finite_experts(model: nn.Module, where: str) -> None:
    """Every unquantized JambaExperts weight of model is finite, else a ValueError naming the weight and expert:
    quantize_experts checks all of them before it changes any, so a NaN in the last MoE layer leaves the model as it
    was (it left the layers before quantized and that layer half: an fp8 gate_up_proj beside a float down_proj, whose
    forward then failed in moe_experts). One expert at a time (the bool temporaries stay one matrix's)."""
    for path, m in model.named_modules():
        if not isinstance(m, JambaExperts) or m.is_fp8:
            continue
        for wname in _EXPERT_WEIGHTS:
            w = getattr(m, wname)
            if w.is_meta:
                continue
            for e in range(w.shape[0]):
                if not bool(torch.isfinite(w[e]).all()):
                    raise ValueError(f"{where}: {path + '.' if path else ''}{wname}, expert {e}, holds inf or NaN; "
                                     "fp8 quantization needs finite weights (nothing was quantized)")


class JambaExperts(nn.Module):
    """All experts' weights, transformers 5.x fused layout: gate_up_proj (E, 2F, H), gate rows first;
    down_proj (E, H, F).

    quantize_fp8_() turns them into float8_e4m3fn buffers of the same names and shapes plus f32 buffers
    gate_up_proj_scale (E, 2F) and down_proj_scale (E, H) (one scale per row, ops.quantize_fp8): frozen weights that
    model.to(dtype) / .half() / .float() leave as they are (only moved between devices), and that load_state_dict
    fills from an unquantized state dict by quantizing it."""

    def __init__(self, config: JambaConfig):
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.num_experts = E
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        self.act_fp8 = False  # with fp8 weights: allow fp8 activations (ops.moe_experts_fp8 act_fp8; quantize_experts)

    @property
    def is_fp8(self) -> bool:
        return _FP8 is not None and self.down_proj.dtype == _FP8

    @torch.no_grad()
    def quantize_fp8_(self) -> "JambaExperts":
        """Replaces the weight Parameters by fp8 buffers and their per-row scales, one expert at a time on the weights'
        device (the old storage is released once nothing else refers to it). On the meta device it only makes
        meta buffers of the right dtypes and shapes. A no-op when already fp8."""
        if self.is_fp8:
            return self
        if _FP8 is None:
            raise RuntimeError("quantize_fp8_: this torch has no float8_e4m3fn dtype (torch >= 2.1 has it)")
        done = {}
        for name in _EXPERT_WEIGHTS:             # both quantized before either is replaced: an error (inf / NaN)
            w = getattr(self, name)              # leaves the module as it was, not half fp8
            q = torch.empty(w.shape, dtype=_FP8, device=w.device)
            s = torch.empty(w.shape[:-1], dtype=torch.float32, device=w.device)
            if not w.is_meta:
                _quantize_into(q, s, w, name=name)
            done[name] = (q, s)
            del w
        for name, (q, s) in done.items():
            delattr(self, name)                  # the Parameter goes; then its storage with the last reference
            self.register_buffer(name, q)
            self.register_buffer(name + "_scale", s)
        return self

    def _apply(self, fn, recurse=True):
        """nn.Module.to(dtype) / .half() / .float() cast every floating tensor, float8 included, which would turn the
        fp8 weights into their unscaled values. With fp8 experts, a conversion that changes a buffer's dtype only
        moves it to the device the conversion targets (found on an empty tensor); device moves and to_empty apply."""
        if not self.is_fp8:
            return super()._apply(fn, recurse)
        for name, t in self._buffers.items():
            if t is not None:
                probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
                self._buffers[name] = fn(t) if probe.dtype == t.dtype else t.to(probe.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """fp8 experts quantize an unquantized state dict's expert weights (their scales then come from here);
        unquantized experts take an fp8 state dict's weights dequantized (float(q) * scale, rounded to their dtype)."""
        for name in _EXPERT_WEIGHTS:
            key, skey = prefix + name, prefix + name + "_scale"
            v, mine = state_dict.get(key), getattr(self, name)
            if not isinstance(v, Tensor) or tuple(v.shape) != tuple(mine.shape):
                continue                              # (the default reports the missing key / the mismatch)
            if self.is_fp8 and v.dtype != _FP8 and v.dtype.is_floating_point:
                q, sc = torch.empty_like(mine), torch.empty(mine.shape[:-1], dtype=torch.float32, device=mine.device)
                with torch.no_grad():
                    _quantize_into(q, sc, v, name=key)
                state_dict[key], state_dict[skey] = q, sc
            elif not self.is_fp8 and v.dtype == _FP8:
                sc = state_dict.pop(skey, None)
                if sc is None:
                    error_msgs.append(f"{key}: float8 weights without their scales {skey!r} in the state dict")
                    continue
                state_dict[key] = (v.to(torch.float32) * sc.to(v.device, torch.float32)[..., None]).to(mine.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        E, H, I = self.num_experts, self.down_proj.shape[1], self.down_proj.shape[2]
        return f"num_experts={E}, hidden={H}, ffn={I}" + (", float8_e4m3fn with per-row scales" if self.is_fp8 else "")


_EXPERT_KEY = re.compile(r"^experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _fuse_expert_keys(module: "JambaSparseMoeBlock", state_dict: dict, prefix: str, error_msgs: list) -> None:
    """load_state_dict pre-hook body: per-expert keys under `prefix` -> experts.gate_up_proj / down_proj."""
    found: Dict[Tuple[int, str], str] = {}
    for key in list(state_dict.keys()):
        if key.startswith(prefix):
            m = _EXPERT_KEY.match(key[len(prefix):])
            if m:
                found[(int(m.group(1)), m.group(2))] = key
    if not found:
        return
    E = module.experts.num_experts
    I, H = module.experts.down_proj.shape[2], module.experts.down_proj.shape[1]
    want = {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    bad = False
    for (e, name), key in found.items():
        shape = tuple(state_dict[key].shape)
        if e >= E:
            error_msgs.append(f"{key}: expert index {e} out of range, the model has num_experts={E}")
            bad = True
        elif shape != want[name]:
            error_msgs.append(f"size mismatch for {key}: expected shape {want[name]} (from the config), "
                              f"found {shape} in the checkpoint")
            bad = True
    complete = all((e, n) in found for e in range(E) for n in want)
    if bad or not complete:
        return  # leave the keys: strict loading reports them as unexpected, the fused ones as missing
    gate = torch.stack([state_dict.pop(found[(e, "gate_proj")]) for e in range(E)])
    up = torch.stack([state_dict.pop(found[(e, "up_proj")]) for e in range(E)])
    state_dict[prefix + "experts.gate_up_proj"] = torch.cat([gate, up], dim=1)        # (E, 2F, H) gate first
    state_dict[prefix + "experts.down_proj"] = torch.stack(
        [state_dict.pop(found[(e, "down_proj")]) for e in range(E)])                     # (E, H, F)


class JambaSparseMoeBlock(nn.Module):
    """Top-k MoE, Jamba routing (fp32 softmax, no renormalisation), through jamba_ext.moe.
    Accepts per-expert state dicts (transformers 4.x / checkpoints on disk) through a load pre-hook."""

    def __init__(self, config: JambaConfig):
        super().__init__()
        self.hidden_dim = config.hidden_size
        self.ffn_dim = config.intermediate_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.router = JambaTopKRouter(config)
        self.experts = JambaExperts(config)
        self._register_load_state_dict_pre_hook(self._load_hook, with_module=True)

    @staticmethod
    def _load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        _fuse_expert_keys(module, state_dict, prefix, error_msgs)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """x (B, L, H) -> (out (B, L, H), router logits (B*L, E))."""
        shape = x.shape
        ex = self.experts
        if ex.is_fp8:                      # fp8 weights as they are (x in the compute dtype, autocast's under autocast)
            x, = _amp_lowp(x)
            out, logits = _moe.sparse_moe_forward(x.reshape(-1, shape[-1]), self.router.weight, ex.gate_up_proj,
                                                  ex.down_proj, self.top_k, _proj,
                                                  fp8_scales=(ex.gate_up_proj_scale, ex.down_proj_scale),
                                                  act_fp8=ex.act_fp8)
            return out.view(shape), logits
        x, w_gate_up, w_down = _amp_lowp(x, ex.gate_up_proj, ex.down_proj)
        out, logits = _moe.sparse_moe_forward(x.reshape(-1, shape[-1]), self.router.weight, w_gate_up, w_down,
                                              self.top_k, _proj)
        return out.view(shape), logits


class _DecoderLayer(nn.Module):
    """Pre-norm block: h = x + mixer(norm_in(x)); out = h + ffn(norm_ff(h)). The residual add of the
    previous block is fused into this block's input norm (add_rms_norm), the arithmetic of transformers."""

    def __init__(self, config: JambaConfig, layer_idx: int):
        super().__init__()
        ffn = JambaSparseMoeBlock if config.layers_num_experts[layer_idx] > 1 else JambaMLP
        self.feed_forward = ffn(config)
        self.input_layernorm = JambaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.pre_ff_layernorm = JambaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def mix(self, h: Tensor, step: _Step, cache: Optional[JambaHybridCache]) -> Tensor:
        raise NotImplementedError

    def forward(self, hidden_states: Tensor, residual: Optional[Tensor], step: _Step,
                cache: Optional[JambaHybridCache] = None):
        """Returns (ffn output, residual, router logits | None); the block's output is their sum."""
        if residual is None:
            residual = hidden_states
            h = self.input_layernorm(hidden_states)
        else:
            h, residual = _K.add_rms_norm(*_one_dtype(hidden_states, residual, self.input_layernorm.weight),
                                          self.input_layernorm.variance_epsilon)
        h = self.mix(h, step, cache)
        h, residual = _K.add_rms_norm(*_one_dtype(h, residual, self.pre_ff_layernorm.weight),
                                      self.pre_ff_layernorm.variance_epsilon)
        h, router_logits = self.feed_forward(h)
        return h, residual, router_logits


class JambaMambaDecoderLayer(_DecoderLayer):
    def __init__(self, config: JambaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.mamba = JambaMambaMixer(config, layer_idx)

    def mix(self, h, step, cache):
        return self.mamba(h, cache, step.mamba_mask)


class JambaAttentionDecoderLayer(_DecoderLayer):
    def __init__(self, config: JambaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = JambaAttention(config, layer_idx)

    def mix(self, h, step, cache):
        return self.self_attn(h, step, cache)


# ---- weights -------------------------------------------------------------------------------------------
def _init_weights(model: nn.Module, std: float, generator: Optional[torch.Generator] = None) -> None:
    """transformers' init: N(0, std) for Linear / Conv / Embedding / router / experts, zero biases,
    A_log = log(1..N), D = 1, norm weights 1, zero padding-row embedding."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                m.weight.normal_(0.0, std, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std, generator=generator)
            elif isinstance(m, JambaRMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, JambaTopKRouter):
                m.weight.normal_(0.0, std, generator=generator)
            elif isinstance(m, JambaExperts) and m.is_fp8:      # N(0, std) one expert at a time, quantized
                for name in _EXPERT_WEIGHTS:
                    q, sc = getattr(m, name), getattr(m, name + "_scale")
                    for e in range(q.shape[0]):
                        w = torch.empty(q.shape[1:], device=q.device).normal_(0.0, std, generator=generator)
                        _quantize_into(q[e], sc[e], w)
            elif isinstance(m, JambaExperts):
                m.gate_up_proj.normal_(0.0, std, generator=generator)
                m.down_proj.normal_(0.0, std, generator=generator)
            elif isinstance(m, JambaMambaMixer):
                N = m.ssm_state_size
                m.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand_as(m.A_log))
                m.D.fill_(1.0)
        for m in model.modules():                     # after a tied lm_head's init overwrote the embedding
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()


def to_per_expert_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Fused expert keys (transformers 5.x, ours) -> per-expert keys experts.{e}.gate_proj/up_proj/down_proj
    (transformers 4.x, checkpoints on disk). Other keys pass through. The per-expert tensors are views."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("experts.gate_up_proj"):
            base, I = k[: -len("gate_up_proj")], v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = v[e, :I]
                out[f"{base}{e}.up_proj.weight"] = v[e, I:]
        elif k.endswith("experts.down_proj"):
            base = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = v[e]
        else:
            out[k] = v
    return out


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _as_dtype(d) -> Optional[torch.dtype]:
    if d is None or (isinstance(d, torch.dtype) and d in _DTYPES.values()):
        return d
    if isinstance(d, str) and d in _DTYPES:
        return _DTYPES[d]
    raise ValueError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16 (or one of {sorted(_DTYPES)}), "
                     f"got {d!r}")


def _config_dtype(config) -> torch.dtype:
    """The weights' dtype a config names ("dtype", transformers 5's field, else "torch_dtype"; a torch.dtype there by
    its name too), float32 when it names none. A name that is not one of _DTYPES is a ValueError naming the field: it
    loaded as float32 without a word (transformers loads "float64" as float64; the kernels here run float32, bfloat16
    and float16 only, as from_config(dtype=) says, and a typo raised AttributeError in transformers)."""
    for field in ("dtype", "torch_dtype"):
        v = getattr(config, field, None)
        if v is None or v == "":
            continue
        name = str(v).replace("torch.", "")
        if name not in _DTYPES:
            raise ValueError(f"config.{field}: {v!r} is not a dtype jamba_ext runs; expected one of "
                             f"{sorted(_DTYPES)} (or pass dtype= to from_pretrained to load the weights in one)")
        return _DTYPES[name]
    return torch.float32


def resolve_checkpoint(path: str) -> str:
    """A checkpoint location as a local directory: a directory as is; a Hugging Face Hub id ("org/name", not a local
    path) downloaded through huggingface_hub (its cache; config, tokenizer and chat-template files and the safetensors
    weights, the .bin weights only where the repository has no safetensors). FileNotFoundError otherwise, saying
    which."""
    path = _local_path(path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} is a file; expected a checkpoint directory (config.json and "
                                "weights) or a Hugging Face Hub id")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) is None:
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{path!r} is not a local directory; to download it from the Hugging Face Hub, install "
                                "huggingface_hub (pip install huggingface_hub)") from None
    meta = ["*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:
        local = snapshot_download(path, allow_patterns=meta + ["*.safetensors"])
        if not any(f.endswith(".safetensors") for f in os.listdir(local)):
            local = snapshot_download(path, allow_patterns=meta + ["*.bin"])
    except Exception as e:    # (the Hub's error alone, "check your internet connection", hid a mistyped local path)
        raise FileNotFoundError(f"{path!r} is not a local directory, and as a Hugging Face Hub id it could not be "
                                f"downloaded ({type(e).__name__}: {e})") from e
    return local


def _as_jamba_config(config) -> "JambaConfig":
    """from_config's / from_pretrained's config: a JambaConfig, a dict of its fields, or a transformers JambaConfig
    (converted through its to_dict(): it lacks the derived fields the layers read, such as mamba_d_inner)."""
    if isinstance(config, JambaConfig):
        return config
    if isinstance(config, dict):
        return JambaConfig.from_dict(config)
    if callable(getattr(config, "to_dict", None)) and getattr(config, "model_type", None) == "jamba":
        return JambaConfig.from_dict(config.to_dict())
    raise ValueError(f"config: expected a JambaConfig (or a dict of its fields, or a transformers JambaConfig), got "
                     f"{type(config).__name__}")


def _checkpoint_files(path: str) -> List[str]:
    """The weight files of a local checkpoint directory, honouring a sharded index."""
    return _checkpoint_layout(path)[0]


def _checkpoint_layout(path: str) -> Tuple[List[str], Optional[Tuple[str, Dict[str, str]]]]:
    """(the weight files of a local checkpoint directory, honouring a sharded index; (the index file, its weight_map
    with each shard as a path under `path`) when there is an index, else None)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            weight_map = read_json_object(index).get("weight_map")      # (a ValueError naming the file, not json's)
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no weight_map")
            if not all(isinstance(s, str) for s in weight_map.values()):
                raise ValueError(f"{index}: weight_map's values must be shard file names")
            files = sorted(set(weight_map.values()))
            missing = [s for s in files if not os.path.isfile(os.path.join(path, s))]
            if missing:
                raise FileNotFoundError(f"{index} lists shards that are not in {path!r}: {missing[:5]}")
            return [os.path.join(path, s) for s in files], (index, {k: os.path.join(path, s)
                                                                     for k, s in weight_map.items()})
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)], None
    raise FileNotFoundError(f"no weights in {path!r}: expected model.safetensors, model.safetensors.index.json, "
                            "pytorch_model.bin or pytorch_model.bin.index.json")


def _shard_limit(max_shard_size) -> int:
    """save_pretrained's max_shard_size in bytes: an int, or a size string as transformers 5 takes it ("5GB", "500MB",
    "1.5GB": decimal units, any case) and the binary units of its max_memory ("2GiB", "512MiB")."""
    if isinstance(max_shard_size, numbers.Integral) and not isinstance(max_shard_size, bool):
        max_shard_size = int(max_shard_size)
    try:
        n = _placement.parse_size(max_shard_size)
    except ValueError:
        n = 0
    if n <= 0:
        raise ValueError(f"save_pretrained: max_shard_size {max_shard_size!r} is not a positive size: bytes as an "
                         "int, or a number and a unit, e.g. '5GB', '500MB', '2GiB'")
    return n


def _shard_plan(sd: Dict[str, Tensor], limit: int) -> Dict[str, List[str]]:
    """{file name: its keys}: huggingface_hub's split (transformers 5's save_pretrained), so the files are named and
    filled as transformers would: keys in order into the current shard until the next one would pass `limit`; a tensor
    larger than `limit` gets a shard of its own. One shard is model.safetensors."""
    shards: List[List[str]] = []
    current: List[str] = []
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if n > limit:
            shards.append([k])
            continue
        if size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append(k)
        size += n
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        return {"model.safetensors": shards[0]}
    return {f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors": keys for i, keys in enumerate(shards)}


def _earlier_weight_files(path: str) -> set:
    """The safetensors weight files of an earlier save in path: model.safetensors and the shards its index lists
    (plain *.safetensors names: an index naming other files, or files elsewhere, does not get them removed)."""
    out = {"model.safetensors"} if os.path.isfile(os.path.join(path, "model.safetensors")) else set()
    try:
        with open(os.path.join(path, "model.safetensors.index.json"), encoding="utf-8") as f:
            names = list(json.load(f).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError, TypeError):     # (none, or malformed: it is replaced all the same)
        names = []
    out.update(n for n in names if isinstance(n, str) and n.endswith(".safetensors") and os.path.basename(n) == n)
    return out


PROGRESS_MIN_BYTES = 1 << 30       # from_pretrained(progress=None) reports files that hold more than this


class _LoadProgress:
    """One stderr line per finished weight file: i/n, name, size, read rate, time since the first file."""

    def __init__(self, files: Sequence[str]):
        self.n, self.t0 = len(files), time.perf_counter()
        self.total = sum(os.path.getsize(f) for f in files)
        self.done, self.i, self.t_file = 0, 0, self.t0

    def file_done(self, fpath: str) -> None:
        now, size = time.perf_counter(), os.path.getsize(fpath)
        self.i, self.done = self.i + 1, self.done + size
        rate = size / max(now - self.t_file, 1e-9) / 1e9
        sys.stderr.write(f"loading weights: {self.i}/{self.n} {os.path.basename(fpath)} {size / 1e9:.2f} GB "
                         f"({rate:.2f} GB/s) | {self.done / 1e9:.1f} of {self.total / 1e9:.1f} GB in "
                         f"{now - self.t0:.1f} s\n")
        sys.stderr.flush()
        self.t_file = now


def _iter_checkpoint(files: Sequence[str], progress: Optional[_LoadProgress] = None
                     ) -> Iterable[Tuple[str, Tensor, str]]:
    for fpath in files:
        yield from _iter_file(fpath)
        if progress is not None:
            progress.file_done(fpath)


def _iter_file(fpath: str) -> Iterable[Tuple[str, Tensor, str]]:
    if fpath.endswith(".safetensors"):
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError("reading .safetensors checkpoints needs the `safetensors` package "
                              "(pip install safetensors)") from None
        try:
            f = safe_open(fpath, framework="pt", device="cpu")
        except Exception as e:          # (safetensors' own error type, e.g. a truncated file: "invalid header length")
            raise ValueError(f"{fpath}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        with f:
            for k in f.keys():
                yield k, f.get_tensor(k), fpath
    else:
        try:
            sd = torch.load(fpath, map_location="cpu", weights_only=True)
        # (UnpicklingError: not a pickle at all, or one of objects other than tensors, such as a whole pickled model)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"{fpath}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(sd, dict):
            raise ValueError(f"{fpath}: expected a state dict (a dict of tensors), found a {type(sd).__name__}")
        for k, v in sd.items():
            if not isinstance(v, Tensor):     # (a list, a number, a nested dict: an AttributeError further on)
                raise ValueError(f"{fpath}: {k!r} holds a {type(v).__name__}, not a tensor; a checkpoint's "
                                 "state dict maps each weight name to a tensor")
            yield k, v, fpath


# ---- models --------------------------------------------------------------------------------------------
class _TupleOutput:
    """transformers' ModelOutput behaviour for our output dataclasses: to_tuple() and indexing skip the fields that
    are None (in _TUPLE_FIELDS order); out["name"] reads a field (_ALIASES: other names of a field)."""
    _TUPLE_FIELDS: Tuple[str, ...] = ()
    _ALIASES: Dict[str, str] = {}

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f) for f in self._TUPLE_FIELDS if getattr(self, f) is not None)

    def __getitem__(self, key):
        """out["loss"] (a field by name) or out[i] / out[a:b] (to_tuple()), as transformers' model outputs."""
        if isinstance(key, str):
            key = self._ALIASES.get(key, key)
            if key not in self.__dataclass_fields__:
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


@dataclass
class CausalLMOutput(_TupleOutput):
    logits: Optional[Tensor] = None                 # (B, L_kept, V) in model dtype
    cache: Optional[JambaHybridCache] = None
    loss: Optional[Tensor] = None
    aux_loss: Optional[Tensor] = None
    router_logits: Optional[Tuple[Tensor, ...]] = None
    last_hidden_state: Optional[Tensor] = None
    hidden_states: Optional[Tuple[Tensor, ...]] = None  # output_hidden_states=True: num_layers + 1 (B, L, H)

    @property
    def past_key_values(self):
        return self.cache

    # transformers' MoeCausalLMOutputWithPast order; its to_tuple() and indexing skip the fields that are None, so
    # out[0] is the loss when labels were given (what the transformers Trainer reads), else the logits
    _TUPLE_FIELDS = ("loss", "aux_loss", "logits", "cache", "hidden_states", "router_logits")
    _ALIASES = {"past_key_values": "cache"}


@dataclass
class GenerateOutput(_TupleOutput):
    """generate(return_dict_in_generate=True), as transformers' GenerateDecoderOnlyOutput: sequences (B, T + n); scores
    (output_scores=True): per new token the fp32 scores (B, V) the token was picked from (after repetition_penalty,
    min_new_tokens and, when sampling, temperature / top_k / top_p; -inf where filtered); logits (output_logits=True):
    per new token the raw fp32 logits (B, V)."""
    sequences: Optional[Tensor] = None
    scores: Optional[Tuple[Tensor, ...]] = None
    logits: Optional[Tuple[Tensor, ...]] = None
    _TUPLE_FIELDS = ("sequences", "scores", "logits")


class _PreTrained(nn.Module):
    config: JambaConfig

    def clear_decode_graph(self) -> None:
        """Frees the decode graph (and its static cache) that generate() kept for a later call
        (KEEP_GRAPH_MAX_BYTES)."""
        self.__dict__.pop("_decode_graph_kept", None)

    def _apply(self, fn, recurse=True):
        self.clear_decode_graph()                # (a kept graph reads the tensors as they were: moved, it would not)
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_decode_graph_kept", None)    # (copy.deepcopy / pickle: a CUDA graph is neither)
        return state

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def init_weights(self, seed: Optional[int] = None) -> None:
        g = None
        if seed is not None:
            if not (_is_int(seed) and -2 ** 63 <= seed < 2 ** 64):
                raise ValueError(f"seed: expected an int in [-2^63, 2^64) or None, got {seed!r}")
            g = torch.Generator(device=self.device)
            g.manual_seed(seed)
        _init_weights(self, self.config.initializer_range, g)

    @classmethod
    def from_config(cls, config: JambaConfig, dtype=None, device=None, seed: Optional[int] = None):
        """A randomly initialised model (transformers' init; seed for reproducibility), built directly on
        `device` in `dtype` (no fp32 CPU copy first). config: a JambaConfig (or a dict of its fields)."""
        config = _as_jamba_config(config)
        with torch.device("meta"):
            model = cls(config)
        if dtype is not None:
            model = model.to(_as_dtype(dtype))                 # still on meta: no memory, no fp32 copy
        model = model.to_empty(device=device or "cpu")
        model._retie()
        if FUSE_PROJECTIONS:
            model.fuse_projections()                           # before the init: it writes into the views
        model.init_weights(seed)
        return model.eval()

    def _retie(self) -> None:
        pass

    def tie_weights(self) -> None:
        """transformers' name: ties lm_head to the token embedding when config.tie_word_embeddings (else nothing)."""
        self._retie()

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """transformers' helper: bytes of the parameters (and buffers), each tensor's storage counted once."""
        seen, total = set(), 0
        for t in list(self.parameters()) + (list(self.buffers()) if return_buffers else []):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.nelement() * t.element_size()
        return total

    supports_gradient_checkpointing = True             # (what transformers' Trainer and PEFT look for)
    main_input_name = "input_ids"                      # (transformers' Trainer and pipelines read it)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (transformers' name; PEFT and resizing code call it)."""
        return self.embed_tokens if isinstance(self, JambaModel) else self.model.embed_tokens

    def get_output_embeddings(self) -> Optional[nn.Module]:
        return getattr(self, "lm_head", None)

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if isinstance(self, JambaModel):
            self.embed_tokens = value
        else:
            self.model.embed_tokens = value
        self._retie()

    def set_output_embeddings(self, value: nn.Module) -> None:
        if not hasattr(self, "lm_head"):
            raise AttributeError(f"{type(self).__name__} has no output embeddings (lm_head)")
        self.lm_head = value

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The parameter count (transformers' method): each tensor once (a tied lm_head counts once), only those
        requiring grad with only_trainable, without the token embedding and lm_head with exclude_embeddings. Expert
        weights quantized to fp8 (quantize_experts) are buffers but still count, once each (their scales do not);
        they are frozen, so only_trainable leaves them out."""
        skip = set()
        if exclude_embeddings:
            skip = {id(self.get_input_embeddings().weight)}
            out = self.get_output_embeddings()
            if out is not None:
                skip.add(id(out.weight))
        n = sum(p.numel() for p in self.parameters()
                if id(p) not in skip and (p.requires_grad or not only_trainable))
        if not only_trainable:
            n += sum(getattr(m, w).numel() for m in self.modules() if isinstance(m, JambaExperts) and m.is_fp8
                     for w in _EXPERT_WEIGHTS)
        return n

    def quantize_experts(self, dtype="fp8", act_fp8: bool = False):
        """Quantizes every MoE layer's expert weights in place to float8_e4m3fn with one f32 scale per weight row
        (JambaExperts.quantize_fp8_: weight-only, one expert at a time on the model's device; the MoE then runs
        ops.moe_experts_fp8). dtype: "fp8", "float8_e4m3fn" or torch.float8_e4m3fn. act_fp8=True also lets the MoE
        quantize its activations per row to fp8 where a kernel for that runs (ops.moe_experts_fp8 act_fp8: on Hopper
        from 7 tokens a call, the experts 1.6-2.3x faster at 512-16384 tokens; the expert outputs' error against bf16
        weights grows from ~4.7% to ~6.6% rms at Jamba-v0.1 sizes); callable again on an fp8 model to switch it.
        Returns self. The expert weights become frozen buffers (LoRA and the router still train); save_pretrained refuses the result, so save before
        quantizing. Jamba-v0.1: ~58 GB instead of ~104 GB in bf16; to never hold the bf16 experts at all, load with
        from_pretrained(..., experts_dtype="fp8")."""
        if dtype is None:  # (_as_experts_dtype's None means "unquantized": it quantized to fp8 all the same)
            raise ValueError("quantize_experts: dtype must be \"fp8\", \"float8_e4m3fn\" or torch.float8_e4m3fn, got "
                             "None (the experts cannot be dequantized in place: load the model again without "
                             "experts_dtype)")
        _as_experts_dtype(dtype, "quantize_experts")
        if not isinstance(act_fp8, bool):  # bool(act_fp8) made act_fp8="no" (or "False") a yes
            raise ValueError(f"quantize_experts: act_fp8 must be True or False, got {act_fp8!r}")
        _check_finite_experts(self, "quantize_experts")
        for m in self.modules():
            if isinstance(m, JambaExperts):
                m.quantize_fp8_()
                m.act_fp8 = act_fp8
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return self

    @property
    def experts_fp8(self) -> bool:
        """Whether the MoE experts are quantized to fp8 (quantize_experts)."""
        return any(m.is_fp8 for m in self.modules() if isinstance(m, JambaExperts))

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grows or shrinks the vocabulary (transformers' method, e.g. after adding tokens to the tokenizer): the
        token embedding and lm_head keep their first rows; new rows start at the mean of the old ones
        (mean_resizing; else N(0, config.initializer_range)); config.vocab_size follows; a tied lm_head stays tied.
        pad_to_multiple_of rounds the size up. Returns the input embedding."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of:
            n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        if n < 1:
            raise ValueError(f"resize_token_embeddings: new_num_tokens must be >= 1, got {n}")
        pad = self.config.pad_token_id
        if pad is not None and not -n <= pad < n:   # (else the saved config.json would not load: validate() refuses it)
            raise ValueError(f"resize_token_embeddings: config.pad_token_id {pad} is not an id of the new vocabulary "
                             f"of {n}; set config.pad_token_id to one (or None) first")

        def grown(w: Tensor) -> Tensor:
            new = w.new_empty(n, w.shape[1])
            k = min(n, w.shape[0])
            new[:k] = w[:k]
            if n > k:
                if mean_resizing:
                    new[k:] = w.float().mean(0).to(w.dtype)
                else:
                    new[k:].normal_(0.0, getattr(self.config, "initializer_range", 0.02))
            return new

        with torch.no_grad():
            emb = nn.Embedding(n, old.embedding_dim, padding_idx=old.padding_idx if (old.padding_idx or 0) < n else None,
                               device=old.weight.device, dtype=old.weight.dtype)
            emb.weight.copy_(grown(old.weight))
            head = self.get_output_embeddings()
            tied = head is not None and head.weight is old.weight
            if isinstance(self, JambaModel):
                self.embed_tokens = emb
            else:
                self.model.embed_tokens = emb
            if head is not None and not tied:
                new_head = nn.Linear(head.in_features, n, bias=False, device=head.weight.device, dtype=head.weight.dtype)
                new_head.weight.copy_(grown(head.weight))
                self.lm_head = new_head
        self.config.vocab_size = n
        for m in self.modules():
            if hasattr(m, "vocab_size"):
                m.vocab_size = n
        self._retie()
        return emb

    def enable_input_require_grads(self) -> None:
        """Makes the embedding's output require grad (transformers' method): with frozen embeddings (adapter
        training) and the reentrant checkpointing (use_reentrant=True), a layer's checkpoint needs an input that
        requires grad, or its backward never runs. The default non-reentrant checkpointing does not need it."""
        def hook(module, inputs, output):
            output.requires_grad_(True)
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)

    def disable_input_require_grads(self) -> None:
        h = getattr(self, "_require_grads_hook", None)
        if h is not None:
            h.remove()
            self._require_grads_hook = None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None, every_n_layers: int = 1,
                                      offload: bool = False) -> None:
        """Activation checkpointing while training (transformers' method name): each decoder layer keeps only its
        inputs in the forward and runs again in the backward (torch.utils.checkpoint, non-reentrant by default;
        gradient_checkpointing_kwargs go to it). Memory per layer falls from the layer's activations to its
        (B, L, H) inputs, for about one more forward of compute. Every op is deterministic, so the recomputed
        forward routes the same tokens to the same experts and the gradients equal those without checkpointing.
        Applies while the module is in train() mode, autograd records and no cache is passed. every_n_layers=n:
        layers 0, n, 2n, ... only (the rest keep their activations); offload=True: what the layers keep for the
        backward lies in pinned CPU memory (torch.autograd.graph.save_on_cpu) until the backward needs it (the
        transformers Trainer's activation_checkpointing_kwargs)."""
        if every_n_layers < 1:
            raise ValueError(f"gradient_checkpointing_enable: every_n_layers must be >= 1, got {every_n_layers}")
        for m in self.modules():
            if isinstance(m, JambaModel):
                m.gradient_checkpointing = True
                m._checkpoint_kwargs = dict(gradient_checkpointing_kwargs or {})
                m._checkpoint_every, m._checkpoint_offload = every_n_layers, bool(offload)

    def gradient_checkpointing_disable(self) -> None:
        for m in self.modules():
            if isinstance(m, JambaModel):
                m.gradient_checkpointing = False

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: Optional[dict] = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """gradient_checkpointing_enable under transformers' newer name (what its Trainer calls first)."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules() if isinstance(m, JambaModel))

    def dispatch(self, device_map, max_memory: Optional[dict] = None) -> "_PreTrained":
        """Moves the model's parts to devices by device_map (jamba_ext.placement: one device, "auto", "balanced",
        a list of devices or a dict {unit or prefix: device}); sets hf_device_map as transformers does when the parts
        lie on more than one device. The forward then moves the hidden state between devices where the layers change
        device; generate() returns its tokens on the embeddings' device and decodes from one CUDA graph per run of
        parts on one GPU (_SplitDecodeGraph), on the same terms as a one-GPU model (cuda_graph=None). The joint
        projections are laid out again (fuse_projections) as from_pretrained does. max_memory: per-device budgets
        with "auto" / "balanced" (jamba_ext.placement). Returns the model."""
        dmap = _placement.resolve_device_map(self, device_map, max_memory)
        self.clear_decode_graph()                   # (its memory lies on the old devices)
        _placement.place(self, dmap)
        self._retie()
        if FUSE_PROJECTIONS:
            self.fuse_projections()                 # (moving copied the fused weights apart: lay them out again)
        if len(set(dmap.values())) > 1:
            self.hf_device_map = _placement.hf_device_map(dmap)
        else:
            self.__dict__.pop("hf_device_map", None)
        return self

    def fuse_projections(self) -> int:
        """Lays each MLP's gate / up weights and each attention layer's q / k / v weights out back to back in one
        buffer (values kept; parameters and their names unchanged: views), so that they run as one product (see
        "joint projections"). from_config and from_pretrained do it (env JAMBA_EXT_FUSE_PROJ=0: not); call it
        again after moving the model to another dtype or device. Returns the number of groups laid out."""
        n = 0
        for m in self.modules():
            if isinstance(m, JambaMLP):
                n += _fuse_linears((m.gate_proj, m.up_proj))
            elif isinstance(m, JambaAttention):
                n += _fuse_linears((m.q_proj, m.k_proj, m.v_proj))
        return n

    @classmethod
    def from_pretrained(cls, path: str, dtype=None, device=None, config: Optional[JambaConfig] = None,
                        progress: Optional[bool] = None, torch_dtype=None, device_map=None, experts_dtype=None,
                        max_memory: Optional[dict] = None):
        """Loads a transformers Jamba checkpoint: config.json + model.safetensors (or a sharded
        model.safetensors.index.json; pytorch_model.bin also read), from a local directory or, given a Hugging Face
        Hub id ("ai21labs/Jamba-v0.1"), downloaded first (resolve_checkpoint; needs huggingface_hub; the only network
        access). Per-expert and fused expert keys both load. dtype: None keeps the config's dtype
        ("dtype"/"torch_dtype") or float32. transformers' spellings work too: torch_dtype= for dtype, "auto" (the
        config's) as either, device_map= one device ("cpu", "cuda", "cuda:1") or the model's layers over several
        devices: "auto" (one GPU when the weights fit it, else as "balanced"), "balanced" (every visible GPU, about
        equal bytes each), a list of devices, or a dict {unit or prefix: device} such as transformers' hf_device_map
        (jamba_ext.placement; each weight is loaded straight onto its device); max_memory= {device: size} budgets
        with "auto" / "balanced", as transformers takes them (e.g. {0: "40GiB", 1: "80GiB"}).
        progress: a line per weight file on stderr (its size, GB/s, time so far); None: on when the files
        hold more than 1 GB. experts_dtype="fp8" (or "float8_e4m3fn", torch.float8_e4m3fn): the MoE expert weights
        are quantized while they are read (weight-only e4m3, one scale per row: quantize_experts), one expert piece at
        a time on `device`, so the unquantized experts of the whole model are never in memory (Jamba-v0.1 in bf16:
        ~58 GB instead of ~104 GB, one 80 GB GPU); the result equals from_pretrained(...).quantize_experts("fp8") bit
        for bit. Raises FileNotFoundError for a missing file and ValueError naming every missing, unexpected or
        mis-shaped key, a weight stored twice (in two shards, in a shard the index does not map it to, experts both
        fused and per expert: _load_checkpoint) and a config dtype other than float32 / bfloat16 / float16 (where
        dtype= does not override it). Tied embeddings with a stored lm_head.weight unlike the embedding load untied,
        as transformers 5 loads them (a warning; config.tie_word_embeddings becomes False). config._name_or_path and
        model.name_or_path hold path as given ("~" expanded; a Hub id, not its download directory), as transformers
        sets them (save_lora's default base_model_name_or_path)."""
        experts_dtype = _as_experts_dtype(experts_dtype, "from_pretrained")
        if torch_dtype is not None:
            if dtype is not None:
                raise ValueError("from_pretrained: give dtype or torch_dtype, not both")
            dtype = None if torch_dtype == "auto" else torch_dtype
        elif isinstance(dtype, str) and dtype == "auto":          # (transformers 5's spelling: dtype="auto")
            dtype = None
        if device_map is not None and device is not None:
            raise ValueError("from_pretrained: give device or device_map, not both")
        name = _local_path(path)                 # (a Hub id as given, not the cache directory it downloads to)
        path = resolve_checkpoint(path)
        config = JambaConfig.from_pretrained(path) if config is None else _as_jamba_config(config)
        files, index = _checkpoint_layout(path)
        dtype = _as_dtype(_config_dtype(config) if dtype is None else dtype)
        with torch.device("meta"):
            model = cls(config)
        model = model.to(dtype)
        if experts_dtype is not None:
            model.quantize_experts(experts_dtype)              # on meta: fp8 buffers and scales, no memory
        dmap = _placement.resolve_device_map(model, device_map if device_map is not None else (device or "cpu"),
                                             max_memory)
        if len(set(dmap.values())) == 1:
            model = model.to_empty(device=next(iter(dmap.values())))
        else:
            _placement.place(model, dmap, empty=True)          # each unit's memory on its own device
            model.hf_device_map = _placement.hf_device_map(dmap)
        model._retie()
        if FUSE_PROJECTIONS:
            model.fuse_projections()                           # before loading: the weights are copied into views
        if progress is None:
            progress = sum(os.path.getsize(f) for f in files) > PROGRESS_MIN_BYTES
        model._load_checkpoint(files, progress, index)
        model._read_generation_config(path)
        # where the weights came from, as transformers records it (config._name_or_path, model.name_or_path, whatever
        # a config.json said): PEFT's adapters and save_lora write it as their base_model_name_or_path
        model.config._name_or_path = model.name_or_path = name
        return model.eval()

    def _read_generation_config(self, path: str) -> None:
        """A checkpoint's generation_config.json, when it has one, becomes the model's generation_config (as
        transformers loads it); generate() then stops at its eos_token_id and pads with its pad_token_id by default
        (an instruct model's end-of-turn token is often there only)."""
        f = os.path.join(path, "generation_config.json")
        if not os.path.isfile(f):
            return
        d = read_json_object(f)
        for k in ("eos_token_id", "pad_token_id", "bos_token_id"):
            v = d.get(k)
            ints = isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v))
            if v is not None and not ints:
                raise ValueError(f"{f}: {k} must be an int or a list of ints, got {v!r}")
        try:
            from transformers import GenerationConfig
            gc = GenerationConfig.from_dict(d)
        except ImportError:
            import types
            gc = types.SimpleNamespace(**{k: d.get(k) for k in ("eos_token_id", "pad_token_id", "bos_token_id")})
        self.generation_config = gc

    def _load_checkpoint(self, files: Sequence[str], progress: bool = False,
                         index: Optional[Tuple[str, Dict[str, str]]] = None) -> None:
        """Copies the checkpoint's tensors into the model one at a time. fp8 experts (quantize_experts on meta before
        to_empty) quantize each piece as it is read (_quantize_into: rounded to the model's dtype first, as
        from_pretrained without experts_dtype would hold it), so the result equals quantizing after the load; their
        *_scale buffers, not in checkpoints, count as loaded with their weights.

        A weight stored twice (one key in two shards; "layers.0..." and "model.layers.0..."; a layer's experts both
        fused and per expert) and, with an index (index file, {key: shard path}), a key found in a shard other than
        the one the index maps it to are ValueErrors naming the keys and files (the last one read won, silently; a
        key the index does not list loads, as before). Tied
        embeddings with a stored lm_head.weight that differs from embed_tokens.weight are untied, as transformers 5
        loads them: lm_head keeps the stored weight, config.tie_word_embeddings becomes False, with a warning."""
        params = dict(self.state_dict(keep_vars=True))
        prefix = "model." if isinstance(self, JambaForCausalLM) else ""
        loaded, unexpected, errors = set(), [], []
        per_expert: Dict[str, Dict[Tuple[int, str], Tensor]] = {}
        dtype = self.dtype
        # what each stored key filled -> (that key, its file): a second key filling it again is an error. Expert
        # pieces are (layer prefix, expert, name), so that a fused tensor claims every piece it holds
        origin: Dict[object, Tuple[str, str]] = {}
        tied_head = bool(prefix) and self.config.tie_word_embeddings
        head = None                                                # (tied) the stored lm_head.weight and its file
        first_file: Dict[str, str] = {}                            # stored key -> the file it was read from

        def claim(targets, stored: str, fpath: str) -> None:
            for t in targets:
                prev = origin.get(t)
                if prev is None:
                    continue
                pkey, pfile = prev
                fused = [k for k in (pkey, stored) if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
                if len(fused) == 1:
                    raise ValueError(f"checkpoint: {t[0][:-1]} is stored both fused and per expert: {pkey!r} in "
                                     f"{pfile} and {stored!r} in {fpath} (which of the two is meant cannot be told)")
                what = repr(stored) if pkey == stored else f"one weight, as {pkey!r} and {stored!r},"
                raise ValueError(f"checkpoint: {what} is stored twice: in {pfile} and in {fpath} (which of the two "
                                 "is meant cannot be told)")
            for t in targets:
                origin[t] = (stored, fpath)

        def bad_value(key: str, value: Tensor, fpath: str) -> bool:   # float8, int, bool: not a weight here
            if _FP8 is not None and value.dtype == _FP8:
                errors.append(f"{key}: a float8 tensor in {os.path.basename(fpath)}; jamba_ext reads unquantized "
                              "checkpoints (from_pretrained(..., experts_dtype='fp8') quantizes the experts as it "
                              "loads them)")
                return True
            if not value.dtype.is_floating_point:                  # (an int, bool or complex tensor: not a weight)
                errors.append(f"{key}: a {value.dtype} tensor in {os.path.basename(fpath)}; expected a floating-point "
                              "weight")
                return True
            return False

        def usable(key: str, p: Tensor, value: Tensor, fpath: str) -> bool:
            if tuple(p.shape) != tuple(value.shape):
                errors.append(f"{key}: expected shape {tuple(p.shape)} (from config.json), found "
                              f"{tuple(value.shape)} in {os.path.basename(fpath)}")
                return False
            return not bad_value(key, value, fpath)

        def put(key: str, value: Tensor, fpath: str):
            p = params[key]
            if not usable(key, p, value, fpath):
                return
            with torch.no_grad():
                if p.dtype == _FP8 and (key + "_scale") in params:   # fused fp8 experts: quantized per expert
                    _quantize_into(p, params[key + "_scale"], value, dtype, f"{key} in {os.path.basename(fpath)}")
                    loaded.add(key + "_scale")
                else:
                    p.copy_(value)
            loaded.add(key)

        for key, value, fpath in _iter_checkpoint(files, _LoadProgress(files) if progress else None):
            stored = key
            if stored in first_file:                               # (before the index's verdict: the plainer error)
                raise ValueError(f"checkpoint: {stored!r} is stored twice: in {first_file[stored]} and in {fpath} "
                                 "(which of the two is meant cannot be told)")
            first_file[stored] = fpath
            if index is not None:
                want = index[1].get(stored)
                if want is not None and os.path.normpath(want) != os.path.normpath(fpath):
                    raise ValueError(f"checkpoint: {stored!r} is in {fpath}, but {index[0]} maps it to {want} (the "
                                     "index and the shards disagree: which is meant cannot be told)")
            if not prefix:                                         # a JambaForCausalLM checkpoint into JambaModel
                if key == "lm_head.weight":
                    continue
                key = key[len("model."):] if key.startswith("model.") else key
            if prefix == "model." and key not in params:           # a JambaModel checkpoint (no "model." prefix),
                mk = "model." + key                                 # its experts per expert too
                me = re.match(r"^(.*\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", mk)
                if mk in params or (me and (me.group(1) + "gate_up_proj") in params):
                    key = mk
            m = re.match(r"^(.*\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", key)
            if m and (m.group(1) + "gate_up_proj") in params:
                base, e, name = m.group(1), int(m.group(2)), m.group(3)
                gu, down = params[base + "gate_up_proj"], params[base + "down_proj"]
                E, I, H = gu.shape[0], down.shape[2], down.shape[1]
                want = (H, I) if name == "down_proj" else (I, H)
                if e >= E:
                    errors.append(f"{key}: expert index {e} out of range (num_experts={E}) in "
                                  f"{os.path.basename(fpath)}")
                    continue
                claim([(base, e, name)], stored, fpath)
                if tuple(value.shape) != want:
                    errors.append(f"{key}: expected shape {want} (from config.json), found "
                                  f"{tuple(value.shape)} in {os.path.basename(fpath)}")
                    continue
                if bad_value(key, value, fpath):
                    continue
                rows = {"gate_proj": slice(0, I), "up_proj": slice(I, 2 * I), "down_proj": slice(None)}[name]
                dst = (gu if name != "down_proj" else down)
                with torch.no_grad():                              # write straight into the fused slices
                    if dst.dtype == _FP8:                          # per-row scales: the slice's rows quantized alone
                        sname = "gate_up_proj_scale" if name != "down_proj" else "down_proj_scale"
                        _quantize_into(dst[e, rows], params[base + sname][e, rows], value, dtype,
                                       f"{key} in {os.path.basename(fpath)}")
                    else:
                        dst[e, rows].copy_(value)
                per_expert.setdefault(base, {})[(e, name)] = True
                continue
            if key not in params:
                unexpected.append(key)
                continue
            fm = re.match(r"^(.*\.experts\.)(gate_up_proj|down_proj)$", key)
            if fm:
                pieces = ("gate_proj", "up_proj") if fm.group(2) == "gate_up_proj" else ("down_proj",)
                claim([(fm.group(1), e, n) for e in range(params[key].shape[0]) for n in pieces], stored, fpath)
            else:
                claim([key], stored, fpath)
            if tied_head and key == "lm_head.weight":              # (one tensor with the embedding: decided below)
                head = (value, fpath)
                continue
            put(key, value, fpath)
        for base, got in per_expert.items():
            E = params[base + "gate_up_proj"].shape[0]
            lacking = [f"{base}{e}.{n}.weight" for e in range(E) for n in ("gate_proj", "up_proj", "down_proj")
                       if (e, n) not in got]
            if lacking:
                errors.append(f"missing expert weights: {lacking[:6]}{' ...' if len(lacking) > 6 else ''}")
            else:
                loaded.update({base + "gate_up_proj", base + "down_proj"})
                loaded.update(k for k in (base + "gate_up_proj_scale", base + "down_proj_scale") if k in params)
        if head is not None:
            value, fpath = head
            emb = params["model.embed_tokens.weight"]
            if "model.embed_tokens.weight" not in loaded:          # lm_head alone: it fills the tied tensor
                put("lm_head.weight", value, fpath)
            elif usable("lm_head.weight", emb, value, fpath):
                with torch.no_grad():
                    value = value.to(emb.device, emb.dtype)
                    if not torch.equal(value, emb):
                        # transformers 5 keeps both as stored (4.x used the embedding); untied here the same way,
                        # and the config says so, or the next _retie (dispatch, resize) would tie them again
                        self.lm_head.weight = nn.Parameter(value, requires_grad=emb.requires_grad)
                        self.config.tie_word_embeddings = False
                        warnings.warn(f"config.tie_word_embeddings is true, but the checkpoint's lm_head.weight "
                                      f"({fpath}) differs from model.embed_tokens.weight: loaded untied, each as "
                                      "stored, as transformers does; config.tie_word_embeddings is now False",
                                      stacklevel=3)
                loaded.add("lm_head.weight")
        tied = {"lm_head.weight", prefix + "embed_tokens.weight"}
        if self.config.tie_word_embeddings and loaded & tied:
            loaded |= tied                                         # one tensor under two names
        missing = [k for k in params if k not in loaded]
        if missing:
            errors.append(f"missing keys ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            errors.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}"
                          f"{' ...' if len(unexpected) > 8 else ''}")
        if errors:
            raise ValueError("checkpoint does not match the model config:\n  " + "\n  ".join(errors))

    def save_pretrained(self, path: str, per_expert: Optional[bool] = None, max_shard_size: Union[int, str] = "50GB",
                        safe_serialization: bool = True, is_main_process: bool = True,
                        state_dict: Optional[Dict[str, Tensor]] = None, push_to_hub: bool = False,
                        save_original_format: Optional[bool] = None, **kwargs) -> None:
        """config.json + the weights as transformers 5 writes them: model.safetensors, or past max_shard_size
        (bytes, or a size such as "5GB", "500MB", "2GiB"; transformers' default "50GB", the Hub's per-file limit)
        shards model-00001-of-0000N.safetensors in state-dict order with model.safetensors.index.json ({"metadata":
        {"total_size", "total_parameters"}, "weight_map": {key: shard}}); a tensor larger than max_shard_size gets a
        shard of its own. per_expert=True (default; transformers' name: save_original_format) writes the on-disk Hub
        layout (loads in transformers 4.x and 5.x), per_expert=False the fused experts; a tied lm_head.weight is left
        out, as transformers does. A JambaForCausalLM writes generation_config.json when it has a generation config
        of its own (loaded from the checkpoint, or set). The config gets the weights' dtype (torch_dtype, and dtype
        where it has that field), in place, as transformers' save_pretrained sets it.

        The weight files of an earlier save in `path` that this one does not overwrite are removed after it is
        written: a model.safetensors, the shards its model.safetensors.index.json lists (plain *.safetensors names
        only) and that index; so is a generation_config.json when a JambaForCausalLM has no generation config of its
        own (from_pretrained reads all of them first, so they would load old weights or stop tokens, or mix with the
        new shards). pytorch_model*.bin files are left: from_pretrained reads them only where there are no
        safetensors weights.

        transformers' other arguments: safe_serialization=False is a ValueError (safetensors only; transformers 5 has
        no .bin writer either), as are push_to_hub=True (upload the directory with huggingface_hub), a variant and
        distributed_checkpoint=True; is_main_process=False checks the arguments and writes nothing (the other ranks
        of a distributed job); state_dict= {name: tensor} (this model's names, experts fused or per expert) is saved
        in place of the model's; token and save_peft_format change nothing here. Any other keyword is a ValueError
        naming it."""
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ImportError("save_pretrained writes .safetensors files, which needs the `safetensors` package "
                              "(pip install safetensors)") from None
        if not safe_serialization:
            raise ValueError("save_pretrained: safe_serialization=False (pytorch_model.bin) is not supported: "
                             "jamba_ext writes safetensors only, which transformers and jamba_ext both read")
        if push_to_hub:
            raise ValueError("save_pretrained: push_to_hub=True is not supported (jamba_ext does not upload); save, "
                             "then upload the directory, e.g. huggingface_hub.HfApi().upload_folder(folder_path=path, "
                             "repo_id=...)")
        if kwargs.get("variant") is not None:
            raise ValueError(f"save_pretrained: variant={kwargs['variant']!r} is not supported (from_pretrained reads "
                             "model.safetensors / its shards, not model.<variant>.safetensors)")
        if kwargs.get("distributed_checkpoint"):
            raise ValueError("save_pretrained: distributed_checkpoint=True is not supported (a jamba_ext model is not "
                             "FSDP / tensor-parallel sharded: its whole state dict is written)")
        rest = sorted(k for k in kwargs if k not in ("variant", "distributed_checkpoint", "token", "save_peft_format"))
        if rest:
            raise ValueError(f"save_pretrained: unexpected keyword arguments {rest}: it takes per_expert, "
                             "max_shard_size, safe_serialization, is_main_process, state_dict and save_original_format "
                             "(and transformers' push_to_hub=False, variant=None, token, save_peft_format and "
                             "distributed_checkpoint=False, which change nothing here)")
        if save_original_format is not None:
            if per_expert is not None and bool(per_expert) != bool(save_original_format):
                raise ValueError("save_pretrained: per_expert and save_original_format disagree (one setting: "
                                 "save_original_format is transformers' name for per_expert)")
            per_expert = save_original_format
        per_expert = True if per_expert is None else per_expert
        limit = _shard_limit(max_shard_size)
        if state_dict is None:
            if any(type(m).__name__ == "LoRALinear" for m in self.modules()):
                raise ValueError("save_pretrained: the model carries jamba_ext.lora adapters; fold them into the "
                                 "weights first (jamba_ext.merge_lora(model)), so that the checkpoint is a plain Jamba "
                                 "one")
            if self.experts_fp8:
                raise ValueError("save_pretrained: the MoE experts are quantized to fp8 (quantize_experts / "
                                 "from_pretrained(experts_dtype='fp8')), and a Jamba checkpoint holds unquantized "
                                 "weights that transformers reads; save the model before quantizing it (and quantize "
                                 "again after loading)")
        else:
            if not isinstance(state_dict, dict):
                raise ValueError(f"save_pretrained: state_dict: expected a dict of tensors, got "
                                 f"{type(state_dict).__name__}")
            for k, v in state_dict.items():
                if not isinstance(k, str) or not isinstance(v, Tensor):
                    raise ValueError(f"save_pretrained: state_dict[{k!r}] is a {type(v).__name__}; expected a tensor "
                                     "under a str name")
                if _FP8 is not None and v.dtype == _FP8:
                    raise ValueError(f"save_pretrained: state_dict[{k!r}] is float8; a Jamba checkpoint holds "
                                     "unquantized weights that transformers reads")
        if not is_main_process:
            return
        path = _local_path(path)
        os.makedirs(path, exist_ok=True)
        # the weights' dtype into config.json, as transformers writes it, so that from_pretrained loads them as saved
        # (without it a bf16 model came back as float32); on the live config, as transformers' save_pretrained does
        name = str(next(p.dtype for p in self.parameters() if p.is_floating_point())).replace("torch.", "")
        self.config.torch_dtype = name
        if getattr(self.config, "dtype", None) is not None:
            self.config.dtype = name
        self.config.save_pretrained(path)
        sd = {k: v.detach() for k, v in (self.state_dict() if state_dict is None else state_dict).items()}
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        if per_expert:
            sd = to_per_expert_state_dict(sd)
        shards = _shard_plan(sd, limit)
        earlier = _earlier_weight_files(path)         # (read before this save overwrites the index)
        mask = os.umask(0)
        os.umask(mask)
        for fname, keys in shards.items():
            save_file({k: sd[k].contiguous() for k in keys}, os.path.join(path, fname), metadata={"format": "pt"})
            # safetensors (0.8) writes a temporary file of mode 0600 and renames it: other users could not read the
            # checkpoint; the mode open() would give (0644 under umask 022), as for config.json beside it
            os.chmod(os.path.join(path, fname), 0o666 & ~mask)
        index = os.path.join(path, "model.safetensors.index.json")
        if len(shards) > 1:
            meta = {"total_size": sum(v.numel() * v.element_size() for v in sd.values()),
                    "total_parameters": sum(v.numel() for v in sd.values())}
            with open(index, "w", encoding="utf-8") as f:
                f.write(json.dumps({"metadata": meta, "weight_map": {k: fname for fname, keys in shards.items()
                                                                      for k in keys}}, indent=2, sort_keys=True) + "\n")
        elif os.path.isfile(index):                   # (read first, it would load the earlier shards)
            os.remove(index)
        for fname in sorted(earlier - set(shards)):   # then the earlier files it listed, and a single file
            fp = os.path.join(path, fname)
            if os.path.isfile(fp):
                os.remove(fp)
        gc = self.__dict__.get("_generation_config")           # (one loaded from the checkpoint, or set: kept)
        gfile = os.path.join(path, "generation_config.json")
        if gc is not None and not self.__dict__.get("_generation_config_derived"):
            if hasattr(gc, "save_pretrained"):
                gc.save_pretrained(path)
            else:
                with open(gfile, "w") as f:
                    json.dump({k: v for k, v in vars(gc).items() if v is not None}, f, indent=2)
        elif isinstance(self, JambaForCausalLM) and os.path.isfile(gfile):
            os.remove(gfile)         # an earlier save's stop tokens: the model's are config.json's (JambaModel: left)


class JambaModel(_PreTrained):
    """embed_tokens -> layers -> final_layernorm. forward -> (last hidden state (B, L, H), cache, router logits)."""

    def __init__(self, config: JambaConfig):
        super().__init__()
        self.config = config
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        kinds = {"attention": JambaAttentionDecoderLayer, "mamba": JambaMambaDecoderLayer}
        self.layers = nn.ModuleList([kinds[t](config, i) for i, t in enumerate(config.layers_block_type)])
        self.final_layernorm = JambaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self._static_step = False                      # whether the last forward was a static decode step
        self.gradient_checkpointing = False            # gradient_checkpointing_enable()
        self._checkpoint_kwargs: dict = {}
        self._checkpoint_every, self._checkpoint_offload = 1, False

    def _placement(self) -> Optional[List[torch.device]]:
        """The devices of embed_tokens, each layer and final_layernorm when they are not all one device (a model over
        several devices: jamba_ext.placement), else None. Read at every call from each part's norm or embedding
        weight (weights that no fusion or repacking re-points), so a part moved by dispatch(), .to() or by hand is
        followed (~9 us for 32 layers: the module dicts read directly)."""
        devs = [self.embed_tokens.weight.device]
        devs += [m._modules["input_layernorm"]._parameters["weight"].device for m in self.layers._modules.values()]
        devs.append(self.final_layernorm.weight.device)
        first = devs[0]
        return None if all(d == first for d in devs) else devs

    def _final_norm(self, h: Tensor, residual: Optional[Tensor]) -> Tensor:
        """final_layernorm of the stream h (+ residual: the last block's add fused into the norm)."""
        if residual is None:
            return self.final_layernorm(h)
        return _K.add_rms_norm(*_one_dtype(h, residual, self.final_layernorm.weight),
                               self.final_layernorm.variance_epsilon)[0]

    @staticmethod
    def _hop(d: torch.device, h: Tensor, residual: Optional[Tensor], step: "_Step",
             cache: Optional[JambaHybridCache]) -> Tuple[Tensor, Optional[Tensor], "_Step"]:
        """The layer stream moved to device d (a model over several devices): the hidden state, the residual and the
        step's masks (a static step's mask and position: the cache's copies on d, refreshed)."""
        mv = lambda t: None if t is None else t.to(d)                                 # noqa: E731
        if step.static:
            attn = cache.static_on(d)[0][:, None, None, :]
        else:
            attn = mv(step.attn_mask)
        return mv(h), mv(residual), dataclasses.replace(step, mamba_mask=mv(step.mamba_mask), attn_mask=attn)

    def _step(self, attention_mask: Optional[Tensor], cache: Optional[JambaHybridCache], Bsz: int, L: int,
              dtype: torch.dtype, device: torch.device) -> Tuple[_Step, Optional[Tensor]]:
        past = cache.seq_len if cache is not None else 0
        if cache is not None and cache.static:
            if Bsz != cache.batch_size:
                raise ValueError(f"static cache of batch {cache.batch_size} got a batch of {Bsz}")
            cache._ensure_static(device)
            if L == 1 and past > 0 and attention_mask is None:
                # static decode step: fixed shapes, device-side position; graph-capturable (no host sync)
                if past >= cache.capacity:
                    raise ValueError(f"JambaHybridCache: static cache of max_length {cache.max_length} "
                                     f"(capacity {cache.capacity}) is full ({past} tokens)")
                cache.static_mask.index_fill_(1, cache.cache_position, True)
                return _Step(past, 1, None, cache.static_mask[:, None, None, :], False, static=True), None
        key_mask = None                                                           # (B, P+L) bool
        if attention_mask is not None:
            am = attention_mask.to(device=device, dtype=torch.bool)
            if am.dim() != 2 or am.shape[0] != Bsz or am.shape[1] not in (L, past + L):
                raise ValueError(f"attention_mask: expected shape (batch, past + new tokens) = ({Bsz}, {past + L})"
                                 + (f" or ({Bsz}, {L})" if past else "") + f", got {tuple(attention_mask.shape)}")
            if am.shape[1] == L and past:
                prev = cache.key_mask if cache.key_mask is not None else am.new_ones(Bsz, past)
                am = torch.cat([prev, am], dim=1)
            key_mask = None if bool(am.all()) else am
        elif cache is not None and cache.key_mask is not None:
            key_mask = torch.cat([cache.key_mask, cache.key_mask.new_ones(Bsz, L)], dim=1)
        mamba_mask = None
        if key_mask is not None and L > 1:
            new = key_mask[:, past:]
            mamba_mask = None if bool(new.all()) else new.to(dtype)
        attn_mask, is_causal = None, False
        if key_mask is None:
            if past == 0:
                is_causal = L > 1
            elif L > 1:                                                           # chunked prefill: offset causal
                return _Step(past, L, mamba_mask, None, False, offset_causal=True), key_mask
        else:
            q = torch.arange(past, past + L, device=device)[:, None]
            causal = torch.arange(past + L, device=device)[None, :] <= q           # (L, P+L)
            attn_mask = causal[None, None] & key_mask[:, None, None, :]            # (B, 1, L, P+L)
            # a padded query attending to nothing would give NaN; let it attend everywhere instead (its
            # output is padding, and no real token attends to it)
            attn_mask = attn_mask | ~attn_mask.any(dim=-1, keepdim=True)
        return _Step(past, L, mamba_mask, attn_mask, is_causal), key_mask

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                cache: Optional[JambaHybridCache] = None, inputs_embeds: Optional[Tensor] = None,
                use_cache: bool = False, output_router_logits: Optional[bool] = None, past_key_values=None,
                position_ids=None, hidden_states_out: Optional[list] = None):
        """input_ids (B, L) or inputs_embeds (B, L, H); attention_mask (B, P+L) or (B, L), 1 = token,
        0 = padding (left padding). past_key_values: alias of cache; position_ids: accepted and unused
        (Jamba has no positional embeddings). Returns (hidden (B, L, H), cache or None, router logits: collected when
        output_router_logits, None meaning config.output_router_logits). hidden_states_out: a list that receives
        transformers' output_hidden_states tuple: the embeddings, the residual stream after each layer but the last,
        and the final normed hidden state (num_layers + 1 tensors)."""
        cache = cache if cache is not None else past_key_values
        if output_router_logits is None:
            output_router_logits = bool(self.config.output_router_logits)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if input_ids is not None and (not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or
                                      input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool):
            raise ValueError("input_ids: expected an integer tensor of shape (batch, tokens), got " + (
                f"{input_ids.dtype} of shape {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor)
                else type(input_ids).__name__))
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or
                                          inputs_embeds.shape[-1] != self.config.hidden_size):
            raise ValueError(f"inputs_embeds: expected shape (batch, tokens, {self.config.hidden_size}), got "
                             f"{tuple(inputs_embeds.shape)}")
        if input_ids is not None and input_ids.device.type == "cpu" and input_ids.numel() and not _compiling() and \
                (cache is None or input_ids.shape[1] > 1):   # (not a decode step's: they stay free of host reads)
            lo, hi = torch.aminmax(input_ids)          # (CPU tensors only: on a GPU this would sync every step)
            V = self.embed_tokens.num_embeddings
            if lo < 0 or hi >= V:
                raise ValueError(f"input_ids: token ids must be in [0, {V}) (the embedding's rows), got "
                                 f"{int(lo) if lo < 0 else int(hi)}")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds   # (B, L, H)
        Bsz, L = h.shape[:2]
        if use_cache and cache is None:
            cache = JambaHybridCache(self.config, Bsz)
        step, key_mask = self._step(attention_mask, cache, Bsz, L, h.dtype, h.device)
        residual, router_logits = None, []
        if hidden_states_out is not None:
            hidden_states_out.append(h)
        self._static_step = step.static                # read by JambaForCausalLM for its LM head
        ckpt = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        if ckpt:
            from torch.utils.checkpoint import checkpoint
            kw = {"use_reentrant": False, **self._checkpoint_kwargs}
        amp = _AmpScope(h.device.type)
        offload = torch.autograd.graph.save_on_cpu(pin_memory=h.device.type == "cuda") if (
            ckpt and self._checkpoint_offload) else contextlib.nullcontext()
        place = self._placement()
        with _GemvScope(step.static), amp, offload:
            for i, layer in enumerate(self.layers):
                if place is not None and h.device != place[i + 1]:
                    h, residual, step = self._hop(place[i + 1], h, residual, step, cache)
                if ckpt and i % self._checkpoint_every == 0:  # (the recomputation in the backward runs outside
                    h, residual, rl = checkpoint(_amp_call, amp.dtype, layer, h, residual, step, **kw)  # this scope:
                else:                                                                     # _amp_call sets it)
                    h, residual, rl = layer(h, residual, step, cache)
                if output_router_logits and rl is not None:
                    router_logits.append(rl)
                if hidden_states_out is not None and i < len(self.layers) - 1:
                    hidden_states_out.append(h if residual is None else h + residual)   # (the stream, unnormed)
            if place is not None and h.device != place[-1]:
                h, residual, step = self._hop(place[-1], h, residual, step, cache)
            h = self._final_norm(h, residual)
        if hidden_states_out is not None:
            hidden_states_out.append(h)
        if cache is not None:
            cache.seq_len += L
            if step.static:                    # device-side bookkeeping only (the mask was set in _step)
                cache.cache_position.add_(1)
            else:
                cache.key_mask = key_mask
                cache._sync_static()
        return h, cache, tuple(router_logits)


# False: the causal-LM loss as F.cross_entropy(logits.float()) (what ran before session 35; docs/SWITCHES.md).
NATIVE_LOSS = True


def _lm_loss(logits: Tensor, target: Tensor, num_items: Union[None, int, Tensor] = None,
             ignore_index: int = -100) -> Tensor:
    """The causal-LM loss over rows of logits (N, V): cross entropy in fp32, targets of ignore_index ignored, mean over the
    rest (NaN when every target is ignored, as torch's). jamba.cross_entropy reads the logits in their dtype (one read
    in the forward; its backward one read and one write of the gradient); F.cross_entropy(logits.float()) makes an
    fp32 copy, keeps its log_softmax and writes an fp32 gradient before the cast back. num_items: the sum divided by
    it instead of the mean (gradient accumulation)."""
    if torch.is_tensor(num_items):
        num_items = num_items.to(logits.device)
    if NATIVE_LOSS and _K is _ops and logits.dtype in _ops.FLOAT_DTYPES and logits.shape[0]:
        rows, _ = _ops.cross_entropy(logits, target, ignore_index)
        return rows.sum() / ((target != ignore_index).sum() if num_items is None else num_items)
    if num_items is not None:
        return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum") / num_items
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def _load_balancing_loss(router_logits: Sequence[Tensor], num_experts: int, top_k: int,
                         attention_mask: Optional[Tensor]) -> Tensor:
    """Switch-style aux loss over all MoE layers (jamba-architecture.md 4.4), padding excluded."""
    dev = router_logits[0].device                    # (a model over several devices: the first MoE layer's)
    logits = torch.cat([r.float().to(dev) for r in router_logits], dim=0)             # (layers*T, E)
    p = torch.softmax(logits, dim=-1)
    sel = F.one_hot(torch.topk(p, top_k, dim=-1).indices, num_experts).float()         # (M, k, E)
    if attention_mask is None:
        f, pbar = sel.mean(0), p.mean(0)
    else:
        m = attention_mask[:, -router_logits[0].shape[0] // attention_mask.shape[0]:].reshape(-1).float().to(dev)
        m = m.repeat(len(router_logits))
        f = (sel * m[:, None, None]).sum(0) / m.sum()
        pbar = (p * m[:, None]).sum(0) / m.sum()
    return num_experts * (f * pbar[None]).sum()


_CAPTURE_STREAMS: Dict[torch.device, "torch.cuda.Stream"] = {}


def _capture_stream(device: torch.device) -> Optional["torch.cuda.Stream"]:
    """The stream to capture a graph of `device`'s work on: None (torch.cuda.graph's default capture stream) when that
    one is, or will be made, on `device`; else one stream per GPU, kept for the process. torch.cuda.graph makes its
    default capture stream once, on whichever device is current at the first capture, so a model on another GPU would
    not be captured on it; a new stream per capture would give cuBLAS a new workspace each time (torch keeps one per
    stream)."""
    device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    default = torch.cuda.graphs.graph.default_capture_stream
    if (default.device if default is not None else torch.device("cuda", torch.cuda.current_device())) == device:
        return None
    if device not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[device] = torch.cuda.Stream(device)
    return _CAPTURE_STREAMS[device]


def _capture_failed(model, cache: JambaHybridCache, snap, devices, e: Exception, what: str) -> None:
    """A failed decode-step capture: the devices synchronised (errors ignored), the cache put back, the reason kept in
    model._decode_graph_info and warned about (at generate's caller); eager decoding goes on."""
    for d in devices:
        try:
            torch.cuda.synchronize(d)
        except Exception:  # noqa: BLE001
            pass
    cache._restore(snap)
    msg = f"{type(e).__name__}: {e}"[:500]
    model._decode_graph_info = {"captured": False, "error": msg}
    warnings.warn(f"generate(cuda_graph=True): CUDA-graph capture of the {what} failed ({msg}); decoding eagerly with "
                  "the static cache", stacklevel=5)                   # (the caller of generate)
    return None


class _DecodeGraph:
    """One static decode step of `model` over `cache` (a static JambaHybridCache after its prefill), captured
    in a torch.cuda.CUDAGraph: token buffer (B, 1) -> logits buffer (B, V). step(tokens) copies the tokens
    in, replays, advances the host-side seq_len and returns the logits buffer (overwritten by the next step).
    """
    WARMUP = 2                             # eager steps on a side stream before capture (torch's advice)

    def __init__(self, cache: JambaHybridCache, graph, tokens: Tensor, logits: Tensor):
        # (no reference to the model: the model keeps its graph for the next generate(), and a cycle would hold the
        # weights' memory after `del model` until the garbage collector's next run)
        self.cache, self.graph, self.tokens, self.logits = cache, graph, tokens, logits

    @classmethod
    def capture(cls, model: "JambaForCausalLM", cache: JambaHybridCache, first: Tensor) -> Optional["_DecodeGraph"]:
        """first (B,): any valid token ids for the warm-up and capture (their effects are undone). Returns None
        after a warning when anything fails; the cache is then as it was (eager decoding continues)."""
        import time
        t0 = time.perf_counter()
        snap = cache._snapshot()
        tokens = first.detach().reshape(-1, 1).to(torch.long).clone()          # the static input buffer
        g = None
        try:
            side = torch.cuda.Stream(device=tokens.device)
            side.wait_stream(torch.cuda.current_stream(tokens.device))
            with torch.cuda.stream(side):
                for _ in range(cls.WARMUP):
                    model(tokens, cache=cache, output_router_logits=False)
                    cache._restore(snap)
            torch.cuda.current_stream(tokens.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=_capture_stream(tokens.device)):
                logits = model(tokens, cache=cache, output_router_logits=False).logits[:, -1]   # (B, V), graph-owned
            cache._restore(snap)            # capture ran no kernel, but the host-side seq_len moved on
            torch.cuda.synchronize(tokens.device)
        except Exception as e:  # noqa: BLE001 -- any failure: fall back to eager decoding
            return _capture_failed(model, cache, snap, [tokens.device], e, "decode step")
        model._decode_graph_info = {"captured": True, "capture_s": time.perf_counter() - t0,
                                    "warmup_steps": cls.WARMUP}
        return cls(cache, g, tokens, logits)

    def step(self, tokens: Tensor) -> Tensor:
        self.tokens.copy_(tokens.reshape(-1, 1))
        self.graph.replay()
        self.cache.seq_len += 1             # the device-side position was advanced inside the graph
        return self.logits


def _numerics_state() -> tuple:
    """The global settings a captured CUDA graph bakes in: autocast on CUDA (on, dtype), the float32 matmul precision
    (TF32) and cuBLAS's reduced-precision reductions."""
    try:
        amp = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    except (TypeError, AttributeError):                          # (torch < 2.4)
        amp = (torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype())
    m = torch.backends.cuda.matmul
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                          # (allow_tf32's deprecation in newer torch)
        return amp + (torch.get_float32_matmul_precision(), m.allow_tf32, m.allow_bf16_reduced_precision_reduction,
                      m.allow_fp16_reduced_precision_reduction)


class _SplitDecodeGraph:
    """The static decode step of a model whose parts lie on several GPUs (jamba_ext.placement), replayed as one CUDA
    graph per run of consecutive parts on one device: each graph is captured on its own device (with its own memory
    pool), so none spans two devices; between them the step runs eagerly only the moves (the hidden state and
    residual into the next graph's input buffers, the cache's copies of the static mask and position on that device:
    JambaHybridCache.static_on), which torch orders with both devices' streams. Units, in forward order: 0 the
    embeddings and the step's mask update (JambaModel._step), 1..n the layers, n + 1 the final norm, n + 2 the LM
    head. step(tokens) returns the logits (B, V) on the tokens' device. generate() takes it where a one-GPU model
    takes _DecodeGraph. Whole Jamba-v0.1 over two H200s (two_gpu_d36cdb6.log): batch 1 100.1 tok/s against 72.8
    eager, 102.3 from one GPU's graph; batch 8 200.1 against 180.6 / 199.3; the same tokens."""
    WARMUP = 2

    def __init__(self, cache, segs, graphs, tokens, ins, outs, logits):
        self.cache, self.segs, self.graphs, self.tokens = cache, segs, graphs, tokens
        self.ins, self.outs, self.logits = ins, outs, logits

    @staticmethod
    def _segments(model: "JambaForCausalLM") -> List[Tuple[torch.device, int, int]]:
        base = model.model
        devs = (base._placement() or [base.embed_tokens.weight.device] * (len(base.layers) + 2)) \
            + [model.lm_head.weight.device]
        segs, j0 = [], 0
        for j in range(1, len(devs) + 1):
            if j == len(devs) or devs[j] != devs[j0]:
                segs.append((devs[j0], j0, j))
                j0 = j
        return segs

    @staticmethod
    def _run(model: "JambaForCausalLM", cache: JambaHybridCache, j0: int, j1: int, st: dict) -> dict:
        """Units j0 .. j1 - 1 of one static decode step on st = {tokens | h, residual, step} -> the state after them
        (with "logits" after the head)."""
        base, n = model.model, len(model.model.layers)
        h, residual, step = st.get("h"), st.get("residual"), st.get("step")
        with _GemvScope(True):
            for j in range(j0, j1):
                if j == 0:
                    h = base.embed_tokens(st["tokens"])
                    step, _ = base._step(None, cache, h.shape[0], 1, h.dtype, h.device)
                    if not step.static:
                        raise RuntimeError("split decode graph: the cache did not take a static step")
                elif j <= n:
                    h, residual, _ = base.layers[j - 1](h, residual, step, cache)
                elif j == n + 1:
                    h, residual = base._final_norm(h, residual), None
                else:
                    return dict(h=h, residual=None, step=step, logits=_linear(model.lm_head, h)[:, -1])
        return dict(h=h, residual=residual, step=step)

    @staticmethod
    def _moved_in(cache, step0, d, out, bufs=None):
        """The next segment's inputs on device d: the previous outputs copied into bufs (made when None), and the step
        with the cache's mask copy on d."""
        if bufs is None:
            bufs = (torch.empty_like(out["h"], device=d),
                    None if out["residual"] is None else torch.empty_like(out["residual"], device=d))
        bufs[0].copy_(out["h"])
        if bufs[1] is not None:
            bufs[1].copy_(out["residual"])
        mask, _ = cache.static_on(d)
        return bufs, dict(h=bufs[0], residual=bufs[1], step=dataclasses.replace(
            step0, mamba_mask=None, attn_mask=mask[:, None, None, :]))

    @classmethod
    def capture(cls, model: "JambaForCausalLM", cache: JambaHybridCache, first: Tensor) -> Optional["_SplitDecodeGraph"]:
        """As _DecodeGraph.capture (None after a warning on any failure, the cache as it was)."""
        t0 = time.perf_counter()
        snap = cache._snapshot()
        tokens = first.detach().reshape(-1, 1).to(torch.long).clone()
        devs: list = []
        try:
            segs = cls._segments(model)
            devs = sorted({d for d, _, _ in segs}, key=str)
            for _ in range(cls.WARMUP):                       # eager steps (the segments in turn), state put back
                out = cls._run(model, cache, *segs[0][1:], {"tokens": tokens})
                step0 = out["step"]
                for d, j0, j1 in segs[1:]:
                    out = cls._run(model, cache, j0, j1, cls._moved_in(cache, step0, d, out)[1])
                cache._restore(snap)
            for d in devs:
                torch.cuda.synchronize(d)
            graphs, ins, outs, out, step0 = [], [], [], None, None
            for k, (d, j0, j1) in enumerate(segs):
                st = {"tokens": tokens}
                if k:
                    bufs, st = cls._moved_in(cache, step0, d, out)
                    ins.append(bufs)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.device(d), torch.cuda.graph(g, stream=_capture_stream(d)):
                    out = cls._run(model, cache, j0, j1, st)
                step0 = step0 or out["step"]
                graphs.append(g)
                outs.append(out)
            for d in devs:
                torch.cuda.synchronize(d)
            cache._restore(snap)
        except Exception as e:  # noqa: BLE001 -- any failure: fall back to eager decoding
            return _capture_failed(model, cache, snap, devs, e, "split decode step")
        model._decode_graph_info = {"captured": True, "capture_s": time.perf_counter() - t0,
                                    "warmup_steps": cls.WARMUP, "segments": len(segs)}
        return cls(cache, segs, graphs, tokens, ins, outs, outs[-1]["logits"])

    def step(self, tokens: Tensor) -> Tensor:
        self.tokens.copy_(tokens.reshape(-1, 1))
        step0 = self.outs[0]["step"]
        for k, (d, _, _) in enumerate(self.segs):
            if k:
                self._moved_in(self.cache, step0, d, self.outs[k - 1], self.ins[k - 1])
            with torch.cuda.device(d):
                self.graphs[k].replay()
        self.cache.cache_position.add_(1)       # (after every segment has read it, or its copy)
        self.cache.seq_len += 1
        return self.logits.to(tokens.device)


def _run_processors(processors, input_ids: Tensor, scores: Tensor) -> Tensor:
    """transformers' logits processors on one step's scores: a LogitsProcessorList or one processor (callables
    (input_ids, scores) -> scores), or a plain list of them, applied in order."""
    if callable(processors):
        return processors(input_ids, scores)
    for p in processors:
        scores = p(input_ids, scores)
    return scores


def _run_criteria(criteria, input_ids: Tensor, scores: Tensor) -> Tensor:
    """transformers' stopping criteria after one step: a StoppingCriteriaList or one criterion (callables
    (input_ids, scores) -> bool tensor (B,) or a bool), or a plain list of them (any stops a sequence) -> (B,) bool."""
    B = input_ids.shape[0]

    def rows(r) -> Tensor:
        return torch.as_tensor(r, device=input_ids.device).to(torch.bool).reshape(-1).expand(B)
    if callable(criteria):
        return rows(criteria(input_ids, scores))
    stop = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for c in criteria:
        stop = stop | rows(c(input_ids, scores))
    return stop


class _NewTokensStop:
    """A stopping criterion shown the new tokens only (the columns after the prompt's prompt_len, set by generate()):
    a stop string then matches inside the generated text, never across the prompt's end, as the batch, continuous
    and server paths (and OpenAI's and vLLM's stop) match them; transformers' StopStringCriteria looks at the last
    tokens of the whole sequence, the prompt's too. A stop string spread over several new tokens still matches."""

    def __init__(self, criterion):
        self.criterion, self.prompt_len = criterion, 0

    def __call__(self, input_ids, scores, **kwargs):
        return self.criterion(input_ids[:, self.prompt_len:], scores, **kwargs)


def _with_stop_strings(criteria, stop_strings, tokenizer) -> list:
    """generate(stop_strings=..., tokenizer=...): transformers' StopStringCriteria, shown the new tokens only
    (_NewTokensStop: its prompt_len is set once the prompt is known), after the criteria given."""
    if tokenizer is None:
        raise ValueError("stop_strings: pass the model's tokenizer too (generate(..., stop_strings=..., "
                         "tokenizer=tok)): the stop strings are matched against its token strings")
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
        raise ValueError(f"stop_strings: expected a non-empty string or a list of them, got {stop_strings!r}")
    if not hasattr(tokenizer, "get_vocab"):
        raise ValueError(f"tokenizer: expected the model's transformers tokenizer (for stop_strings), got "
                         f"{type(tokenizer).__name__}")
    try:
        from transformers.generation.stopping_criteria import StopStringCriteria
    except ImportError:
        raise ValueError("stop_strings: needs transformers (its StopStringCriteria matches them)") from None
    crit = _NewTokensStop(StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings)))
    if criteria is None:
        return [crit]
    return (list(criteria) if isinstance(criteria, (list, tuple)) else [criteria]) + [crit]


# transformers' generate() arguments that JambaForCausalLM.generate accepts at the values that change nothing here
_HF_NOOP_GENERATE_KWARGS = {
    "use_cache": (True, None), "num_beam_groups": (1, None), "output_attentions": (False, None),
    "output_hidden_states": (False, None), "synced_gpus": (False, None),
}


def _is_int(v) -> bool:
    """A Python / numpy integer (not a bool, not a float that happens to be whole)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_str(v, text: str) -> bool:
    """v is the string text (a tensor or list compares as not equal, without an elementwise ==)."""
    return isinstance(v, str) and v == text


def _check_int(name: str, v, lo: int, note: str = "") -> None:
    if not _is_int(v) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}{note}, got {v!r}")


def _token_ids(name: str, v, vocab: int) -> List[int]:
    """eos_token_id / pad_token_id as given by a caller: an int or a sequence of ints (a tensor too), each in
    [0, vocab)."""
    ids = v.tolist() if isinstance(v, Tensor) else v
    ids = [ids] if _is_int(ids) else ids
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable) or not all(_is_int(t) for t in ids):
        raise ValueError(f"{name}: expected a token id (an int) or a list of them, got {v!r}")
    ids = [int(t) for t in ids]
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"{name}: token ids must be in [0, {vocab}), got {bad}")
    return ids


def _check_prompt_lists(input_ids) -> list:
    """generate()'s input_ids given as a list: one prompt (a list of ints) or several; every prompt non-empty.
    Returns the list of prompts."""
    if not isinstance(input_ids, (list, tuple)):
        raise ValueError("input_ids: expected a LongTensor (batch, tokens) or a list of token-id lists, got "
                         f"{type(input_ids).__name__}")
    rows = [input_ids] if input_ids and _is_int(input_ids[0]) else list(input_ids)
    if not rows:
        raise ValueError("input_ids: expected at least one prompt, got an empty list")
    for b, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or not all(_is_int(t) for t in row):
            raise ValueError(f"input_ids: prompt {b} is not a list of ints: {row!r:.80}")
        if not row:
            raise ValueError(f"input_ids: prompt {b} is empty (every prompt needs at least one token)")
    return rows


def _check_beam_args(num_beams, num_return_sequences, streamer, early_stopping, length_penalty) -> bool:
    """generate()'s beam-search arguments checked; True when num_beams asks for beam search."""
    _check_int("num_beams", num_beams, 1)
    if not (isinstance(early_stopping, bool) or _is_str(early_stopping, "never")):   # (not 1 / 0 / 1.0: == True)
        raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) or \
            not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty: expected a finite number, got {length_penalty!r}")
    if num_beams == 1:
        return False
    if streamer is not None:
        raise ValueError(f"num_beams={num_beams}: a streamer cannot follow beam search (the best sequence is known at "
                         "the end only; transformers refuses it too)")
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} > num_beams={num_beams}: beam search returns "
                         "at most num_beams hypotheses per prompt")
    return True


def _brief(v) -> str:
    """An argument's value for an error message: a tensor as its shape and dtype, a module as its class (its repr
    printed the whole model: 78 lines for a tiny one, assistant_model=model), any other repr cut at 200 characters."""
    if isinstance(v, Tensor):
        return f"<tensor {tuple(v.shape)} {v.dtype}>"
    if isinstance(v, nn.Module):
        return f"<{type(v).__name__} module>"
    try:
        r = repr(v)
    except Exception:   # noqa: BLE001  (a repr that fails: an int past 4300 digits, a broken object)
        return f"<{type(v).__name__}>"
    return r if len(r) <= 200 else r[:197] + "..."


def _check_hf_kwargs(where: str, kwargs: dict, noop: Dict[str, tuple], hints: Dict[str, str]) -> None:
    """transformers' arguments that `where` does not take: each must be in noop at one of its no-op values, else a
    ValueError naming it, the accepted values, or hints[name] (hints[""]: for a name not in noop)."""
    for k, v in kwargs.items():
        ok = noop.get(k)
        if ok is not None and not isinstance(v, Tensor) and v in ok:
            continue
        hint = hints.get(k) or (f"only {', '.join(repr(o) for o in ok if o is not None)} is accepted" if ok
                                else hints.get(""))
        raise ValueError(f"{where}: {k}={_brief(v)} is not supported by jamba_ext" + (f" ({hint})" if hint else ""))


# transformers' forward() arguments that JambaForCausalLM.forward accepts at the values that change nothing here
_HF_NOOP_FORWARD_KWARGS = {"return_dict": (True, None), "output_attentions": (False, None)}


class JambaForCausalLM(_PreTrained):
    """JambaModel + lm_head (tied to embed_tokens when config.tie_word_embeddings)."""

    def __init__(self, config: JambaConfig):
        super().__init__()
        self.config = config
        self.model = JambaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._retie()

    def _retie(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def can_generate(cls) -> bool:
        """transformers' check (pipelines, PEFT, evaluation harnesses): this model generates."""
        return True

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                cache: Optional[JambaHybridCache] = None, inputs_embeds: Optional[Tensor] = None,
                labels: Optional[Tensor] = None, use_cache: bool = False, output_router_logits: Optional[bool] = None,
                logits_to_keep: Union[int, Tensor] = 0, past_key_values=None,
                position_ids=None, num_items_in_batch=None, output_hidden_states: bool = False,
                **hf_kwargs) -> CausalLMOutput:
        """logits_to_keep: n > 0 keeps the last n positions, 0 all, a 1-D tensor the given positions.
        labels (B, L): next-token cross-entropy (shifted inside, -100 ignored) + aux loss when
        output_router_logits (None: config.output_router_logits, as transformers). num_items_in_batch (what the
        transformers Trainer passes under gradient accumulation):
        the loss sums over the kept targets and divides by it instead of taking their mean. output_hidden_states:
        the output's hidden_states as transformers' (the embeddings, the stream after each layer but the last, the
        final normed hidden state). transformers' other output flags are accepted at their no-op values
        (return_dict=True, output_attentions=False); any other argument raises ValueError naming it."""
        if hf_kwargs:                                   # (empty in the model's own calls: decode steps stay lean)
            _check_hf_kwargs("forward", hf_kwargs, _HF_NOOP_FORWARD_KWARGS, {})
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, Tensor)) or (
                isinstance(logits_to_keep, int) and logits_to_keep < 0):
            raise ValueError(f"logits_to_keep: expected an int >= 0 (0: every position) or a 1-D tensor of positions, "
                             f"got {logits_to_keep!r}")
        states = [] if output_hidden_states else None
        if output_router_logits is None:
            output_router_logits = bool(self.config.output_router_logits)
        h, cache, router_logits = self.model(input_ids, attention_mask, cache, inputs_embeds, use_cache,
                                             output_router_logits, past_key_values, hidden_states_out=states)
        if isinstance(logits_to_keep, int):
            hk = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            hk = h[:, logits_to_keep]
        head = getattr(self.lm_head, "weight", None)             # (a wrapped head may have none)
        if head is not None and hk.device != head.device:        # (a model over several devices)
            hk = hk.to(head.device)
        with _GemvScope(self.model._static_step):
            logits = _linear(self.lm_head, hk)                                        # (B, L_kept, V)
        loss = aux = None
        if labels is not None:
            if labels.shape != logits.shape[:2] or labels.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"labels must be integer token ids of the logits' shape (batch, positions) = "
                                 f"{tuple(logits.shape[:2])}, got {labels.dtype} {tuple(labels.shape)}")
            if labels.device.type == "cpu" and labels.numel() and not _compiling():   # (no host read on a GPU)
                V = logits.shape[-1]
                bad = ((labels < 0) & (labels != -100)) | (labels >= V)
                if bool(bad.any()):
                    b, t = (int(i) for i in bad.nonzero()[0])
                    raise ValueError(f"labels[{b}, {t}] = {int(labels[b, t])}: expected a token id in [0, {V}) or "
                                     "-100 (ignored)")
            shift = F.pad(labels.long(), (0, 1), value=-100)[:, 1:]
            loss = _lm_loss(logits.reshape(-1, logits.shape[-1]), shift.reshape(-1).to(logits.device),
                            num_items_in_batch)
        if output_router_logits and router_logits:
            aux = _load_balancing_loss(router_logits, self.config.num_experts, self.config.num_experts_per_tok,
                                       attention_mask)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux.to(loss.device)
        return CausalLMOutput(logits=logits, cache=cache, loss=loss, aux_loss=aux,
                              router_logits=router_logits or None, last_hidden_state=h,
                              hidden_states=tuple(states) if states is not None else None)

    # ---- generation
    @property
    def generation_config(self):
        """transformers' GenerationConfig of the model's token ids (a plain namespace without transformers), made on
        first use; wrappers such as PEFT's read and set it. generate() takes its settings as arguments, not from it."""
        gc = self.__dict__.get("_generation_config")
        if gc is None:
            ids = dict(bos_token_id=self.config.bos_token_id, eos_token_id=self.config.eos_token_id,
                       pad_token_id=self.config.pad_token_id)
            try:
                from transformers import GenerationConfig
                gc = GenerationConfig(**ids)
            except ImportError:
                import types
                gc = types.SimpleNamespace(**ids)
            self.__dict__["_generation_config"] = gc
            self.__dict__["_generation_config_derived"] = True   # (made from config: config stays the source)
        return gc

    @generation_config.setter
    def generation_config(self, value) -> None:
        self.__dict__["_generation_config"] = value
        self.__dict__["_generation_config_derived"] = False

    def _generation_ids(self, name: str):
        """generate()'s default eos_token_id / pad_token_id: the generation_config's where one was loaded from the
        checkpoint (generation_config.json) or set, and it sets the id; else config's."""
        gc = self.__dict__.get("_generation_config")
        v = None if gc is None or self.__dict__.get("_generation_config_derived") else getattr(gc, name, None)
        return getattr(self.config, name) if v is None else v

    def _eos_ids(self) -> List[int]:
        e = self._generation_ids("eos_token_id")
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs) -> dict:
        """transformers' hook, which wrappers such as PEFT's PeftModelForCausalLM look up and replace; generate()
        here does not call it: the inputs as given."""
        return dict(input_ids=input_ids, **kwargs)

    @staticmethod
    def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> Tuple[Tensor, Tensor]:
        n = max(len(p) for p in prompts)
        if n == 0:
            raise ValueError("input_ids: every prompt is empty")
        ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), n), dtype=torch.long)
        for b, p in enumerate(prompts):
            if len(p):
                ids[b, n - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
                mask[b, n - len(p):] = 1
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    @_outside_autocast
    @_with_generation_config
    def generate(self, input_ids, attention_mask: Optional[Tensor] = None, max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: Optional[int] = None, eos_token_id: Union[None, int, Sequence[int]] = "config",
                 pad_token_id: Optional[int] = "config", streamer: Optional[Callable] = None,
                 max_length: Optional[int] = None, cuda_graph: Optional[bool] = None,
                 static_cache: Optional[bool] = None, prefill_chunk: Optional[int] = None,
                 prefill_progress: Optional[Callable[[int, int], None]] = None,
                 repetition_penalty: float = 1.0, min_new_tokens: int = 0, num_return_sequences: int = 1,
                 return_dict_in_generate: bool = False, output_scores: bool = False, output_logits: bool = False,
                 logits_processor=None, stopping_criteria=None, min_p: Optional[float] = None,
                 num_beams: int = 1, length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
                 no_repeat_ngram_size: int = 0, typical_p: float = 1.0, epsilon_cutoff: float = 0.0,
                 eta_cutoff: float = 0.0, sequence_bias=None, bad_words_ids=None, min_length: int = 0,
                 forced_eos_token_id=None, suppress_tokens=None, begin_suppress_tokens=None,
                 renormalize_logits: bool = False, forced_bos_token_id=None, remove_invalid_values: bool = False,
                 exponential_decay_length_penalty=None, prefix_allowed_tokens_fn=None, top_h: Optional[float] = None,
                 stop_strings: Union[None, str, Sequence[str]] = None, tokenizer=None,
                 **hf_kwargs) -> Union[Tensor, "GenerateOutput", "BeamGenerateOutput"]:
        """Greedy or sampled continuation of a batch of prompts.

        input_ids: LongTensor (B, T) (left-padded, with attention_mask) or a list of token-id lists of any
        lengths (left-padded here). repetition_penalty (transformers' semantics, applied first, to greedy and sampled
        picks alike): the logit of every token already in the sequence (prompt and new tokens; the prompt's left padding
        as the attention_mask gives it does not count, as in transformers 5.24; earlier releases count it) is divided by
        it where positive, multiplied where negative; 1.0 (the default) leaves the logits alone. Sampling
        applies temperature, then top_k, then top_p (nucleus), then min_p (tokens less likely than min_p times the
        most likely one are dropped; None: off), then typical_p, epsilon_cutoff and eta_cutoff (transformers' typical,
        epsilon and eta sampling; jamba_ext.logits_filters), with a torch.Generator seeded by `seed`. top_k=0 (off)
        is the default here, where transformers' GenerationConfig defaults to 50: pass top_k=50 for its sampling.
        no_repeat_ngram_size=n (after repetition_penalty; greedy, sampled and beam search alike): no token may complete
        an n-gram already in the sequence. sequence_bias, bad_words_ids, min_length, forced_bos_token_id,
        forced_eos_token_id, remove_invalid_values, exponential_decay_length_penalty, suppress_tokens,
        begin_suppress_tokens, renormalize_logits: transformers' processors of those names, in its order
        (jamba_ext.logits_filters.StepFilters), on the device. prefix_allowed_tokens_fn(batch_id, input_ids so far) ->
        the token ids allowed next (transformers' constrained generation; batch_id counts prompts, input_ids is one row
        (a beam, or a return sequence) on the model's device); it runs in Python every step, so each step waits for the
        host. top_h (sampling): transformers' top-H filter, right after temperature. min_new_tokens:
        the EOS ids cannot be picked before this many new tokens (transformers' semantics). num_return_sequences=n: each
        prompt n times in a row (rows b * n .. b * n + n - 1 of the result), as transformers. Other transformers
        arguments are accepted at their no-op values (use_cache=True, output_attentions=False, ...: see
        _HF_NOOP_GENERATE_KWARGS); any other value raises ValueError naming it. A sequence stops at an EOS id (by
        default the generation_config's, where the checkpoint has a generation_config.json or one was set, else
        config.eos_token_id; pad_token_id likewise; None disables) and is filled with pad_token_id afterwards;
        generation stops when all have stopped.
        streamer: called with the new tokens (B,) after every step, as a CPU tensor; an object with put()/end(), such
        as transformers' TextStreamer, gets transformers' calls (put(prompt ids) first, then the new tokens, end()). On a CUDA model the next step is
        enqueued before the host waits for a token (RUN_AHEAD), so the Python work of a step overlaps the
        GPU work of the one before; when every sequence has stopped, that one step is computed and discarded.
        max_length (prompt + new), when given, overrides max_new_tokens. Returns LongTensor (B, T + n),
        n <= max_new_tokens; with return_dict_in_generate=True a GenerateOutput (transformers' fields: sequences, and
        with output_scores / output_logits the per-step fp32 scores the tokens were picked from / raw logits, (B, V)
        each; without return_dict_in_generate those two flags change nothing, as in transformers).
        logits_processor / stopping_criteria: transformers' (a LogitsProcessorList / StoppingCriteriaList, a list of
        such callables, or one): each processor is called as p(input_ids so far (B, T + i), fp32 scores (B, V)) ->
        scores after repetition_penalty and min_new_tokens and before the sampling filters (transformers' order);
        each criterion as c(input_ids with the new token, scores) -> bool per sequence (or one bool): a sequence it
        stops is finished as at an EOS (pad_token_id after it, where EOS ids are set: with eos_token_id=None it goes
        on until every sequence has stopped, as in transformers). Both run on the host side of every step; the
        criteria's verdict reaches the host with the step's token (no extra wait). generation_config= (a
        transformers GenerationConfig: its non-default fields as arguments, explicit arguments winning) and inputs=
        (the prompt) are taken too (_with_generation_config). stop_strings (a string or a list) with tokenizer (the
        model's transformers tokenizer): a sequence stops once its new text holds one of them ending in its last token,
        as transformers' StopStringCriteria decides (which runs here, after any stopping_criteria given), shown only
        the new tokens: the prompt's text never takes part in a match (transformers' also matches a stop string that
        begins in the prompt; the batch, continuous and server paths, OpenAI's and vLLM's do not).

        num_beams=n > 1: beam search (jamba_ext.beam_search: transformers' algorithm, the same sequences and scores),
        with length_penalty (a finished hypothesis scores its log-probability sum / new tokens ** length_penalty) and
        early_stopping (False: stop a prompt once no running beam can beat its worst finished hypothesis; True: once n
        are finished; "never": by the best score reachable within max_new_tokens); the decode steps run on B * n rows
        (CUDA graph as above), num_return_sequences (<= n) best hypotheses per prompt, best first. Returns
        LongTensor (B * num_return_sequences, T + n'), or with return_dict_in_generate a BeamGenerateOutput
        (sequences_scores and per-step log-probability scores with output_scores, raw logits with output_logits,
        beam_indices). do_sample=True samples the K candidates of each step from the beams' accumulated scores after
        the sampling filters (beam sampling, transformers' form). Not with a streamer (as transformers).

        static_cache=True: decode with a static KV cache (JambaHybridCache(static=True): buffers sized once
        at T + max_new_tokens, attention over the whole buffer under a device-side length mask); same
        tokens, fixed shapes. cuda_graph=None (the default): True on a CUDA model asked for at least
        GRAPH_MIN_NEW_TOKENS new tokens (unless static_cache=False), else False. cuda_graph=True (implies
        static_cache) on a CUDA model: after the prefill,
        one decode step (input token buffer -> logits buffer) is warmed up on a side stream, captured in a
        torch.cuda.CUDAGraph and replayed for every further token (token selection, EOS and the streamer
        stay outside the graph). If capture fails, a warning is issued and the static cache decodes
        eagerly; on a CPU model cuda_graph=True warns and runs the static cache eagerly.

        prefill_chunk: the prompt runs through the cache in chunks of this many tokens, >= 8 (None: PREFILL_CHUNK_TOKENS
        // batch, rounded down to a multiple of 8; 0: one forward): same results, the peak memory of one chunk.
        prefill_progress: called as prefill_progress(tokens done, prompt length) after each chunk has run (on a CUDA
        model the host waits for each chunk then: for progress output on long prompts).
        """
        _check_hf_kwargs("generate", hf_kwargs, _HF_NOOP_GENERATE_KWARGS, {"": (
            "its arguments: max_new_tokens / max_length, min_new_tokens, do_sample, temperature, top_k, top_p, "
            "repetition_penalty, seed, eos_token_id, pad_token_id, num_return_sequences, streamer, "
            "return_dict_in_generate, output_scores, output_logits, logits_processor, stopping_criteria, min_p, "
            "num_beams, length_penalty, early_stopping, no_repeat_ngram_size, typical_p, epsilon_cutoff, eta_cutoff, "
            "sequence_bias, bad_words_ids, min_length, forced_eos_token_id, suppress_tokens, begin_suppress_tokens, "
            "renormalize_logits, forced_bos_token_id, remove_invalid_values, exponential_decay_length_penalty, "
            "prefix_allowed_tokens_fn, top_h, stop_strings (with tokenizer)")})
        keep_scores, keep_logits = return_dict_in_generate and output_scores, return_dict_in_generate and output_logits
        scores_out, logits_out = [], []
        _check_int("num_return_sequences", num_return_sequences, 1)
        _check_int("top_k", top_k, 0, " (0: off)")
        _check_int("max_new_tokens" if max_length is None else "max_length", max_new_tokens if max_length is None
                   else max_length, 0)
        if seed is not None and not (_is_int(seed) and -2 ** 63 <= seed < 2 ** 64):
            raise ValueError(f"seed: expected an int in [-2^63, 2^64) or None, got {seed!r}")
        for name, v in (("temperature", temperature), ("top_p", top_p), ("repetition_penalty", repetition_penalty),
                        ("typical_p", typical_p), ("epsilon_cutoff", epsilon_cutoff), ("eta_cutoff", eta_cutoff),
                        ("min_p", 0.0 if min_p is None else min_p)):     # (min_p: None is off, as transformers')
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{name}: expected a number{' (or None: off)' if name == 'min_p' else ''}, got {v!r}")
        if streamer is not None and not (callable(streamer) or hasattr(streamer, "put")):
            raise ValueError("streamer: expected a callable (called with each step's new tokens) or an object with "
                             f"put() / end() such as transformers' TextStreamer, got {type(streamer).__name__}")
        if prefill_progress is not None and not callable(prefill_progress):
            raise ValueError(f"prefill_progress: expected a callable, got {type(prefill_progress).__name__}")
        for name, v in (("logits_processor", logits_processor), ("stopping_criteria", stopping_criteria)):
            if v is not None and not callable(v) and not (isinstance(v, (list, tuple)) and all(map(callable, v))):
                raise ValueError(f"{name}: expected a callable or a list of them (transformers' "
                                 f"{'LogitsProcessorList' if name == 'logits_processor' else 'StoppingCriteriaList'}"
                                 f"), got {v!r:.80}")
        head = self.get_output_embeddings()                        # (its rows: the logits' width)
        vocab = head.weight.shape[0] if head is not None else self.config.vocab_size
        beams = _check_beam_args(num_beams, num_return_sequences, streamer, early_stopping, length_penalty)
        if stop_strings is not None:
            stopping_criteria = _with_stop_strings(stopping_criteria, stop_strings, tokenizer)
        dev = self.device
        if _is_str(pad_token_id, "config"):
            pad_given = self._generation_ids("pad_token_id")
        else:
            pad_given = None if pad_token_id is None else _token_ids("pad_token_id", pad_token_id, vocab)
            if pad_given is not None and len(pad_given) != 1:
                raise ValueError(f"pad_token_id: expected one token id, got {pad_token_id!r}")
            pad_given = None if pad_given is None else pad_given[0]
        # (a negative config pad id counts from the end, as nn.Embedding's padding_idx: the id a finished row is fed)
        pad = 0 if pad_given is None else pad_given % self.config.vocab_size
        eos = self._eos_ids() if _is_str(eos_token_id, "config") else (
            [] if eos_token_id is None else _token_ids("eos_token_id", eos_token_id, vocab))
        if not isinstance(input_ids, Tensor):
            input_ids, attention_mask = self._left_pad(_check_prompt_lists(input_ids), pad, dev)
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids: expected an integer tensor of token ids, got {input_ids.dtype}")
        input_ids = input_ids.to(dev, torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or not input_ids.numel():
            raise ValueError("input_ids: expected shape (batch, tokens) with at least one token, got "
                             f"{tuple(input_ids.shape)}")
        lo, hi = torch.stack([input_ids.min(), input_ids.max()]).tolist()          # (one host read)
        n_emb = self.get_input_embeddings().weight.shape[0]                     # (the embedding table's rows)
        if lo < 0 or hi >= n_emb:
            raise ValueError(f"input_ids: token ids must be in [0, {n_emb}), got values in [{lo}, {hi}]")
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask, device=dev)
            if attention_mask.dim() == 1:
                attention_mask = attention_mask[None]
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise ValueError(f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}, got "
                                 f"{tuple(attention_mask.shape)}")
            empty = (attention_mask == 0).all(dim=1)
            if bool(empty.any()):
                raise ValueError(f"attention_mask: prompt {int(empty.nonzero()[0, 0])} masks every token (each prompt "
                                 "needs at least one)")
        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):   # (a host read)
            warnings.warn("generate: the attention_mask has padding at the end of a prompt (right padding): new tokens "
                          "would follow the padding. Pad prompts on the left (tokenizer.padding_side = 'left'), or "
                          "pass lists of token ids, which generate() left-pads itself.", stacklevel=3)
        if num_return_sequences > 1 and not beams:
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        if max_length is not None:
            max_new_tokens = max_length - input_ids.shape[1]
            if max_new_tokens < 0:
                raise ValueError(f"max_length: {max_length} is shorter than the prompt ({input_ids.shape[1]} tokens); "
                                 "max_length counts the prompt (max_new_tokens does not)")
        if do_sample and not temperature > 0:     # (NaN too)
            raise ValueError(f"temperature: expected > 0 when sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected in (0, 1], got {top_p}")
        if min_p is not None and not 0 <= min_p <= 1:
            raise ValueError(f"min_p: expected in [0, 1] (or None), got {min_p}")
        if not 0 < repetition_penalty < float("inf"):
            raise ValueError(f"repetition_penalty: expected a finite number > 0 (1.0: none), got {repetition_penalty}")
        _check_int("min_new_tokens", min_new_tokens, 0)
        _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0, " (0: off)")
        if not 0 < typical_p <= 1:
            raise ValueError(f"typical_p: expected in (0, 1] (1: off), got {typical_p}")
        if top_h is not None and (isinstance(top_h, bool) or not isinstance(top_h, (int, float)) or
                                  not 0 < top_h <= 1):
            raise ValueError(f"top_h: expected in (0, 1] (or None: off), got {top_h!r}")
        for name, v in (("epsilon_cutoff", epsilon_cutoff), ("eta_cutoff", eta_cutoff)):
            if not 0 <= v < 1:
                raise ValueError(f"{name}: expected in [0, 1) (0: off), got {v}")
        Bsz, T = input_ids.shape
        if stop_strings is not None:                   # (matched in the new tokens only: _NewTokensStop)
            stopping_criteria[-1].prompt_len = T
        chunks = prefill_chunks(T, Bsz, prefill_chunk)
        # each row's left padding, which repetition_penalty skips (transformers 5.24 on; None: no mask, none skipped)
        lead = None if attention_mask is None or attention_mask.dim() != 2 else \
            (attention_mask.to(dev) != 0).int().argmax(dim=1)
        _check_int("min_length", min_length, 0)
        filt = _filters.StepFilters(
            vocab, dev, T, T + max_new_tokens, eos,
            sequence_bias=sequence_bias,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            lead=lead.repeat_interleave(num_beams) if beams and lead is not None else lead,   # (per beam row)
            bad_words_ids=bad_words_ids, min_length=min_length, min_new_tokens=min_new_tokens,
            forced_eos_token_id=forced_eos_token_id, suppress_tokens=suppress_tokens,
            begin_suppress_tokens=begin_suppress_tokens, logits_processor=logits_processor,
            run_processors=_run_processors, forced_bos_token_id=forced_bos_token_id,
            remove_invalid_values=remove_invalid_values,
            exponential_decay_length_penalty=exponential_decay_length_penalty,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, prefix_group=max(num_beams, num_return_sequences))
        gen = None
        if do_sample:
            gen = torch.Generator(device=dev)
            gen.manual_seed(seed if seed is not None else torch.seed())
        put = getattr(streamer, "put", streamer)
        if streamer is not None and hasattr(streamer, "put"):  # transformers' streamer protocol: the prompt first
            streamer.put(input_ids.cpu())                     # (TextStreamer(skip_prompt=True) skips that one call)
        if max_new_tokens == 0 and beams:
            return input_ids.repeat_interleave(num_return_sequences, dim=0)
        if max_new_tokens == 0:
            if streamer is not None and hasattr(streamer, "end"):
                streamer.end()
            return GenerateOutput(input_ids, () if keep_scores else None, () if keep_logits else None) if \
                return_dict_in_generate else input_ids
        split = self.model._placement() is not None              # (layers over several devices)
        if cuda_graph is None:        # (a split model too: one graph per GPU, _SplitDecodeGraph)
            cuda_graph = dev.type == "cuda" and max_new_tokens >= GRAPH_MIN_NEW_TOKENS and static_cache is not False
        static = bool(cuda_graph) if static_cache is None else bool(static_cache)
        if cuda_graph and not static:
            raise ValueError("cuda_graph=True needs the static cache (static_cache=False was given)")
        if cuda_graph and dev.type != "cuda":
            warnings.warn(f"generate(cuda_graph=True): the model is on {dev}, CUDA graphs need a CUDA device; "
                          "decoding eagerly with the static cache", stacklevel=3)
        cache = JambaHybridCache(self.config, Bsz, max_length=-(-(T + max_new_tokens) // STATIC_BUCKET) *
                                 STATIC_BUCKET if static else T + max_new_tokens, static=static)
        eos_t = torch.tensor(eos, device=dev, dtype=torch.long) if eos else None
        unfinished = torch.ones(Bsz, dtype=torch.bool, device=dev)
        out = [input_ids]
        for s, e in chunks:                                      # the prompt, in chunks through the cache
            am = None if attention_mask is None else attention_mask[:, :e]           # past + new tokens
            logits = self(input_ids[:, s:e], am, cache=cache, logits_to_keep=1,
                          output_router_logits=False).logits[:, -1].to(dev)  # (B, V)
            if prefill_progress is not None:
                if dev.type == "cuda":
                    torch.cuda.current_stream(dev).synchronize()
                prefill_progress(e, T)
        graph = None
        self._decode_graph_info = None
        if beams:
            cache.repeat_rows(num_beams)                         # (B * num_beams rows from here on)
        if cuda_graph and dev.type == "cuda" and max_new_tokens > 1:
            graph = self._kept_graph(cache, split)               # (a graph kept by an earlier call, state moved in)
            if graph is not None:
                cache = graph.cache
            else:
                first = logits.argmax(dim=-1)
                capture = _SplitDecodeGraph.capture if split else _DecodeGraph.capture
                graph = capture(self, cache, first.repeat_interleave(num_beams) if beams else first)
        if beams:                                                # (None and a warning on failure: eager steps)
            from .beam_search import beam_search
            keep = len(eos) + 1 if eos else 2              # (transformers' min_tokens_to_keep in beam sampling)
            warp = None if not do_sample else functools.partial(
                self._warp, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                typical_p=typical_p, epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff, keep=keep, top_h=top_h)
            res = beam_search(self, logits, cache, graph, input_ids, num_beams, max_new_tokens, eos, pad_given,
                              length_penalty, early_stopping, num_return_sequences, filt, stopping_criteria,
                              return_dict_in_generate, output_scores, output_logits, renormalize_logits, warp, gen)
            self._keep_graph(graph, split)
            return res
        ahead = RUN_AHEAD if RUN_AHEAD is not None else dev.type == "cuda"
        # host copies of the new tokens (for the streamer and the EOS test), one row per step
        host = torch.empty((max_new_tokens, Bsz), dtype=torch.long, pin_memory=dev.type == "cuda" and ahead)
        eos_h = torch.tensor(eos, dtype=torch.long) if eos else None
        done_h = torch.zeros(Bsz, dtype=torch.bool)
        stop_h = torch.zeros((max_new_tokens, Bsz), dtype=torch.bool, pin_memory=dev.type == "cuda" and ahead) \
            if stopping_criteria is not None else None          # (the stopping criteria's verdicts, per step)
        seen = None                                # (B, V): the tokens in the sequence, for repetition_penalty
        if repetition_penalty != 1.0:
            seen = _filters.seen_tokens(input_ids, logits.shape[-1], lead)
        for i in range(max_new_tokens):
            if keep_logits:                        # (a copy: a replayed graph overwrites its logits buffer)
                logits_out.append(logits.to(torch.float32, copy=True))
            logits = filt(logits, torch.cat(out, dim=1) if filt.needs_seqs else None, i, seen)
            scores = self._warp(logits, do_sample, temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff,
                                eta_cutoff, top_h=top_h)
            if renormalize_logits:
                scores = torch.log_softmax(scores.float(), dim=-1)
            if keep_scores:
                scores_out.append(scores.to(torch.float32, copy=True))
            nxt = scores.argmax(dim=-1) if not do_sample else \
                torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=gen)[:, 0]               # (B,)
            if eos_t is not None:                  # (transformers pads finished sequences only when EOS ids are set)
                nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            out.append(nxt[:, None])
            host[i].copy_(nxt, non_blocking=ahead)
            if stopping_criteria is not None:      # (their verdict reaches the host with the token)
                stop = _run_criteria(stopping_criteria, torch.cat(out, dim=1), scores)
                unfinished &= ~stop
                stop_h[i].copy_(stop, non_blocking=ahead)
            ready = torch.cuda.Event() if ahead and dev.type == "cuda" else None
            if ready is not None:
                ready.record()
            if eos_t is not None:
                unfinished &= ~torch.isin(nxt, eos_t)
            more = i + 1 < max_new_tokens
            if ahead and more:                     # enqueue the next step before waiting for this token
                logits = self._decode_step(nxt, cache, graph)
            if ready is not None:
                ready.synchronize()                # this token is on the host; the next step keeps the GPU busy
            if put is not None:
                put(host[i])
            if eos_h is not None or stopping_criteria is not None:
                if eos_h is not None:
                    done_h |= torch.isin(host[i], eos_h)
                if stopping_criteria is not None:
                    done_h |= stop_h[i]
                if bool(done_h.all()):
                    break                          # (ahead: the step enqueued above is discarded)
            if not ahead and more:
                logits = self._decode_step(nxt, cache, graph)
        self._keep_graph(graph, split)
        if streamer is not None and hasattr(streamer, "end"):
            streamer.end()
        if return_dict_in_generate:
            return GenerateOutput(torch.cat(out, dim=1), tuple(scores_out) if keep_scores else None,
                                  tuple(logits_out) if keep_logits else None)
        return torch.cat(out, dim=1)

    def _graph_key(self, cache: "JambaHybridCache", split: bool) -> tuple:
        """What a kept decode graph depends on besides the cache's state: the cache's rows and capacity, the model's
        placement, every parameter and buffer (address, shape, dtype: a weight changed in place is read by the graph
        as it is, a replaced one is not) and every module's public plain settings (training, act_fp8, a LoRA scale,
        ...; not the private ones, such as JambaModel._static_step, which record the last forward), whether
        inference mode is on (a cache made under torch.inference_mode() holds inference tensors, which a call outside
        it may not write into), and the global numerics a capture bakes in (_numerics_state)."""
        tensors = tuple((t.data_ptr(), t.dtype, tuple(t.shape), t.device) for t in
                        itertools.chain(self.parameters(), self.buffers()))
        settings = tuple(tuple((k, v) for k, v in vars(mod).items()
                               if not k.startswith("_") and isinstance(v, (bool, int, float, str)))
                         for mod in self.modules())
        return (cache.batch_size, cache.capacity, split, GEMV_MAX_ROWS, torch.is_inference_mode_enabled(),
                _numerics_state(), tensors, settings)

    def _kept_graph(self, cache: "JambaHybridCache", split: bool):
        """The decode graph an earlier generate() kept, when its key matches: cache's state moved into its cache
        (the graph then replays on this call's prefill). Taken off the model while in use (a concurrent call captures
        its own); one that does not match is freed here, before a new capture allocates."""
        kept = self.__dict__.pop("_decode_graph_kept", None)
        if kept is None or kept[0] != self._graph_key(cache, split):
            return None
        graph = kept[1]
        graph.cache.assign_(cache)
        self._decode_graph_info = dict(kept[2], reused=True, capture_s=0.0, warmup_steps=0)
        return graph

    def _keep_graph(self, graph, split: bool) -> None:
        """After a generate(): keep its decode graph for a later call when its cache is small enough."""
        if graph is None or graph.cache.nbytes() > KEEP_GRAPH_MAX_BYTES:
            return
        info = {k: v for k, v in (self._decode_graph_info or {}).items() if k != "reused"}
        self._decode_graph_kept = (self._graph_key(graph.cache, split), graph, info)

    def _decode_step(self, tokens: Tensor, cache: "JambaHybridCache", graph: Optional["_DecodeGraph"]) -> Tensor:
        """One decode step of generate(): tokens (B,) -> next logits (B, V), replayed from graph when given."""
        if graph is not None:
            return graph.step(tokens)
        return self(tokens[:, None], cache=cache, output_router_logits=False).logits[:, -1].to(tokens.device)

    @staticmethod
    def _warp(logits: Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float,
              min_p: Optional[float] = None, typical_p: float = 1.0, epsilon_cutoff: float = 0.0,
              eta_cutoff: float = 0.0, keep: int = 1, top_h: Optional[float] = None) -> Tensor:
        """logits (B, V) -> the scores a token is picked from: greedy, the logits as they are (argmax); sampling, fp32
        logits / temperature, then top_h, top_k, top_p (nucleus), min_p, typical_p, epsilon_cutoff and eta_cutoff
        filtering (-inf where filtered), in transformers' order. keep: the most likely tokens no filter drops (1;
        beam sampling: the EOS ids + 1, transformers' min_tokens_to_keep; top_h, which transformers gives no such
        floor, keeps its own: at least the most likely token). A temperature so small that a row's finite logits
        overflow fp32 once divided (every one -inf, or the largest +inf: nothing to sample from) is a ValueError
        naming it; checked below 2^-64 only (a host read a step: none at usual temperatures, where only logits beyond
        FLT_MAX * 2^-64 ~ 1.8e19, which no model gives, could overflow)."""
        if not do_sample:
            return logits
        if temperature < 2.0 ** -64:   # (the check waits for the logits: only where an overflow is plausible)
            top = logits.amax(dim=-1).float()        # (each row's largest score is top / temperature: x / t is monotone)
            if bool((top.isfinite() & ~(top / temperature).isfinite()).any()):
                raise ValueError(f"temperature: {temperature} is too small for these logits: logits / temperature "
                                 "overflows fp32 (inf), leaving nothing to sample from; use a larger temperature, or "
                                 "do_sample=False for the most likely token")
        scores = logits.float() / temperature
        V = scores.shape[-1]
        if top_h is not None:
            scores = _filters.top_h(scores, top_h)
        if top_k and max(top_k, keep) < V:
            kth = torch.topk(scores, max(top_k, keep), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if top_p < 1.0:
            srt, idx = torch.sort(scores, dim=-1, descending=False)
            cum = torch.softmax(srt, dim=-1).cumsum(dim=-1)
            drop = cum <= (1 - top_p)                     # the low tail whose mass is at most 1 - top_p
            drop[:, -keep:] = False                       # always keep the most likely token(s)
            scores = scores.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
        if min_p:
            probs = torch.softmax(scores, dim=-1)
            drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
            drop.scatter_(1, torch.topk(probs, min(keep, V), dim=-1).indices, False)
            scores = scores.masked_fill(drop, float("-inf"))
        if typical_p < 1.0:
            scores = _filters.typical(scores, typical_p, keep)
        if epsilon_cutoff:
            scores = _filters.epsilon_cut(scores, epsilon_cutoff, keep)
        if eta_cutoff:
            scores = _filters.eta_cut(scores, eta_cutoff, keep)
        return scores
