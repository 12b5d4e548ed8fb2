"""The launch that dev/ncu_sample_rows.sh profiles (session 53): jamba.sample_rows on B rows of V = 65536 bf16 logits
(randn x 3, as dev/sample_rows_probe.py), every row with one setting; a warm-up call, then the profiled one.

    python dev/ncu_sample_rows.py B SETTING      (SETTING: top_p, top_k, temp, greedy)
"""
import sys

import torch

from jamba_ext import ops

SETTINGS = {  # (temperature, top_k, top_p, min_p, repetition, presence, frequency)
    "greedy": [0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0],
    "temp": [0.8, 0, 1.0, 0.0, 1.0, 0.0, 0.0],
    "top_k": [0.8, 50, 1.0, 0.0, 1.0, 0.0, 0.0],
    "top_p": [0.8, 0, 0.95, 0.0, 1.0, 0.0, 0.0],
}


def main() -> int:
    B, name = int(sys.argv[1]), sys.argv[2]
    dev, V = torch.device("cuda"), 65536
    g = torch.Generator().manual_seed(B)
    logits = (torch.randn(B, V, generator=g) * 3).to(dev, torch.bfloat16)
    P = torch.tensor([SETTINGS[name]] * B, device=dev)
    for _ in range(2):
        tok, _tau = ops.sample_rows(logits, P, None, None, 1, 0)
    torch.cuda.synchronize()
    print("tokens", tok[:4].tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
