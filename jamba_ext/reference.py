"""Pure-PyTorch reference of every jamba_ext op: the oracle of the tests and the autograd path.

Each function computes in float64 when its activations are float64 and in float32 otherwise, and
returns activations in the input dtype (states in float32 / float64), so the same code serves as the
float64 oracle (tests upcast every input) and as a float32-compute reference for low-precision runs.
The functions are pure: the decode-step references return the new state instead of writing it.

Shapes (glossary of csrc/jamba.h): B batch, L seqlen, DI d_inner, N d_state, K conv width,
T tokens, H hidden, F ffn_dim, E experts, TOPK experts per token.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(*ts: Optional[Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _f(t: Optional[Tensor], dt: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dt)


# ---- RMSNorm --------------------------------------------------------------------------------------
def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x: (..., dim); weight: (dim,). HF JambaRMSNorm: fp32 statistics, cast back to x's dtype, times weight."""
    cd = _compute_dtype(x)
    h = x.to(cd)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h.to(x.dtype).to(cd) * weight.to(cd)).to(x.dtype)


def rms_norm_segments(x: Tensor, weight: Tensor, splits, eps: float = 1e-6) -> Tensor:
    """rms_norm of each segment of the last dim (cut at the split points) with its slice of weight."""
    bounds = [0] + [int(v) for v in splits] + [x.shape[-1]]
    parts = [rms_norm(x[..., a:b], weight[a:b], eps) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=-1)


def rms_norm_bwd(x: Tensor, weight: Tensor, dy: Tensor, splits=(), eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Gradients of rms_norm (no splits) or rms_norm_segments: autograd of the functions above, (dx in x's dtype (the
    casts' autograd), dweight in the compute dtype); float64 inputs give the float64 oracle."""
    cd = _compute_dtype(x)
    xs, ws = x.detach().requires_grad_(True), weight.detach().to(cd).requires_grad_(True)
    with torch.enable_grad():
        y = rms_norm_segments(xs, ws, list(splits), eps) if splits else rms_norm(xs, ws, eps)
        dx, dw = torch.autograd.grad(y, (xs, ws), dy.to(y.dtype))
    return dx, dw


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Returns (rms_norm(x + residual), x + residual); the sum is rounded to x's dtype."""
    s = (x.to(_compute_dtype(x)) + residual.to(_compute_dtype(x))).to(x.dtype)
    return rms_norm(s, weight, eps), s


# ---- causal conv1d ----------------------------------------------------------------------------------
def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  initial_state: Optional[Tensor] = None, silu: bool = True,
                  state_len: int = -1) -> Tuple[Tensor, Tensor]:
    """x: (B, DI, L); weight: (DI, K) or (DI, 1, K); bias: (DI,); initial_state: (B, DI, S_in >= K-1).

    out[b,c,t] = act(bias[c] + sum_j w[c,j] * h[t-(K-1)+j]) over h = concat(initial_state or 0, x).
    Returns (out (B, DI, L) in x's dtype, final_state (B, DI, state_len) = last entries of h, zero-padded;
    state_len -1 means K-1).
    """
    w = weight.reshape(weight.shape[0], weight.shape[-1])
    Bsz, DI, L = x.shape
    K = w.shape[1]
    S = K - 1 if state_len < 0 else state_len
    cd = _compute_dtype(x)
    xc = x.to(cd)
    hist = torch.zeros(Bsz, DI, max(K - 1, S), dtype=cd, device=x.device)
    if initial_state is not None:
        hist = torch.cat([hist, initial_state.to(cd)], dim=-1)
    full = torch.cat([hist, xc], dim=-1)
    padded = full[..., full.shape[-1] - L - (K - 1):]
    if L == 0:
        out = torch.zeros(Bsz, DI, 0, dtype=cd, device=x.device)
    else:
        out = F.conv1d(padded, w.to(cd).unsqueeze(1), _f(bias, cd), groups=DI)
    if silu:
        out = F.silu(out)
    final = full[..., full.shape[-1] - S:] if S > 0 else full[..., :0]
    return out.to(x.dtype), final.to(x.dtype)


def causal_conv1d_bwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
                      dout: Tensor, silu: bool = True):
    """Gradients of causal_conv1d's out (autograd of the function above in its compute dtype). Returns (dx, dweight
    (DI, K), dbias (DI,), dinitial_state or None) in the compute dtype; dbias is what a bias would get, also when
    absent."""
    cd = _compute_dtype(x)
    w = weight.reshape(weight.shape[0], weight.shape[-1])
    b = bias if bias is not None else torch.zeros(w.shape[0], dtype=cd, device=x.device)
    args = [t if t is None else t.detach().to(cd).requires_grad_(True) for t in (x, w, b, initial_state)]
    with torch.enable_grad():
        out = causal_conv1d(args[0], args[1], args[2], args[3], silu, 0)[0]
        leaves = [t for t in args if t is not None]
        g = torch.autograd.grad(out, leaves, dout.to(cd), allow_unused=True) if out.requires_grad \
            else [None] * len(leaves)
    g = [torch.zeros_like(t) if r is None else r for r, t in zip(g, leaves)]
    return g[0], g[1], g[2], (g[3] if initial_state is not None else None)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                         silu: bool = True) -> Tuple[Tensor, Tensor]:
    """x: (B, DI) or (B, DI, L) new tokens; conv_state: (B, DI, S >= K-1).

    Returns (out shaped like x, new conv_state): the state is the last S entries of concat(state, x).
    """
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    S = conv_state.shape[-1]
    out, new_state = causal_conv1d(x3, weight, bias, initial_state=conv_state, silu=silu, state_len=S)
    return (out.squeeze(-1) if squeeze else out), new_state.to(conv_state.dtype)


# ---- selective scan ------------------------------------------------------------------------------------
def _softplus(v: Tensor) -> Tensor:
    return torch.where(v <= 20.0, torch.log1p(torch.exp(v)), v)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False,
                   initial_state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """u, delta, z: (B, DI, L); A: (DI, N); B, C: (B, N, L); D, delta_bias: (DI,); initial_state: (B, DI, N).

    dt = softplus?(delta + delta_bias); h[t] = exp(dt*A) h[t-1] + dt*B[t]*u[t]; y = C[t].h[t] + D*u;
    y *= silu(z). Returns (y in u's dtype (B, DI, L), last state (B, DI, N) in the compute dtype).
    """
    cd = _compute_dtype(u, delta, A)
    Bsz, DI, L = u.shape
    N = A.shape[1]
    uc, dc, Ac, Bc, Cc = u.to(cd), delta.to(cd), A.to(cd), B.to(cd), C.to(cd)
    if delta_bias is not None:
        dc = dc + delta_bias.to(cd)[None, :, None]
    if delta_softplus:
        dc = _softplus(dc)
    h = (torch.zeros(Bsz, DI, N, dtype=cd, device=u.device) if initial_state is None
         else initial_state.to(cd))
    dA = torch.exp(dc.unsqueeze(-1) * Ac[None, :, None, :])            # (B, DI, L, N)
    dBu = (dc * uc).unsqueeze(-1) * Bc.transpose(1, 2).unsqueeze(1)    # (B, DI, L, N)
    ys = []
    for t in range(L):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cc[:, :, t]))
    y = torch.stack(ys, dim=-1) if L > 0 else torch.zeros(Bsz, DI, 0, dtype=cd, device=u.device)
    if D is not None:
        y = y + D.to(cd)[None, :, None] * uc
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(u.dtype), h


def selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       initial_state: Optional[Tensor], dout: Tensor, dlast_state: Optional[Tensor] = None):
    """Gradients of selective_scan (autograd of the function above, in its compute dtype: float64 for float64
    inputs). Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state) in the compute dtype, with
    None for absent inputs (D, z, delta_bias, initial_state)."""
    cd = _compute_dtype(u, delta, A)
    args = [t if t is None else t.detach().to(cd).requires_grad_(True)
            for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]
    if args[8] is None:
        args[8] = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=cd, device=u.device, requires_grad=True)
    with torch.enable_grad():
        y, h = selective_scan(*args[:8], delta_softplus, args[8])
        outs, grads = [y], [dout.to(cd)]
        if dlast_state is not None:
            outs.append(h)
            grads.append(dlast_state.to(cd))
        leaves = [t for t in args if t is not None]
        pairs = [(o, gr) for o, gr in zip(outs, grads) if o.requires_grad]  # L = 0: y has no graph
        g = iter(torch.autograd.grad([o for o, _ in pairs], leaves, [gr for _, gr in pairs], allow_unused=True)
                 if pairs else [None] * len(leaves))
    res = [None if t is None else next(g) for t in args]
    res = [torch.zeros_like(t) if r is None and t is not None else r for r, t in zip(res, args)]
    du, ddelta, dA, dB, dC, dD, dz, ddb, dinit = res
    return du, ddelta, dA, dB, dC, dD, dz, ddb, dinit


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                           dt_bias: Optional[Tensor] = None,
                           dt_softplus: bool = False) -> Tuple[Tensor, Tensor]:
    """One decode step. state: (B, DI, N); x, dt, z: (B, DI); A: (DI, N); B, C: (B, N); D, dt_bias: (DI,).

    Returns (y (B, DI) in x's dtype, new state in state's dtype).
    """
    y, h = selective_scan(x.unsqueeze(-1), dt.unsqueeze(-1), A, B.unsqueeze(-1), C.unsqueeze(-1), D,
                          None if z is None else z.unsqueeze(-1), dt_bias, dt_softplus, state)
    return y.squeeze(-1), h.to(state.dtype)


def mamba_inner_step(x: Tensor, z: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                     xproj_weight: Tensor, norm_weight: Tensor, dtproj_weight: Tensor, A: Tensor,
                     D: Optional[Tensor], dt_bias: Optional[Tensor], ssm_state: Tensor, dt_rank: int,
                     eps: float = 1e-6) -> Tuple[Tensor, Tensor, Tensor]:
    """A Mamba layer's decode step between in_proj and out_proj (csrc/jamba.h), as the chain of the references above
    with each intermediate rounded to x's dtype as the ops return it. x, z: (B, DI); conv_state (B, DI, S);
    conv_weight (DI, K) or (DI, 1, K); xproj_weight (R + 2N, DI); norm_weight (R + 2N,); dtproj_weight (DI, R);
    A (DI, N); D, dt_bias (DI,); ssm_state (B, DI, N). Returns (out (B, DI), new conv_state, new ssm_state)."""
    R, N = int(dt_rank), A.shape[1]
    w = conv_weight[:, 0, :] if conv_weight.dim() == 3 else conv_weight
    xc, conv_new = causal_conv1d_update(x, conv_state, w, conv_bias, True)
    xdbl = gemv(xc, xproj_weight)
    n = rms_norm_segments(xdbl, norm_weight, [R, R + N], eps)
    delta = gemv(n[:, :R], dtproj_weight)
    y, h = selective_state_update(ssm_state, xc, delta, A, n[:, R:R + N], n[:, R + N:], D, z, dt_bias, True)
    return y, conv_new, h


# ---- MoE ----------------------------------------------------------------------------------------------
def moe_route(router_logits: Tensor, top_k: int) -> Tuple[Tensor, Tensor]:
    """router_logits: (T, E). Jamba routing: softmax in fp32 (fp64 for fp64 input) over all E experts,
    then top-k, no renormalisation. Returns (weights (T, TOPK) fp32/fp64, expert ids (T, TOPK) int64).
    Equal probabilities go to the lower expert id (a stable sort; torch.topk leaves ties unspecified, and
    bf16 logits tie often)."""
    p = torch.softmax(router_logits.to(_compute_dtype(router_logits)), dim=-1)
    w, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    return w[:, :top_k], idx[:, :top_k]


def gemv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x @ weight.T (+ bias) in the compute dtype, cast to x's dtype. x: (..., K); weight: (N, K); bias: (N,)."""
    cd = _compute_dtype(x)
    return F.linear(x.to(cd), weight.to(cd), _f(bias, cd)).to(x.dtype)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None,
                     scale: Optional[float] = None) -> Tensor:
    """Softmax attention of q (B, HKV, R, D) over k, v (B, HKV, S, D) under key_mask (B, S) bool (True: the key takes
    part); scale defaults to D^-0.5. A row with no key taking part gives 0. Compute dtype, cast to q's dtype.
    NaN: a NaN in q, or in the K row of a key taking part, makes the row's scores, so its softmax and output, NaN; a
    NaN in element d of such a key's V row makes column d NaN. A masked key's K and V rows are not read (a cache's
    unwritten slots may hold anything): its V row is zeroed, else its weight 0 times a NaN there would be NaN."""
    cd = _compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.to(cd) @ k.to(cd).transpose(-1, -2)) * scale                        # (B, HKV, R, S)
    vc = v.to(cd)
    if key_mask is not None:
        s = s.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
        vc = vc.masked_fill(~key_mask.bool()[:, None, :, None], 0.0)
    p = torch.softmax(s, dim=-1)
    p = torch.where(torch.isinf(s).all(dim=-1, keepdim=True), torch.zeros_like(p), p)   # no key: 0, not NaN
    return (p @ vc).to(q.dtype)


def swiglu_mlp(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """Dense SwiGLU: down(silu(gate(x)) * up(x)). x: (T, H); w_gate, w_up: (F, H); w_down: (H, F)."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def silu_mul(gate_up: Tensor) -> Tensor:
    """SwiGLU activation of a fused (..., 2F) gate/up projection: silu(gate) * up, in the compute dtype, cast
    to gate_up's dtype."""
    cd = _compute_dtype(gate_up)
    g, u = gate_up.to(cd).chunk(2, dim=-1)
    return (F.silu(g) * u).to(gate_up.dtype)


def silu_mul_bwd(gate_up: Tensor, dout: Tensor) -> Tensor:
    """Gradient of silu_mul with respect to gate_up, the roundings of the forward passed straight through:
    (..., 2F) = [dout * u * s * (1 + g * (1 - s)), dout * g * s], s = sigmoid(g), in the compute dtype, cast to
    gate_up's dtype."""
    cd = _compute_dtype(gate_up, dout)
    g, u = gate_up.to(cd).chunk(2, dim=-1)
    d = dout.to(cd)
    s = torch.sigmoid(g)
    return torch.cat([d * u * s * (1 + g * (1 - s)), d * g * s], dim=-1).to(gate_up.dtype)


def moe_combine(y: Tensor, weights: Tensor, expert_ids: Tensor, sorted_slots: Tensor) -> Tensor:
    """out[t] = sum_j weights[t, j] * y[p] with sorted_slots[p] = t*TOPK + j (y: expert outputs in sorted
    order, (T*TOPK, H)), in the compute dtype, cast to y's dtype."""
    cd = _compute_dtype(y, weights)
    T, K = expert_ids.shape
    pos = torch.empty_like(sorted_slots, dtype=torch.long)
    pos[sorted_slots.long()] = torch.arange(sorted_slots.numel(), device=y.device)
    rows = y.to(cd)[pos].view(T, K, -1)
    return (rows * weights.to(cd).unsqueeze(-1)).sum(1).to(y.dtype)


def moe_experts(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    """Weighted sum of the routed experts' SwiGLU MLPs.

    x: (T, H); weights, expert_ids: (T, TOPK); w_gate_up: (E, 2F, H), gate rows first then up (the
    transformers 5.x fused layout); w_down: (E, H, F). Computes in x's dtype (float64 for the oracle):
    out[t] = sum_j weights[t,j] * down_e(silu(gate_e(x_t)) * up_e(x_t)),  e = expert_ids[t,j].
    """
    T, H = x.shape
    E, F2, _ = w_gate_up.shape
    Fd = F2 // 2
    out = torch.zeros(T, H, dtype=x.dtype, device=x.device)
    for e in range(E):
        tok, slot = torch.nonzero(expert_ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        y = swiglu_mlp(xe, w_gate_up[e, :Fd], w_gate_up[e, Fd:], w_down[e])
        out.index_add_(0, tok, y * weights[tok, slot].to(x.dtype)[:, None])
    return out


def moe_permute(expert_ids: Tensor, num_experts: int) -> Tuple[Tensor, Tensor]:
    """The permutation of moe_route / moe_permute. expert_ids: (T, TOPK). Slots s = t*TOPK + j are sorted by
    expert id, stably (token order inside an expert); ids outside [0, E) form a last bucket.
    Returns (expert_offsets (E+1,) int32: start of each expert's slots and of the bad bucket,
    sorted_slots (T*TOPK,) int32)."""
    ids = expert_ids.reshape(-1).long()
    key = torch.where((ids >= 0) & (ids < num_experts), ids, torch.full_like(ids, num_experts))
    sorted_slots = torch.sort(key, stable=True).indices
    counts = torch.bincount(key, minlength=num_experts + 1)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])[:num_experts + 1]
    return offsets.to(torch.int32), sorted_slots.to(torch.int32)


def moe_grad_rows(go: Tensor, weights: Tensor, sorted_slots: Tensor, y: Optional[Tensor] = None) -> Tuple[Tensor,
                                                                                                        Tensor]:
    """Per sorted position p (s = sorted_slots[p], t = s // TOPK): dys[p] = go[t] * weights[s] (the weight rounded to
    go's dtype) and, with y, dws[p] = sum_h go[t, h] y[p, h]; the compute dtype, dys cast to go's dtype, dws in the
    compute dtype (empty without y)."""
    cd = _compute_dtype(go)
    K = weights.shape[1]
    sl = sorted_slots.long()
    g = go.to(cd).index_select(0, torch.div(sl, K, rounding_mode="floor"))
    wr = weights.reshape(-1).index_select(0, sl).to(go.dtype).to(cd)
    dws = (g * y.to(cd)).sum(1) if y is not None else g.new_empty(0)
    return (g * wr[:, None]).to(go.dtype), dws


def moe_experts_dense(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    """moe_experts without data-dependent shapes (every expert runs on every token, masked by its combine
    weight): E times the work, but traceable by torch.compile / AOT autograd. The autograd formula of
    jamba.moe_experts differentiates this one. Same shapes as moe_experts."""
    E, F2, _ = w_gate_up.shape
    Fd = F2 // 2
    onehot = torch.nn.functional.one_hot(expert_ids.long().clamp(0, E - 1), E).to(x.dtype)   # (T, TOPK, E)
    cw = (onehot * weights.to(x.dtype).unsqueeze(-1)).sum(1)                                  # (T, E)
    out = torch.zeros_like(x)
    for e in range(E):
        y = swiglu_mlp(x, w_gate_up[e, :Fd], w_gate_up[e, Fd:], w_down[e])
        out = out + y * cw[:, e:e + 1]
    return out


# ---- language-model loss --------------------------------------------------------------------------------
def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tuple[Tensor, Tensor]:
    """Per-row cross entropy of logits (N, V) against target (N,): (loss, lse), lse = logsumexp over V, loss = lse -
    logits[n, target[n]], 0 where target == ignore_index; in the compute dtype (float64 stays float64, else fp32)."""
    cd = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(cd)
    lse = torch.logsumexp(x, dim=-1)
    ign = target == ignore_index
    t = torch.where(ign, torch.zeros_like(target), target).long()
    picked = x.gather(1, t[:, None])[:, 0]
    return torch.where(ign, torch.zeros_like(lse), lse - picked), lse


def cross_entropy_bwd(logits: Tensor, target: Tensor, lse: Tensor, dloss: Tensor, ignore_index: int = -100) -> Tensor:
    """Gradient of cross_entropy's loss: (softmax(logits) - onehot(target)) * dloss per row, 0 on the ignored rows,
    in the compute dtype, cast to logits' dtype (lse: cross_entropy's second output). A row whose lse is NaN (a NaN
    logit) or -inf (every logit -inf: a NaN loss) gets a NaN gradient everywhere, -inf logits included, as torch's;
    an ignored row gets 0 whatever its logits (the op does not read them; torch's is NaN there when they hold a
    NaN: 0 * NaN, which the former p * 0 here gave too, against this docstring)."""
    cd = torch.float64 if logits.dtype == torch.float64 else torch.float32
    ign = target == ignore_index
    t = torch.where(ign, torch.zeros_like(target), target).long()
    p = torch.exp(logits.to(cd) - lse.to(cd)[:, None])
    p = p - torch.nn.functional.one_hot(t, logits.shape[1]).to(cd)
    g = torch.where(ign[:, None], torch.zeros_like(p), p * dloss.to(cd)[:, None])
    return g.to(logits.dtype)


def sample_rows_kept(logits: Tensor, params: Tensor, seen: Optional[Tensor] = None,
                     counts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """float64 reference of ops.sample_rows but the draw: (greedy (R,) int64, the first argmax of the penalised
    logits; scores (R, V): the penalised logits / temperature (greedy rows: the penalised logits); kept (R, V) bool:
    the columns a sampled row may draw (greedy rows: its argmax)), with transformers' sort-based top_k, top_p
    (ascending cumulative probability <= 1 - top_p dropped, the most likely kept) and min_p, in that order.
    NaN: a NaN penalised logit counts as -inf (never the argmax, never drawn while a column is finite; torch.argmax
    would take it). A row whose penalised logits are all -inf / NaN: greedy 0 (the first column), and a sampled row
    keeps every column (tau -inf: the op draws column 0)."""
    x = logits.double()
    R, V = x.shape
    pr = params.double()
    rep, pres, freq = pr[:, 4:5], pr[:, 5:6], pr[:, 6:7]
    if seen is not None:
        x = torch.where(seen, torch.where(x < 0, x * rep, x / rep), x)
    if counts is not None:
        c = counts.double()
        x = x - freq * c - pres * (c > 0).double()
    x = torch.where(torch.isnan(x), float("-inf"), x)
    greedy = x.argmax(-1)
    temp = pr[:, 0]
    scores = torch.where((temp > 0)[:, None], x / torch.where(temp > 0, temp, 1.0)[:, None], x)
    kept = torch.zeros(R, V, dtype=torch.bool, device=x.device)
    for r in range(R):
        if not temp[r] > 0:
            kept[r, greedy[r]] = True
            continue
        s = scores[r]
        keep = torch.ones(V, dtype=torch.bool, device=x.device)
        if s.max() == float("-inf"):                          # every column -inf / NaN: nothing to filter
            kept[r] = keep
            continue
        k = int(pr[r, 1])
        if 1 <= k < V:
            keep &= s >= torch.topk(s, k).values[-1]
        if pr[r, 2] < 1:
            masked = torch.where(keep, s, float("-inf"))
            srt, idx = torch.sort(masked)
            drop = torch.softmax(srt, -1).cumsum(-1) <= 1 - pr[r, 2]
            drop[-1] = False
            keep &= ~drop.scatter(0, idx, drop)
        if pr[r, 3] > 0:
            p = torch.softmax(torch.where(keep, s, float("-inf")), -1)
            keep &= p >= pr[r, 3] * p.max()
        kept[r] = keep
    return greedy, scores, kept


def sample_rows_disagreements(params: Tensor, tokens: Tensor, tau: Tensor, greedy: Tensor, scores: Tensor,
                              kept: Tensor) -> list:
    """Where ops.sample_rows' (tokens, tau) disagree with sample_rows_kept's (greedy, scores, kept): a list of
    (row, what) ([] when they agree). Greedy rows: the token must be the reference's argmax, tau its logit (within
    1e-6). Sampled rows: the columns with score >= tau must be the kept ones and the token one of them, but at the
    boundary -- within 2 fp32 ulps of tau or of the reference's smallest kept score -- where rounding, or a tie
    (bf16 logits tie often), may fall either way (transformers' sort drops part of a tied group at the top_p
    boundary, the kernel keeps or drops it whole)."""
    out = []
    tokens, tau = tokens.cpu(), tau.cpu().double()
    for r in range(params.shape[0]):
        s = scores[r]
        if not params[r, 0] > 0:
            if tokens[r] != greedy[r] or abs(float(tau[r]) - float(s[greedy[r]])) > 1e-6 * max(1.0, abs(float(tau[r]))):
                out.append((r, f"greedy: token {int(tokens[r])} tau {float(tau[r])}, want {int(greedy[r])}"))
            continue
        ulp2 = 2.5e-7 * s.abs().clamp_min(1)
        near = ((s - tau[r]).abs() <= ulp2) | ((s - s[kept[r]].min()).abs() <= ulp2)
        mine = s >= tau[r] - 2.5e-7 * max(1.0, abs(float(tau[r])))
        if not torch.equal(mine[~near], kept[r][~near]):
            out.append((r, f"kept {int(mine.sum())} columns, the reference {int(kept[r].sum())}"))
        elif not (kept[r, tokens[r]] or near[tokens[r]]):
            out.append((r, f"token {int(tokens[r])} is not kept"))
    return out


def dequant_fp8(q: Tensor, scale: Tensor) -> Tensor:
    """w = e4m3(q) * scale[..., None] in float64 (q: torch.float8_e4m3fn; every e4m3 value is exact in float64)."""
    return q.to(torch.float64) * scale.to(torch.float64).unsqueeze(-1)


def moe_experts_fp8(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, s_gate_up: Tensor,
                    w_down: Tensor, s_down: Tensor) -> Tensor:
    """moe_experts with the dequantized fp8 weights, in float64."""
    return moe_experts(x.to(torch.float64), weights, expert_ids, dequant_fp8(w_gate_up, s_gate_up),
                       dequant_fp8(w_down, s_down))


def quantize_rows_fp8(x: Tensor, amax: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Per-row e4m3 quantization of activations (moe_experts_fp8 with act_fp8; the CUDA kernel's exact bits): over
    the last dim, amax = max |x| (fp32), scale = amax / 448 and q = e4m3(round_f32(x * round_f32(448 / amax))) with
    saturation (round to nearest even); a zero row gets scale 1 and q 0. Returns (q float8_e4m3fn, scale f32).
    amax (x's leading shape, f32): used instead of the rows' maxima (tests: a neighbouring maximum)."""
    xf = x.to(torch.float32)
    if amax is None:
        amax = xf.abs().amax(-1)
    pos = amax > 0
    one = torch.ones_like(amax)
    inv = torch.where(pos, torch.full_like(amax, 448.0) / torch.where(pos, amax, one), one)
    scale = torch.where(pos, amax / 448.0, one)
    q = (xf * inv.unsqueeze(-1)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, scale


def moe_experts_fp8_w8a8(x: Tensor, weights: Tensor, expert_ids: Tensor, w_gate_up: Tensor, s_gate_up: Tensor,
                         w_down: Tensor, s_down: Tensor, act_amax_ulps: int = 0, per_slot: bool = False) -> Tensor:
    """moe_experts_fp8 with fp8 activations (W8A8, csrc/jamba.h JAMBA_FP8_API): x quantized per row
    (quantize_rows_fp8), act = round(round(silu(round(g))) * round(u)) in x's dtype from the float64 sums of the
    dequantized operands, act quantized per row, the down sums in float64; out in float64 (the expert outputs times
    the routing weights, summed without rounding). act_amax_ulps: each act row quantized as if its largest |value|
    were that many units of x's dtype away (tests: where the op's fp32 sums round the row maximum differently, the
    whole act row is quantized with the neighbouring scale). per_slot: the weighted expert outputs (T, TOPK, H) instead
    of their sum."""
    T, H = x.shape
    E, F2, _ = w_gate_up.shape
    Fd = F2 // 2
    qx, sx = quantize_rows_fp8(x)
    xq = qx.to(torch.float64) * sx.to(torch.float64)[:, None]
    wgu, wd = dequant_fp8(w_gate_up, s_gate_up), dequant_fp8(w_down, s_down)
    dt = x.dtype

    def r(v):
        return v.to(dt).to(torch.float64)

    out = torch.zeros(T, expert_ids.shape[1], H, dtype=torch.float64, device=x.device)
    for e in range(E):
        tok, slot = torch.nonzero(expert_ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        g, u = xq[tok] @ wgu[e, :Fd].T, xq[tok] @ wgu[e, Fd:].T
        gr = r(g)
        act = (r(gr * torch.sigmoid(gr)) * r(u)).to(dt)
        amax = None
        if act_amax_ulps:
            ib = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}[dt]
            m = act.abs().amax(-1)  # >= 0: its bits step monotonically
            amax = torch.where(m > 0, (m.view(ib) + act_amax_ulps).view(dt), m).to(torch.float32)
        qa, sa = quantize_rows_fp8(act, amax)
        y = (qa.to(torch.float64) * sa.to(torch.float64)[:, None]) @ wd[e].T
        out[tok, slot] = y * weights[tok, slot].to(torch.float64)[:, None]
    return out if per_slot else out.sum(1)
