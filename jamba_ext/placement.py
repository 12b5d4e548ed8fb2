"""One model over several devices: which device holds which part (a device map), and the checks around it.

A Jamba model whose weights do not fit one GPU (Jamba-v0.1 in bf16: ~104 GB, two 80 GB GPUs) runs with its layers
split across GPUs, in order: the embeddings and the first layers on the first device, ..., the last layers, the final
norm and the LM head on the last. The forward moves the hidden state (one (B, L, H) tensor, and the residual) to the
next device where the layers change devices (JambaModel.forward), so only one device works at a time: this is for
memory, not speed (the same as transformers' device_map="auto").

Units (in forward order; the names transformers' device maps use): "model.embed_tokens", "model.layers.0", ...,
"model.final_layernorm", "lm_head" (for JambaModel without the "model." prefix and without "lm_head").

Device maps taken (resolve_device_map):
- one device ("cuda", "cuda:1", torch.device, an int): everything there;
- "auto": one GPU when the model's bytes fit in AUTO_FIT of the first GPU's free memory (or only one GPU is
  visible; the CPU without GPUs), else "balanced";
- "balanced": contiguous runs of units over every visible GPU, each holding about the same bytes;
- a list of devices (each once): "balanced" over those, in the list's order;
- a dict {unit name or a prefix of one ("model.layers", "model", ""): device}, as transformers' hf_device_map or
  accelerate's infer_auto_device_map write it; the longest matching prefix wins; every unit must be covered (a key
  inside a unit, such as "model.layers.0.mamba", is refused: a unit is placed whole).
Devices are compared in one spelling (canonical_device): an int is a GPU index, "cuda" (or torch.device("cuda")) the
current GPU, torch.cuda.current_device(), as torch reads it, so "cuda", "cuda:0", torch.device("cuda", 0) and 0 name
one device while GPU 0 is current (one device in a dict: no moves, no hf_device_map; twice in a list or max_memory: a
repeat). CPU indices are kept as written ("cpu:0" and "cpu:1" stand for two devices on a machine without GPUs, as the
tests use them). Only cpu and cuda devices are taken (the kernels run there); a GPU index past
torch.cuda.device_count() is refused.
A tied LM head (config.tie_word_embeddings) stays with the embeddings (and counts 0 bytes in the splits).
max_memory ({device: bytes, or a size such as "70GiB" / "500MB"}, as transformers' from_pretrained takes it) with
"auto" / "balanced": the devices used are its keys (GPUs by index, then the CPU), each taking a share of the weights
in proportion to its budget (then, if rounding to whole units overfills one, each filled in turn up to its budget);
a model larger than the budgets raises ValueError.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

AUTO_FIT = 0.85     # "auto": the share of the first GPU's free memory the weights may take on one GPU


def units(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The model's placement units, in forward order (see the module's docstring)."""
    base, pre = (model.model, "model.") if hasattr(model, "lm_head") else (model, "")
    out = [(pre + "embed_tokens", base.embed_tokens)]
    out += [(f"{pre}layers.{i}", layer) for i, layer in enumerate(base.layers)]
    out.append((pre + "final_layernorm", base.final_layernorm))
    if hasattr(model, "lm_head"):
        out.append(("lm_head", model.lm_head))
    return out


def module_bytes(mod: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (meta tensors count by their shape and dtype)."""
    seen, n = set(), 0
    for t in list(mod.parameters()) + list(mod.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            n += t.numel() * t.element_size()
    return n


def _cuda_index(d: torch.device) -> int:
    """d's GPU index; "cuda" without one: the current GPU (0 where torch sees none, for a map only described)."""
    if d.index is not None:
        return d.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def canonical_device(d, what: str = "device_map") -> torch.device:
    """The torch.device that d (a str, a torch.device, an int GPU index) names, in the spelling every comparison here
    uses: a GPU always with its index ("cuda": the current one), so that equal devices compare equal. ValueError for
    what is not a device, a device other than cpu / cuda, and a GPU index past torch.cuda.device_count()."""
    if isinstance(d, bool):
        raise ValueError(f"{what}: {d!r} is not a device")
    if isinstance(d, str) and d.strip().lower() == "disk":
        raise ValueError(f"{what}: 'disk' (accelerate's offload of weights to disk) is not supported: every part needs "
                         f"a cpu or cuda device")
    try:
        dev = torch.device("cuda", d) if isinstance(d, int) else torch.device(d)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{what}: {d!r} is not a device ({e})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{what}: {d!r} is a {dev.type} device; jamba_ext's kernels run on cpu and cuda devices only")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            seen = f"{n} visible: cuda:0 .. cuda:{n - 1}" if n else "torch sees no GPU"
            raise ValueError(f"{what}: {d!r} is not a visible GPU ({seen})")
        dev = torch.device("cuda", _cuda_index(dev))
    return dev


def _sizes(model: nn.Module, us: List[Tuple[str, nn.Module]]) -> List[int]:
    """module_bytes of each unit; a tied LM head 0 (its tensor is the embeddings', and it stays with them)."""
    cfg = getattr(model, "config", None)
    tied = getattr(cfg, "tie_word_embeddings", False)
    return [0 if tied and n == "lm_head" else module_bytes(m) for n, m in us]


def _no_repeats(devs: Sequence[torch.device], what: str) -> None:
    twice = sorted({str(d) for i, d in enumerate(devs) if d in devs[:i]})
    if twice:
        raise ValueError(f"{what}: {', '.join(twice)} given more than once (each device takes one share)")


def balanced(sizes: Sequence[int], devices: Sequence[torch.device],
             weights: Optional[Sequence[float]] = None) -> List[torch.device]:
    """Contiguous runs of units over `devices`, about equal bytes each (or in proportion to `weights`): unit j goes to
    the device whose share of the total holds the middle of its bytes (so the runs are in order)."""
    total = max(1, sum(sizes))
    w = [1.0] * len(devices) if weights is None else [float(x) for x in weights]
    bounds, acc = [], 0.0
    for x in w:
        acc += x
        bounds.append(acc / sum(w) * total)
    out, before, i = [], 0, 0
    for s in sizes:
        mid = before + s / 2
        while i < len(devices) - 1 and mid >= bounds[i]:
            i += 1
        out.append(devices[i])
        before += s
    return out


def _fill(sizes: Sequence[int], devices: Sequence[torch.device],
          budgets: Sequence[int]) -> Optional[List[torch.device]]:
    """Each device filled in turn up to its budget (contiguous runs); None when the units do not fit."""
    out, i, used = [], 0, 0
    for s in sizes:
        while i < len(devices) and used + s > budgets[i]:
            i, used = i + 1, 0
        if i == len(devices):
            return None
        out.append(devices[i])
        used += s
    return out


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(v) -> int:
    """Bytes from an int or a string such as "70GiB", "80GB", "512 MiB" (transformers' max_memory values)."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b)\s*", str(v), re.IGNORECASE) if isinstance(v, str) else None
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"max_memory: {v!r} is not a size (bytes as an int, or e.g. '70GiB', '80GB', '512MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _budgeted(sizes: Sequence[int], max_memory: dict) -> Tuple[List[torch.device], List[int], List[torch.device]]:
    """(the devices of max_memory in order: GPUs by index, then the rest; their budgets; the units' devices, by budget
    share)."""
    keys = [canonical_device(k, "max_memory") for k in max_memory]
    _no_repeats(keys, "max_memory")
    budgets = {d: parse_size(v) for d, v in zip(keys, max_memory.values())}
    devs = sorted(budgets, key=lambda d: (d.type != "cuda", d.type, d.index or 0))
    devs = [d for d in devs if budgets[d] > 0]
    if not devs:
        raise ValueError("max_memory: no device with a budget above 0")
    b = [budgets[d] for d in devs]
    total = sum(sizes)
    if total > sum(b):
        raise ValueError(f"max_memory: the weights take {total / 1e9:.2f} GB, the budgets hold {sum(b) / 1e9:.2f} GB")
    out = balanced(sizes, devs, b)
    if any(sum(s for s, d in zip(sizes, out) if d == dev) > bd for dev, bd in zip(devs, b)):
        out = _fill(sizes, devs, b)
        if out is None:
            raise ValueError(f"max_memory: the weights ({total / 1e9:.2f} GB) do not fit the budgets in whole layers "
                             f"({', '.join(f'{d}: {x / 1e9:.2f} GB' for d, x in zip(devs, b))})")
    return devs, b, out


def _gpus() -> List[torch.device]:
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def resolve_device_map(model: nn.Module, device_map, max_memory: Optional[dict] = None) -> Dict[str, torch.device]:
    """{unit name: device} for every unit of `model` (parameters may be on meta: only their sizes are read)."""
    us = units(model)
    names = [n for n, _ in us]
    if max_memory is not None:
        if device_map not in ("auto", "balanced"):
            raise ValueError(f"max_memory goes with device_map='auto' or 'balanced', got device_map={device_map!r}")
        if not isinstance(max_memory, dict) or not max_memory:
            raise ValueError(f"max_memory: expected a dict {{device: size}}, got {max_memory!r}")
        sizes = _sizes(model, us)
        devs, budgets, placed = _budgeted(sizes, max_memory)
        one = device_map == "auto" and sum(sizes) <= budgets[0]
        out = {n: devs[0] for n in names} if one else dict(zip(names, placed))
    elif isinstance(device_map, dict):
        if not device_map:
            raise ValueError("device_map: an empty dict")
        keys = {str(k): canonical_device(v) for k, v in device_map.items()}
        inside = [(k, n) for k in keys for n in names if k.startswith(n + ".")]
        if inside:
            k, n = inside[0]
            raise ValueError(f"device_map: {k!r} lies inside the unit {n!r}; a unit is placed whole (name it or a "
                             f"prefix of it)")
        out = {}
        pre = names[0][:-len("embed_tokens")]                      # "model." or ""
        for n in names:
            hits = [k for k in keys if k == "" or n == k or n.startswith(k + ".")]
            if not hits:
                tail = ", ".join(names[-2:] if pre else names[-1:])    # (final_layernorm[, lm_head])
                raise ValueError(f"device_map: no entry covers {n!r} (units: {names[0]}, {pre}layers.N, {tail}; a "
                                 f"prefix such as '{pre}layers' or '' covers several)")
            out[n] = keys[max(hits, key=len)]
        unknown = [k for k in keys if k and not any(n == k or n.startswith(k + ".") for n in names)]
        if unknown:
            raise ValueError(f"device_map: {unknown[:4]} name no part of this model (units: {names[0]}, ..., "
                             f"{names[-1]})")
    elif isinstance(device_map, (list, tuple)):
        if not device_map:
            raise ValueError("device_map: an empty list of devices")
        devs = [canonical_device(d) for d in device_map]
        _no_repeats(devs, "device_map")
        out = dict(zip(names, balanced(_sizes(model, us), devs)))
    elif device_map in ("auto", "balanced"):
        gpus = _gpus()
        if not gpus:
            out = {n: torch.device("cpu") for n in names}
        elif len(gpus) == 1:
            out = {n: gpus[0] for n in names}
        else:
            sizes = _sizes(model, us)
            fits = device_map == "auto" and sum(sizes) <= AUTO_FIT * torch.cuda.mem_get_info(gpus[0])[0]
            out = {n: gpus[0] for n in names} if fits else dict(zip(names, balanced(sizes, gpus)))
    else:
        d = canonical_device(device_map)
        out = {n: d for n in names}
    cfg = getattr(model, "config", None)
    if "lm_head" in out and cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        out["lm_head"] = out["model.embed_tokens"]                 # (one tensor: it stays with the embeddings)
    return out


def place(model: nn.Module, device_map: Dict[str, torch.device], empty: bool = False) -> None:
    """Moves each unit to its device (empty=True: to_empty, for a model built on meta before loading)."""
    for name, mod in units(model):
        if empty:
            mod.to_empty(device=device_map[name])
        else:
            mod.to(device_map[name])


def hf_device_map(device_map: Dict[str, torch.device]) -> Dict[str, Union[int, str]]:
    """transformers' model.hf_device_map form: GPU indices as ints, other devices by name."""
    return {n: _cuda_index(d) if d.type == "cuda" else str(d) for n, d in device_map.items()}
