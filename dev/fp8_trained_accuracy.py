"""fp8 expert weights on trained weights (CPU, no download): how much do the e4m3 experts move a trained model?

Jamba-v0.1's checkpoint is out of reach here (no network on the GPU machine), and the random-weight checks of
bench_model / tests/test_fp8_model.py say little about trained weights, whose rows have structure (outliers, uneven
row norms) that a per-row scale must absorb. So: train the built-in model (`jamba-ext train`, every weight, fp32 on
the CPU) on one text, then score a held-out text with the trained model as it is and with its experts in fp8
(`quantize_experts("fp8")`), in fp32 and bf16. Printed: the held-out loss (nats per byte) and perplexity, the logits'
norm-wise relative difference from the fp32 unquantized model, and how often the top-1 prediction agrees with it.
The "fp8 experts + act" rows add fp8 activations (quantize_experts("fp8", act_fp8=True)), which only Hopper GPUs run:
here ops.moe_experts_fp8 is replaced, for those rows, by reference.moe_experts_fp8_w8a8 (x and act quantized per row
exactly as the CUDA kernels do; the sums in float64 instead of the tensor cores' fp32), i.e. the numerics of the W8A8
path up to its summation order.
Usage: python3 dev/fp8_trained_accuracy.py [--steps N] [--train FILE] [--eval FILE] [--seed S]
(defaults: 600 steps of 4 x 256 bytes of docs/PERF_NOTES.md, scored on README.md; ~3 min on 2 cores)."""
import argparse
import copy
import os
import sys
import tempfile

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from jamba_ext import ops, reference  # noqa: E402
from jamba_ext.__main__ import main as cli  # noqa: E402
from jamba_ext.modeling_jamba import JambaForCausalLM  # noqa: E402
from jamba_ext.tokenizer import ByteTokenizer  # noqa: E402


def score(model, ids, window):
    """(mean next-token loss, logits (N, V) fp32) over non-overlapping windows of ids"""
    losses, logits = [], []
    with torch.no_grad():
        for s in range(0, ids.numel() - 1, window):
            chunk = ids[s:s + window + 1]
            if chunk.numel() < 2:
                break
            out = model(chunk[None, :-1]).logits[0].float()
            losses.append(torch.nn.functional.cross_entropy(out, chunk[1:], reduction="sum"))
            logits.append(out)
    lg = torch.cat(logits)
    return float(torch.stack(losses).sum()) / lg.shape[0], lg


def w8a8_emulated(orig):
    """ops.moe_experts_fp8 with act_fp8 computed by the W8A8 oracle (any device), else orig"""
    def run(x, weights, expert_ids, w_gate_up, s_gate_up, w_down, s_down, sorted_slots=None, expert_offsets=None,
            act_fp8=False):
        if not act_fp8:
            return orig(x, weights, expert_ids, w_gate_up, s_gate_up, w_down, s_down, sorted_slots, expert_offsets)
        w = weights.to(x.dtype).double()  # the routing weight rounded to the model dtype, as the op does
        return reference.moe_experts_fp8_w8a8(x, w, expert_ids.long(), w_gate_up, s_gate_up, w_down,
                                              s_down).to(x.dtype)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--train", default=os.path.join(ROOT, "docs", "PERF_NOTES.md"))
    ap.add_argument("--eval", default=os.path.join(ROOT, "README.md"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=512)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    with tempfile.TemporaryDirectory() as d:
        rc = cli(["train", "--text-file", a.train, "--steps", str(a.steps), "--seq-len", "256", "--batch", "4",
                  "--device", "cpu", "--seed", str(a.seed), "--log-every", str(max(1, a.steps // 6)), "--save", d])
        if rc != 0:
            raise SystemExit(f"training failed (exit {rc})")
        base = JambaForCausalLM.from_pretrained(d, dtype=torch.float32, device="cpu").eval()
    with open(a.eval, encoding="utf-8") as f:
        ids = torch.tensor(ByteTokenizer().encode(f.read(), add_bos=False), dtype=torch.long)
    print(f"trained {a.steps} steps on {os.path.basename(a.train)}; scoring {ids.numel()} bytes of "
          f"{os.path.basename(a.eval)} in windows of {a.window}", flush=True)
    ref_loss, ref = score(base, ids, a.window)
    top1 = ref.argmax(-1)
    print(f"{'model':<24} {'loss (nats/byte)':>17} {'perplexity':>11} {'logits vs fp32':>15} {'top-1 agrees':>13}")
    ops.moe_experts_fp8 = w8a8_emulated(ops.moe_experts_fp8)
    for name, dt, fp8 in (("fp32", torch.float32, False), ("fp32, fp8 experts", torch.float32, True),
                          ("fp32, fp8 experts + act", torch.float32, "act"),
                          ("bf16", torch.bfloat16, False), ("bf16, fp8 experts", torch.bfloat16, True),
                          ("bf16, fp8 experts + act", torch.bfloat16, "act")):
        m = copy.deepcopy(base).to(dt)
        if fp8:
            m.quantize_experts("fp8", act_fp8=fp8 == "act")
        loss, lg = (ref_loss, ref) if (dt == torch.float32 and not fp8) else score(m, ids, a.window)
        rel = float((lg - ref).norm() / ref.norm())
        agree = float((lg.argmax(-1) == top1).float().mean())
        print(f"{name:<24} {loss:17.4f} {torch.exp(torch.tensor(loss)).item():11.3f} {100 * rel:14.2f}% "
              f"{100 * agree:12.1f}%", flush=True)


if __name__ == "__main__":
    main()
