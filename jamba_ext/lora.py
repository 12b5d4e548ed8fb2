"""Low-rank adapters (LoRA) for fine-tuning a Jamba model whose weights stay frozen.

    from jamba_ext.lora import add_lora, merge_lora
    names = add_lora(model, r=16, alpha=32)      # wraps the projections; only the adapters train
    ... train ...
    merge_lora(model)                            # W += (alpha / r) B A; plain nn.Linears again (fast decode, save)

An adapted projection computes base(x) + (alpha / r) * (x A^T) B^T, A (r, in) and B (out, r) in fp32 (B starts at zero,
so the adapted model starts as the base one), x's dtype out. The model runs wrapped projections as modules (the Mamba
mixer, attention and MLP do not bypass a module that is not a plain nn.Linear; tests/test_model.py), so the adapters
take part in training, checkpointing and autocast like any PEFT layer. The MoE experts (stacked (E, ...) parameters,
not nn.Linears), the router and the embeddings are not adapted. Why not PEFT: it is one more dependency, and a
checkpoint written after merge_lora is a plain Jamba checkpoint that transformers and `jamba-ext generate` read.
"""
import math
import warnings
from collections import Counter
from typing import Iterable, List, Sequence

import torch
from torch import Tensor, nn

# the projections adapted by default: Mamba's in / x / out, attention's q / k / v / o, the dense MLP's three
DEFAULT_TARGETS = ("in_proj", "x_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                   "down_proj")


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
    model (ValueError otherwise). A refused call leaves the model as it was."""
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
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for mod, name, attr, child in found:
        setattr(mod, attr, LoRALinear(child, r, alpha))
        wrapped.append(f"{name}.{attr}" if name else attr)
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
    return n
