"""Low-rank adapters (LoRA) for fine-tuning a Jamba model whose weights stay frozen.

    from jamba_ext.lora import add_lora, merge_lora
    names = add_lora(model, r=16, alpha=32)      # wraps the projections; only the adapters train
    ... train ...
    sd = lora_state_dict(model)                  # the adapters only ({... .lora_A.weight, ... .lora_B.weight})
    merge_lora(model)                            # W += (alpha / r) B A; plain nn.Linears again (fast decode, save)
    # or remove_lora(model): the base model back as it was (its own nn.Linears, weights untouched, no merge)
    # later, on the same base model: add_lora(model, r=16, alpha=32); load_lora_state_dict(model, sd)

An adapted projection computes base(x) + (alpha / r) * (x A^T) B^T, A (r, in) and B (out, r) in fp32 (B starts at zero,
so the adapted model starts as the base one), x's dtype out. The model runs wrapped projections as modules (the Mamba
mixer, attention and MLP do not bypass a module that is not a plain nn.Linear; tests/test_model.py), so the adapters
take part in training, checkpointing and autocast like any PEFT layer. The MoE experts (stacked (E, ...) parameters,
not nn.Linears), the router and the embeddings are not adapted. Why not PEFT: it is one more dependency, and a
checkpoint written after merge_lora is a plain Jamba checkpoint that transformers and `jamba-ext generate` read.

Adapter weights (lora_state_dict / load_lora_state_dict) use the key names of PEFT's adapter_model.safetensors:
"base_model.model.<module>.lora_A.weight" (A, (r, in)) and "...lora_B.weight" (B, (out, r)), <module> as in
model.named_modules() ("model.layers.0.mamba.in_proj": the names transformers' Jamba uses), with PEFT's scale
lora_alpha / r. r shows in the shapes; alpha and the targets are not in the tensors (PEFT keeps them in
adapter_config.json): give add_lora the same ones before loading.
"""
import math
import warnings
from collections import Counter
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

# the projections adapted by default: Mamba's in / x / out, attention's q / k / v / o, the dense MLP's three
DEFAULT_TARGETS = ("in_proj", "x_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                   "down_proj")
PEFT_PREFIX = "base_model.model."     # PEFT's adapter files name each module from the PeftModel down
_TRAINABLE = "_lora_trainable"        # add_lora's record of the parameters that trained before it froze them


def _check_rank(r, alpha, who: str) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{who}: r must be an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise ValueError(f"{who}: alpha must be a finite number > 0, got {alpha!r}")


class LoRALinear(nn.Module):
    """base (a frozen nn.Linear) plus a rank-r update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        _check_rank(r, alpha, "LoRALinear")
        super().__init__()
        self.base, self.r, self.scale = base, r, alpha / r
        dev = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=torch.float32))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    @property
    def weight(self) -> Tensor:       # the base weight (code that reads .weight: shapes, dtypes, devices)
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)      # (A and B fp32, or the dtype a later model.to(dtype) gave them: x runs in theirs)
        low = (x.to(self.lora_a.dtype) @ self.lora_a.t()) @ self.lora_b.t()
        return y + (low * self.scale).to(y.dtype)

    def merged(self) -> nn.Linear:
        """The base nn.Linear with the update added to its weight (in place; rounded once to its dtype)."""
        with torch.no_grad():
            w = self.base.weight
            w.copy_((w.float() + self.scale * (self.lora_b.float() @ self.lora_a.float())).to(w.dtype))
        return self.base


def add_lora(model: nn.Module, r: int = 16, alpha: float = 32.0, targets: Sequence[str] = DEFAULT_TARGETS) -> List[str]:
    """Freezes every parameter of model and wraps each nn.Linear whose attribute name is in targets in a LoRALinear
    (the only trainable parameters afterwards). Returns the wrapped modules' names. r >= 1. A target other than
    DEFAULT_TARGETS' names (which a model may lack: no attention layer, no dense MLP) must name an nn.Linear of the
    model (ValueError otherwise). A refused call leaves the model as it was. remove_lora undoes it (merge_lora folds
    the adapters in)."""
    _check_rank(r, alpha, "add_lora")
    if isinstance(targets, str) or not isinstance(targets, Iterable):
        raise ValueError(f"add_lora: targets must be a list of attribute names (e.g. ['q_proj', 'v_proj']), got "
                         f"{targets!r}")
    targets = tuple(targets)          # (a generator: read once)
    if not all(isinstance(t, str) for t in targets):
        raise ValueError(f"add_lora: targets must be a list of attribute names (e.g. ['q_proj', 'v_proj']), got "
                         f"{list(targets)!r}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("add_lora: the model has LoRA adapters already (merge_lora folds them into the weights)")
    found = [(mod, name, attr, child) for name, mod in model.named_modules()
             for attr, child in mod.named_children() if attr in targets and type(child) is nn.Linear]
    if not found:
        raise ValueError(f"add_lora: no nn.Linear named one of {list(targets)} in the model")
    unknown = sorted(set(targets) - set(DEFAULT_TARGETS) - {attr for _, _, attr, _ in found})
    if unknown:
        raise ValueError(f"add_lora: targets {unknown} name no nn.Linear of the model (its projections: "
                         f"{list(DEFAULT_TARGETS)}; also e.g. 'lm_head', 'dt_proj')")
    trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for mod, name, attr, child in found:
        setattr(mod, attr, LoRALinear(child, r, alpha))
        wrapped.append(f"{name}.{attr}" if name else attr)
    setattr(model, _TRAINABLE, trainable)      # (remove_lora gives the model back trainable as it was)
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Folds every LoRALinear of model into its base weight and puts the plain nn.Linear back. Returns the count. The
    base parameters stay frozen (requires_grad False) until the caller says otherwise. A base weight shared with
    another module (lm_head tied to the input embedding) gets its own copy first, with a warning, and
    config.tie_word_embeddings becomes False: the update belongs to that layer only (merging in place changed the
    embedding too)."""
    uses = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)
    n = 0
    for name, mod in list(model.named_modules()):
        for attr, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                w = child.base.weight
                if uses[id(w)] > 1:
                    child.base.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
                    cfg = getattr(model, "config", None)
                    if getattr(cfg, "tie_word_embeddings", False):
                        cfg.tie_word_embeddings = False
                    where = f"{name}.{attr}" if name else attr
                    warnings.warn(f"merge_lora: {where}'s weight was shared with another module (tied embeddings); "
                                  f"{where} now has its own merged copy and config.tie_word_embeddings is False")
                setattr(mod, attr, child.merged())
                n += 1
    model.__dict__.pop(_TRAINABLE, None)       # (merged weights stay frozen, as documented, whatever follows)
    return n


def _adapters(model: nn.Module) -> List[Tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def remove_lora(model: nn.Module) -> int:
    """Puts every LoRALinear's base nn.Linear back (the very module add_lora wrapped, its weights untouched: the
    adapters are dropped, not merged), so the model computes what it did before add_lora, bit for bit. Every
    parameter's requires_grad is then as it was before add_lora (when add_lora was given this same module; else they
    stay frozen, as merge_lora leaves them). Returns the number of adapters removed (0: none there)."""
    n = 0
    for name, mod in list(model.named_modules()):
        for attr, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                setattr(mod, attr, child.base)
                n += 1
    trainable = model.__dict__.pop(_TRAINABLE, None)
    if trainable is not None:
        keep = set(trainable)
        for pname, p in model.named_parameters():
            p.requires_grad_(pname in keep)
    return n


def lora_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """The adapters' weights only, under PEFT's adapter-file names ("base_model.model.<module>.lora_A.weight" and
    ".lora_B.weight"; see the module's docstring): detached tensors sharing the parameters' storage, as
    model.state_dict() gives them (clone them to keep a snapshot while training goes on). safetensors' save_file
    writes them as adapter_model.safetensors. ValueError when the model has no adapters."""
    ads = _adapters(model)
    if not ads:
        raise ValueError("lora_state_dict: the model has no LoRA adapters (add_lora adds them)")
    out = {}
    for name, m in ads:
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_a.detach()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_b.detach()
    return out


def _key_hint(keys: Sequence[str]) -> str:
    """Why keys of another naming did not match (the commonest ways to hold adapter weights under other names)."""
    if any(".lora_A.default." in k or ".lora_B.default." in k for k in keys):
        return ("; keys with the adapter name ('.lora_A.default.weight') are a PeftModel's state_dict(): PEFT's "
                "get_peft_model_state_dict, or its saved adapter_model.safetensors, drop it")
    if any(k.endswith((".lora_a", ".lora_b")) for k in keys):
        return ("; '.lora_a' / '.lora_b' are the adapted model's own parameter names (model.state_dict()): "
                "lora_state_dict(model) gives the adapter names")
    if any(k.endswith((".lora_A.weight", ".lora_B.weight")) and not k.startswith(PEFT_PREFIX) for k in keys):
        return f"; the adapter names start with {PEFT_PREFIX!r}, as PEFT saves them"
    return ""


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> int:
    """Copies adapter weights (lora_state_dict's names: also a PEFT adapter_model.safetensors of this architecture)
    into the model's LoRALinears, which add_lora must have made with the same targets, r and alpha as the adapters
    were trained with (alpha is not in the tensors). Every adapter must be given, and nothing else: ValueError naming
    the missing, unexpected or mis-shaped keys; nothing is copied then. Values are cast to the adapters' dtype and
    device. Returns the number of adapters loaded."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"load_lora_state_dict: expected a dict {{name: tensor}}, got {type(state_dict).__name__}")
    ads = _adapters(model)
    if not ads:
        raise ValueError("load_lora_state_dict: the model has no LoRA adapters to load into: call add_lora(model, "
                         "r=..., alpha=..., targets=...) with the adapters' settings first")
    want = {}
    for name, m in ads:
        want[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_a
        want[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_b
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]}; add_lora's targets may differ from the "
                         f"adapters')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        raise ValueError(f"load_lora_state_dict: keys {' and '.join(parts)}{_key_hint(unexpected)}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor) or not v.is_floating_point()]
    if bad:
        v = state_dict[bad[0]]
        what = f"a {v.dtype} tensor" if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"load_lora_state_dict: {bad[:3]} are not floating-point tensors ({bad[0]}: {what})")
    shaped = [k for k, p in want.items() if tuple(state_dict[k].shape) != tuple(p.shape)]
    if shaped:
        k = shaped[0]
        ranks = sorted({state_dict[a].shape[0] for a in shaped if a.endswith("lora_A.weight")
                        and state_dict[a].ndim == 2})
        hint = f"; the adapters have rank {ranks[0]}: add_lora(model, r={ranks[0]}, ...)" if len(ranks) == 1 else ""
        raise ValueError(f"load_lora_state_dict: {len(shaped)} keys mis-shaped, e.g. {k}: given "
                         f"{tuple(state_dict[k].shape)}, the model's {tuple(want[k].shape)}{hint}")
    with torch.no_grad():
        for k, p in want.items():
            p.copy_(state_dict[k])
    return len(ads)
