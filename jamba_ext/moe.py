"""Sparse MoE forward used by the model: router -> moe_route -> fused expert dispatch -> weighted combine.

    sparse_moe_forward(x (T, H), router_weight (E, H), w_gate_up (E, 2F, H), w_down (E, H, F), top_k)
        -> (out (T, H) in x's dtype, router_logits (T, E) in x's dtype)

Jamba semantics (jamba-architecture.md 4.4): router logits in model dtype, softmax in fp32 over all E,
top-k with no renormalisation, routing weights cast to model dtype, expert = down(silu(gate x) * up x).
Until the native MoE ops land this runs reference.py.
"""
import torch.nn.functional as F
from torch import Tensor

from . import reference


def sparse_moe_forward(x: Tensor, router_weight: Tensor, w_gate_up: Tensor, w_down: Tensor, top_k: int):
    logits = F.linear(x, router_weight)
    w, ids = reference.moe_route(logits, top_k)
    out = reference.moe_experts(x, w.to(x.dtype), ids, w_gate_up, w_down)
    return out, logits
