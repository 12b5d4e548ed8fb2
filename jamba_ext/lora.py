"""Low-rank adapters (LoRA) for fine-tuning a Jamba model whose weights stay frozen.

    from jamba_ext.lora import add_lora, merge_lora
    names = add_lora(model, r=16, alpha=32)      # wraps the projections; only the adapters train
    ... train ...
    sd = lora_state_dict(model)                  # the adapters only ({... .lora_A.weight, ... .lora_B.weight})
    merge_lora(model)                            # W += (alpha / r) B A; plain nn.Linears again (fast decode, save)
    # or remove_lora(model): the base model back as it was (its own nn.Linears, weights untouched, no merge)
    # later, on the same base model: add_lora(model, r=16, alpha=32); load_lora_state_dict(model, sd)
    save_lora(model, "my-adapter")               # a PEFT adapter directory (adapter_config.json + .safetensors)
    load_lora(other_model, "my-adapter")         # adds the adapters the config describes, then loads the weights

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
adapter_config.json): give add_lora the same ones before loading. save_lora / load_lora write and read the whole PEFT
adapter directory, adapter_config.json included, so PeftModel.from_pretrained(transformers' Jamba, directory) reads
ours and load_lora reads PEFT's plain LoRA adapters (use_rslora, DoRA, trained biases and other LoraConfig options
LoRALinear lacks are refused, naming the field).
"""
import json
import math
import os
import re
import warnings
from collections import Counter
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

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
        self.base, self.r, self.alpha, self.scale = base, r, alpha, alpha / r     # (PEFT's scaling lora_alpha / r)
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
    return _wrap(model, [(mod, f"{name}.{attr}" if name else attr, attr, child) for mod, name, attr, child in found],
                 r, alpha)


def _wrap(model: nn.Module, found, r: int, alpha: float) -> List[str]:
    """add_lora's work once the modules are chosen: found [(parent, full name, attribute, nn.Linear)]."""
    trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    for p in model.parameters():
        p.requires_grad_(False)
    for mod, _, attr, child in found:
        setattr(mod, attr, LoRALinear(child, r, alpha))
    setattr(model, _TRAINABLE, trainable)      # (remove_lora gives the model back trainable as it was)
    return [full for _, full, _, _ in found]


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
        # (the rank hint only where the rank is what differs: same ranks, other sizes: another base model's adapters)
        ranks = sorted({state_dict[a].shape[0] for a in shaped if a.endswith("lora_A.weight")
                        and state_dict[a].ndim == 2 and state_dict[a].shape[0] != want[a].shape[0]})
        hint = f"; the adapters have rank {ranks[0]}: add_lora(model, r={ranks[0]}, ...)" if len(ranks) == 1 else ""
        if not ranks and all(state_dict[a].ndim == 2 for a in shaped):
            hint = "; the ranks agree but the projections' sizes do not: adapters trained on another base model?"
        raise ValueError(f"load_lora_state_dict: {len(shaped)} keys mis-shaped, e.g. {k}: given "
                         f"{tuple(state_dict[k].shape)}, the model's {tuple(want[k].shape)}{hint}")
    with torch.no_grad():
        for k, p in want.items():
            p.copy_(state_dict[k])
    return len(ads)


# ---- PEFT adapter directories (adapter_config.json + adapter_model.safetensors) ------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"        # (older PEFT's torch.save file; read, never written)
# LoraConfig fields LoRALinear does not implement: (field, the values that mean "not used", what the field asks for).
# Any other value is refused, naming the field (PEFT's defaults are the first value).
_UNSUPPORTED = (("use_rslora", (False, None), "rank-stabilized scaling lora_alpha / sqrt(r)"),
                ("use_dora", (False, None), "DoRA's magnitude vectors"),
                ("bias", ("none", None), "trained base biases saved with the adapters"),
                ("lora_bias", (False, None), "a bias on lora_B"),
                ("modules_to_save", (None, []), "whole modules saved beside the adapters"),
                ("layers_to_transform", (None, []), "adapters on some layers' modules only"),
                ("rank_pattern", (None, {}), "a rank per module"),
                ("alpha_pattern", (None, {}), "a lora_alpha per module"),
                ("layer_replication", (None, []), "layers stacked again"),
                ("trainable_token_indices", (None, [], {}), "trained embedding rows"),
                ("target_parameters", (None, []), "adapters on parameters (such as MoE experts)"),
                ("megatron_config", (None, {}), "Megatron parallel layers"))
# init_lora_weights values whose initialization changed the base weights (the adapter then belongs to that residual
# model, not to the original one, unless PEFT converted it when saving, which resets the field)
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


def _children(module: nn.Module, prefix: str = ""):
    """(parent, full name, attribute, child) for every submodule, in named_modules' order; none inside a LoRALinear
    (the LoRALinear stands for its projection, as PEFT's layer does)."""
    for attr, child in module.named_children():
        yield module, prefix + attr, attr, child
        if not isinstance(child, LoRALinear):
            yield from _children(child, f"{prefix}{attr}.")


def _peft_match(spec, name: str) -> bool:
    """PEFT's rule for target_modules / exclude_modules: a str is a regular expression the whole module name must
    match; a list matches a name equal to one entry or ending in "." + an entry."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return name in spec or any(name.endswith("." + t) for t in spec)


def save_lora(model: nn.Module, directory, base_model_name_or_path: Optional[str] = None) -> int:
    """Writes model's adapters as a PEFT adapter directory: adapter_model.safetensors (lora_state_dict's tensors,
    PEFT's names) and adapter_config.json (peft_type "LORA", r, lora_alpha, target_modules, ...), which
    PeftModel.from_pretrained(transformers' Jamba, directory) and load_lora read. directory (str or Path, "~"
    expanded) is created with its parents; files of those names in it are replaced. base_model_name_or_path: the
    base checkpoint, written into the config (default: the model config's _name_or_path, if set; else null).
    target_modules are the adapted projections' attribute names (["in_proj", "q_proj", ...]), or their full module
    names when those names would also select projections that have no adapter. Every adapter must have the same r
    and alpha (add_lora's do). Returns the number of adapters written. ValueError without adapters; ImportError
    without safetensors; NotADirectoryError when directory is a file; an OSError naming directory when it cannot be
    made or written. The files get the mode open() gives (0644 under umask 022). A warning for dt_proj adapters,
    which PEFT on transformers 5's Jamba does not apply."""
    ads = _adapters(model)
    if not ads:
        raise ValueError("save_lora: the model has no LoRA adapters (add_lora adds them)")
    ranks = sorted({m.r for _, m in ads})
    alphas = sorted({getattr(m, "alpha", m.scale * m.r) for _, m in ads})
    if len(ranks) > 1 or len(alphas) > 1:
        raise ValueError(f"save_lora: the adapters have different ranks {ranks} or alphas {alphas}: PEFT's "
                         f"adapter_config.json holds one r and one lora_alpha")
    try:
        from safetensors.torch import save
    except ImportError:
        raise ImportError("save_lora: writing adapter_model.safetensors needs safetensors: pip install safetensors") \
            from None
    if base_model_name_or_path is None:
        known = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
        base_model_name_or_path = known if isinstance(known, str) and known else None
    adapted = {n for n, _ in ads}
    if any(n.rsplit(".", 1)[-1] == "dt_proj" for n in adapted):
        warnings.warn("save_lora: adapters on dt_proj: transformers 5's Jamba multiplies by dt_proj.weight without "
                      "calling the module, so PEFT on that model leaves them out (jamba_ext and a merged checkpoint "
                      "keep them)")
    attrs = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    chosen = {full for _, full, _, _ in _children(model) if _peft_match(attrs, full)}
    targets = attrs if chosen == adapted else sorted(adapted)    # (PEFT: a full name matches itself only)
    alpha = alphas[0]
    if isinstance(alpha, float) and alpha.is_integer():
        alpha = int(alpha)                                        # (PEFT's lora_alpha is an int; 2.5 stays 2.5)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
              "revision": None, "inference_mode": True, "r": ranks[0], "lora_alpha": alpha, "lora_dropout": 0.0,
              "target_modules": targets, "fan_in_fan_out": False, "bias": "none",
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
              "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}
    path = os.path.expanduser(os.fspath(directory))
    if os.path.exists(path) and not os.path.isdir(path):       # (makedirs said only "[Errno 17] File exists")
        raise NotADirectoryError(f"save_lora: {path!r} is a file, not a directory (give the adapter directory to "
                                 f"write; it is created with its parents)")
    # safetensors' save_file writes a temporary file of mode 0600 and renames it (others could not read the adapters)
    # and raises its own SafetensorError for an I/O failure: the bytes are written here instead, through open(), so
    # the files get the umask's mode like any other file, an unwritable place is an OSError naming the path, and the
    # weights still replace an older file in one rename (an interrupted save leaves the old file whole)
    blob = save({k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}, metadata={"format": "pt"})
    weights = os.path.join(path, ADAPTER_WEIGHTS)
    tmp = os.path.join(path, f".{ADAPTER_WEIGHTS}.{os.getpid()}.tmp")
    try:
        os.makedirs(path, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, weights)
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)
        with open(os.path.join(path, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise type(e)(f"save_lora: cannot write the adapter directory {path!r}: {e.strerror or e}"
                      f"{f' ({e.filename})' if e.filename and e.filename != path else ''}") from e
    return len(ads)


def _read_adapter_config(path: str) -> dict:
    """adapter_config.json, checked for what LoRALinear can hold (ValueError naming the file and the field)."""
    from .tokenizer import read_json_object
    cfg = read_json_object(path)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"load_lora: {path}: peft_type is {cfg.get('peft_type')!r}: only LoRA adapters (peft_type "
                         f"'LORA') load here")
    for field in ("r", "lora_alpha", "target_modules"):
        if cfg.get(field) is None:
            raise ValueError(f"load_lora: {path}: no {field}")
    _check_rank(cfg["r"], cfg["lora_alpha"], f"load_lora: {path}")
    for field, fine, what in _UNSUPPORTED:
        if field in cfg and not any(cfg[field] == v and type(cfg[field]) is type(v) for v in fine):
            raise ValueError(f"load_lora: {path}: {field} is {cfg[field]!r} ({what}): jamba_ext's adapters do not "
                             f"implement it (supported: {field} {json.dumps(fine[0])})")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise ValueError(f"load_lora: {path}: init_lora_weights is {init!r}: that initialization changed the base "
                         f"weights, so the adapter fits that changed model only (PEFT converts such an adapter to a "
                         f"plain LoRA when saving it with path_initial_model_for_weight_conversion)")
    for field in ("target_modules", "exclude_modules"):
        spec = cfg.get(field)
        if spec is None or isinstance(spec, str):
            continue
        if not isinstance(spec, list) or not all(isinstance(t, str) for t in spec):
            raise ValueError(f"load_lora: {path}: {field} must be a list of module names or a regular expression, "
                             f"got {spec!r}")
    return cfg


def _read_adapter_weights(path: str) -> Mapping[str, Tensor]:
    """adapter_model.safetensors, else adapter_model.bin (torch.load, weights_only) in the directory path."""
    st, bin_ = os.path.join(path, ADAPTER_WEIGHTS), os.path.join(path, ADAPTER_WEIGHTS_BIN)
    if os.path.isfile(st):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"load_lora: reading {st} needs safetensors: pip install safetensors") from None
        from safetensors import SafetensorError
        try:
            return load_file(st)
        except SafetensorError as e:        # (a truncated or foreign file: the error named no file)
            raise ValueError(f"load_lora: {st}: not a readable safetensors file ({e})") from None
    if os.path.isfile(bin_):
        import pickle
        try:
            return torch.load(bin_, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise ValueError(f"load_lora: {bin_}: not a readable torch.save file of tensors ({e})") from None
    raise FileNotFoundError(f"load_lora: no {ADAPTER_WEIGHTS} or {ADAPTER_WEIGHTS_BIN} in {path!r}")


def read_adapter_config(directory) -> dict:
    """The adapter_config.json of a PEFT adapter directory, checked as load_lora checks it, once the directory is
    known to hold a weights file too: all that load_lora refuses without a model (so that a bad directory fails
    before a large base model loads: the CLI's --adapter). directory: str or Path, "~" expanded. Raises
    FileNotFoundError (no such directory, or a file there; no config or weights file in it) and ValueError (the
    config: see load_lora)."""
    path = os.path.expanduser(os.fspath(directory))
    if not os.path.isdir(path):
        what = f"{path!r} is a file, not a directory" if os.path.exists(path) else f"no directory {path!r}"
        raise FileNotFoundError(f"load_lora: {what} (a PEFT adapter directory: {ADAPTER_CONFIG} and "
                                f"{ADAPTER_WEIGHTS})")
    cfg_path = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"load_lora: no {ADAPTER_CONFIG} in {path!r}")
    cfg = _read_adapter_config(cfg_path)
    if not any(os.path.isfile(os.path.join(path, f)) for f in (ADAPTER_WEIGHTS, ADAPTER_WEIGHTS_BIN)):
        raise FileNotFoundError(f"load_lora: no {ADAPTER_WEIGHTS} or {ADAPTER_WEIGHTS_BIN} in {path!r}")
    return cfg


def load_lora(model: nn.Module, directory) -> int:
    """Loads a PEFT LoRA adapter directory (save_lora's, or PeftModel.save_pretrained's for transformers' Jamba):
    reads adapter_config.json, adds adapters of its r and lora_alpha to the projections its target_modules select
    (PEFT's rule: a list entry names a module or the end of one's name, "q_proj"; a str is a regular expression the
    whole name must match; "all-linear": every nn.Linear but the output layer; exclude_modules likewise) as add_lora
    does (the rest frozen, the adapters trainable), then copies adapter_model.safetensors (or adapter_model.bin) into
    them. A model that has adapters already must have them on exactly those projections with that r and alpha (they
    are overwritten). directory: str or Path, "~" expanded; a local directory only. Returns the number of adapters.
    lora_dropout and inference_mode are not used (LoRALinear has no dropout).
    Raises FileNotFoundError for a missing directory or file, ImportError for a .safetensors file without
    safetensors, and ValueError naming the problem: a weights file that does not parse; peft_type not "LORA"; a bad
    r or lora_alpha; settings LoRALinear does not implement (use_rslora, use_dora, bias other than "none",
    modules_to_save, rank_pattern, ...: the field is named); a target naming no module of the model or a module that
    is not an nn.Linear; tensors whose rank is not r, or that are not the selected projections' adapters (missing,
    unexpected or mis-shaped keys). A refused load leaves the model as it was. read_adapter_config(directory) makes
    the checks that need no model."""
    path = os.path.expanduser(os.fspath(directory))
    cfg = read_adapter_config(path)
    cfg_path = os.path.join(path, ADAPTER_CONFIG)
    r, alpha, spec, exclude = cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg.get("exclude_modules")
    sd = _read_adapter_weights(path)
    if not isinstance(sd, Mapping):
        raise ValueError(f"load_lora: {path}: the adapter weights are a {type(sd).__name__}, not a dict of tensors")
    for k, v in sd.items():
        if isinstance(v, Tensor) and v.ndim == 2 and k.endswith((".lora_A.weight", ".lora_B.weight")):
            rank = v.shape[0] if k.endswith(".lora_A.weight") else v.shape[1]
            if rank != r:
                raise ValueError(f"load_lora: {path}: {ADAPTER_CONFIG} says r={r} but the tensors have rank {rank} "
                                 f"({k}: {tuple(v.shape)})")
    subs = list(_children(model))
    linear = [s for s in subs if type(s[3]) is nn.Linear or isinstance(s[3], LoRALinear)]
    if isinstance(spec, list):
        unknown = [t for t in spec if not any(_peft_match([t], full) for _, full, _, _ in subs)]
        if unknown:
            raise ValueError(f"load_lora: {cfg_path}: target_modules {unknown} name no module of the model (its "
                             f"projections: {sorted({a for _, _, a, _ in linear})})")
    try:
        if isinstance(spec, str) and spec.lower() == "all-linear":      # (PEFT's shorthand: not the output layer)
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            chosen = [s for s in linear if s[3] is not head and getattr(s[3], "base", None) is not head]
        else:
            chosen = [s for s in subs if _peft_match(spec, s[1])]
        if exclude:
            chosen = [s for s in chosen if not _peft_match(exclude, s[1])]
    except re.error as e:
        raise ValueError(f"load_lora: {cfg_path}: target_modules {spec!r} / exclude_modules {exclude!r}: not a valid "
                         f"regular expression ({e})") from None
    other = [(full, type(child).__name__) for _, full, _, child in chosen
             if not (type(child) is nn.Linear or isinstance(child, LoRALinear))]
    if other:
        raise ValueError(f"load_lora: {cfg_path}: target_modules {spec!r} select {other[0][0]} (a {other[0][1]}) "
                         f"and {len(other) - 1} more modules that are not nn.Linears: only nn.Linear projections "
                         f"take adapters here (not the MoE experts, stacked parameters, the router or the embeddings)")
    if not chosen:
        raise ValueError(f"load_lora: {cfg_path}: target_modules {spec!r} select no nn.Linear of the model")
    names = [full for _, full, _, _ in chosen]
    want = {f"{PEFT_PREFIX}{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    missing = sorted(want - set(sd))
    unexpected = sorted(set(sd) - want)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})"] if missing else []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        hint = _key_hint(unexpected)
        if not hint and any(".experts." in k or ".router." in k for k in unexpected):
            hint = ("; adapters on the MoE experts or router (PEFT on a model whose experts are nn.Linears) have no "
                    "counterpart here: jamba_ext adapts the Mamba, attention and dense MLP projections")
        raise ValueError(f"load_lora: {path}: the tensors are not the adapters of the projections "
                         f"{ADAPTER_CONFIG}'s target_modules select in this model: keys {' and '.join(parts)}{hint}")
    present = {n for n, _ in _adapters(model)}
    if present:
        off = [n for n in names if n in present and (model.get_submodule(n).r != r or
                                                     not math.isclose(model.get_submodule(n).scale, alpha / r))]
        if present != set(names) or off:
            raise ValueError(f"load_lora: the model's adapters are not those of {path!r} (r={r}, lora_alpha={alpha} "
                             f"on {len(names)} projections; the model has {len(present)}, "
                             f"{len(present - set(names))} of them elsewhere, {len(off)} of another r or alpha): "
                             f"remove_lora(model) first")
    else:
        _wrap(model, chosen, r, alpha)
    try:
        return load_lora_state_dict(model, sd)
    except ValueError as e:
        if not present:
            remove_lora(model)                      # (the model as it was: its own nn.Linears, trainable as before)
        raise ValueError(f"load_lora: {path}: {e}") from None
