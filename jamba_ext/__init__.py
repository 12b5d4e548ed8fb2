"""jamba_ext: fast native kernels (C, CUDA C) and a HuggingFace-compatible model for Jamba.

    import jamba_ext
    jamba_ext.ops.selective_scan(...)          # torch.ops.jamba.* custom ops
    model = jamba_ext.JambaForCausalLM.from_pretrained("ai21labs/Jamba-v0.1", torch_dtype=torch.bfloat16,
                                                      device_map="cuda")   # (jamba_ext.modeling_jamba)
    jamba_ext.add_lora(model, r=16)            # adapters for fine-tuning (jamba_ext.lora)
"""
from . import ops, reference  # noqa: F401  (registers torch.ops.jamba.*)

__version__ = "0.1.0"


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return ops.has_cuda_kernels()


_LAZY = {"JambaForCausalLM": "modeling_jamba", "JambaModel": "modeling_jamba", "JambaConfig": "modeling_jamba",
         "add_lora": "lora", "merge_lora": "lora", "remove_lora": "lora", "lora_state_dict": "lora",
         "load_lora_state_dict": "lora", "save_lora": "lora", "load_lora": "lora"}


def __getattr__(name: str):
    """The model classes and the LoRA helpers at the top level, imported on first use."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jamba_ext' has no attribute {name!r}")
