"""Sparse MoE forward used by the model: router -> moe_route -> fused expert dispatch -> weighted combine.

    sparse_moe_forward(x (T, H) or (..., H), router_weight (E, H), w_gate_up (E, 2F, H), w_down (E, H, F),
                       top_k, fp8_scales=None) -> (out shaped like x, in x's dtype, router_logits (T, E) in x's dtype)

Jamba semantics (jamba-architecture.md 4.4): router logits in model dtype, softmax in fp32 over all E,
top-k with no renormalisation, routing weights cast to model dtype, expert = down(silu(gate x) * up x),
each expert's weighted output rounded to model dtype and summed in model dtype.

Steps: (1) logits = F.linear (torch GEMM, model dtype, as HF; jamba.gemv in the model's static decode step);
(2) jamba.moe_route: softmax + top-k + the stable permutation grouping token slots by expert (C on CPU, two
kernels on CUDA, no host sync);
(3) jamba.moe_experts: gather + gate/up GEMM with SiLU*up fused + down GEMM scaled by the routing weight,
then the combine back to token order. CUDA engines by size (impl auto): a weight-streaming decode kernel
(Hopper: <= 1 slot per expert on average, i.e. <= 8 tokens at 16 experts top-2; other GPUs: <= 16), then our
wgmma GEMM on Hopper (64 x 512 tiles for the <= 64-row tails up to 16 slots per expert) or mma.sync GEMM
elsewhere; torch._grouped_mm only on request (impl "grouped_mm", see ops.MOE_GROUPED_MM_MIN_SLOTS).
CPU: torch.matmul per expert (see jamba_ext/ops.py). Training (autograd recording, bf16 on Hopper): the GEMMs
through torch._grouped_mm, keeping the gate_up pre-activations and expert outputs for the backward
(ops.moe_experts_trainable). The weights stay in the
transformers 5.x layout (no repacking, state_dict as HF).

fp8 experts (weight-only quantisation, JambaForCausalLM.quantize_experts): w_gate_up / w_down float8_e4m3fn and
fp8_scales = (s_gate_up (E, 2F), s_down (E, H)) f32, one scale per weight row; step (3) is then
ops.moe_experts_fp8 (the same as moe_experts on float(q) * scale; gradients for x and the routing weights only, the
expert weights are frozen). Routing is unchanged.
"""
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from . import ops


def sparse_moe_forward(x: Tensor, router_weight: Tensor, w_gate_up: Tensor, w_down: Tensor, top_k: int,
                       linear=F.linear, fp8_scales: Optional[Tuple[Tensor, Tensor]] = None, act_fp8: bool = False):
    """linear(x2, router_weight): the router projection (the model passes its decode-step-aware projection).
    fp8_scales (s_gate_up (E, 2F), s_down (E, H)) f32: the expert weights are float8_e4m3fn with these per-row
    scales (ops.quantize_fp8); x stays in its dtype, the weights are never cast. act_fp8 (with fp8_scales):
    ops.moe_experts_fp8's permission to quantize the activations to fp8 too."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])                                     # (T, H)
    logits = linear(x2, router_weight)                                # (T, E), model dtype
    weights, ids, offsets, slots = ops.moe_route(logits, top_k)       # (T, TOPK) f32, int32; (E+1,), (T*TOPK,)
    if fp8_scales is None:
        out = ops.moe_experts_trainable(x2, weights, ids, w_gate_up, w_down, slots, offsets)      # (T, H)
    else:
        s_gate_up, s_down = fp8_scales
        out = ops.moe_experts_fp8(x2, weights, ids, w_gate_up, s_gate_up, w_down, s_down, slots, offsets,
                                  act_fp8=act_fp8)
    return out.view(shape), logits
