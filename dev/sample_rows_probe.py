"""Where jamba.sample_rows spends its time on the GPU (session 51 probe): each setting alone, timed as CUDA-graph
replays (10 calls a graph, the median of 20 replays, after 0.3 s of matmuls to bring the clocks up), so that host
launch costs stay out. bench_sampling at 0fca187 gave ~400 us a pick for top_p 0.95 rows (V = 65536) and ~45 us for
greedy rows, whose timing is host-bound. Two columns a setting: "default" (on sm_90+ at this V the cluster kernel, a
row on a cluster of 8 CTAs) and "one-block" (JAMBA_EXT_SAMPLE_ROWS_CLUSTER=0 at capture: a row on one block), with
their ratio; before the timings, both kernels' tokens and tau are compared (the same bits expected). Session 52:
also each cluster size forced (JAMBA_EXT_SAMPLE_ROWS_CLUSTER=8 / 4 / 2), at B = 1, 16 and 64.

    python dev/sample_rows_probe.py [--peaky]

--peaky (session 53): logits like a trained model's, a few columns far above the rest (randn x 2, 8 columns a row at
+24..+30), where the draw skips the Philox of nearly every column (sr_draw_floor); the default and one-block columns
only.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from common import env, graph_us  # noqa: E402

from jamba_ext import ops  # noqa: E402


def main() -> int:
    dev, V = torch.device("cuda"), 65536
    peaky = "--peaky" in sys.argv[1:]
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(40):                                  # (~0.3 s of work: the clocks up)
        x @ x
    torch.cuda.synchronize()
    settings = {
        "greedy": [0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0],
        "temperature 0.8 (every column kept)": [0.8, 0, 1.0, 0.0, 1.0, 0.0, 0.0],
        "top_k 50": [0.8, 50, 1.0, 0.0, 1.0, 0.0, 0.0],
        "top_p 0.95": [0.8, 0, 0.95, 0.0, 1.0, 0.0, 0.0],
        "min_p 0.05": [0.8, 0, 1.0, 0.05, 1.0, 0.0, 0.0],
        "top_k 50 + top_p 0.95 + min_p 0.05": [0.8, 50, 0.95, 0.05, 1.0, 0.0, 0.0],
        "repetition + presence + frequency, greedy": [0.0, 0, 1.0, 0.0, 1.2, 0.5, 0.3],
    }
    sizes = {"default": None, "one-block": "0", "cluster 8": "8", "cluster 4": "4", "cluster 2": "2"}
    if peaky:
        sizes = {"default": None, "one-block": "0"}
    for B in (1, 16, 64):
        g = torch.Generator().manual_seed(B)
        logits = torch.randn(B, V, generator=g) * (2 if peaky else 3)
        if peaky:
            logits.scatter_(1, torch.randint(0, V, (B, 8), generator=g), 24 + 6 * torch.rand(B, 8, generator=g))
        logits = logits.to(dev, torch.bfloat16)
        seen = (torch.rand(B, V, generator=g) < 0.01).to(dev)
        counts = (torch.rand(B, V, generator=g) < 0.002).int().to(dev)
        head = f"--- B = {B}, V = {V}, bf16{', peaky' if peaky else ''} (us)"
        print(f"{head:48s}" + "".join(f"{k:>11s}" for k in sizes) + "  one-block / default", flush=True)
        print(f"{'torch argmax':48s} {graph_us(lambda: logits.argmax(-1)):10.1f}", flush=True)
        for name, p in settings.items():
            if B == 64 and name not in ("greedy", "top_k 50", "top_p 0.95", "top_k 50 + top_p 0.95 + min_p 0.05"):
                continue
            P = torch.tensor([p] * B, device=dev)
            pen = "penalt" in name
            pick = lambda: ops.sample_rows(logits, P, seen if pen else None, counts if pen else None, 1, 0)  # noqa
            us, same = {}, True
            with env(JAMBA_EXT_SAMPLE_ROWS_CLUSTER="0"):    # (read at each call: at capture for the graph)
                ref = pick()
            for k, e in sizes.items():
                with env(JAMBA_EXT_SAMPLE_ROWS_CLUSTER=e):
                    got = pick()
                    same = same and torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
                    us[k] = graph_us(pick)
            print(f"{'sample_rows ' + name:48s}" + "".join(f"{v:11.1f}" for v in us.values()) +
                  f"  {us['one-block'] / us['default']:6.2f}x{'' if same else '  DIFFERENT TOKENS / TAU'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
