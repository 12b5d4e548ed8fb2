"""jamba_ext: fast native kernels (C, CUDA C) and a HuggingFace-compatible model for Jamba.

    import jamba_ext
    jamba_ext.ops.selective_scan(...)          # torch.ops.jamba.* custom ops
    from jamba_ext.modeling_jamba import JambaForCausalLM
"""
from . import ops, reference  # noqa: F401  (registers torch.ops.jamba.*)

__version__ = "0.1.0"


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return ops.has_cuda_kernels()
