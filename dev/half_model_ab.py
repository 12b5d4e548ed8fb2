"""Half tiles in the model (H200, bench_model's one-block Jamba-v0.1, bf16): one prefill forward (logits_to_keep=1)
timed in turns (common.time_interleaved) with the MoE's half tiles at their default (on from 384 slots per expert,
i.e. from 3072 tokens) and off (JAMBA_EXT_WGMMA_HALF=0, read per call), and a second default row as the noise
reference of identical code. bench_moe's full rounds read its "nohalf" row 2-4% faster at 4096-16384 tokens while
the dedicated A/B of session 43 (half_ab_759e759.log) read half tiles 1-5% faster: this asks the model.
    python3 dev/half_model_ab.py [--shapes 8x2048,1x8192,2x2048,1x2048] [--rounds 8]"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_model  # noqa: E402
import common  # noqa: E402
from jamba_ext import modeling_jamba as mj  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="8x2048,1x8192,2x2048,1x2048", help="batch x prompt length, comma-separated")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    dev = torch.device("cuda")
    model = mj.JambaForCausalLM.from_config(mj.JambaConfig(**bench_model.ONE_BLOCK), dtype=torch.bfloat16,
                                            device=dev, seed=0)
    envs = {"default": {}, "default again": {}, "nohalf": {"JAMBA_EXT_WGMMA_HALF": "0"}}
    for shape in args.shapes.split(","):
        B, L = (int(v) for v in shape.split("x"))
        ids = torch.randint(3, model.config.vocab_size, (B, L), device=dev)
        outs = {}

        def run(name):
            def fn():
                with common.env(**envs[name]), torch.no_grad():
                    outs[name] = model(ids, logits_to_keep=1).logits
            return fn

        t = common.time_interleaved({n: run(n) for n in envs}, dev, rounds=args.rounds, reps=2, warmup=1,
                                    seed=B * 100003 + L)
        same = all(torch.equal(outs[n], outs["default"]) for n in envs)
        print(f"batch {B} prompt {L} ({B * L} MoE tokens, {B * L * 2 // 16} slots per expert): " + " | ".join(
            f"{n} {t[n]['median_ms']:7.2f} ms [{t[n]['p10_ms']:.2f}-{t[n]['p90_ms']:.2f}]" for n in envs)
            + f" | nohalf / default {t['nohalf']['median_ms'] / t['default']['median_ms']:.3f}"
            + f" | logits identical: {same}", flush=True)


if __name__ == "__main__":
    main()
