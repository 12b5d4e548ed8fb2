"""A/B of the Mamba prefill's layout (H200, bench_model's one-block Jamba-v0.1, bf16): one forward
(logits_to_keep=1) timed in turns (common.time_interleaved) under three variants:
  default  in_proj / dt_proj products written in place and the time axis padded to a multiple of 8 (PREFILL_PAD_STEPS)
  nopad    the same without the padding (PREFILL_PAD_STEPS = 1)
  matmul   no padding and the products through torch.matmul (its transposed product and copy: the code before)
at aligned and unaligned prompt lengths.
    python3 dev/prefill_ab.py [--batches 1,8] [--lengths 2048,2041]"""
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
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--lengths", default="2048,2041")
    args = ap.parse_args()
    dev = torch.device("cuda")
    model = mj.JambaForCausalLM.from_config(mj.JambaConfig(**bench_model.ONE_BLOCK), dtype=torch.bfloat16,
                                            device=dev, seed=0)
    proj_t = mj._proj_t

    def variant(name):
        mj.PREFILL_PAD_STEPS = 8 if name == "default" else 1
        mj._proj_t = proj_t if name != "matmul" else (lambda w, x: torch.matmul(w, x))

    for B in (int(b) for b in args.batches.split(",")):
        for L in (int(n) for n in args.lengths.split(",")):
            ids = torch.randint(3, model.config.vocab_size, (B, L), device=dev)
            outs = {}

            def run(name):
                def fn():
                    variant(name)
                    with torch.no_grad():
                        outs[name] = model(ids, logits_to_keep=1).logits
                return fn
            names = ("default", "nopad", "matmul")
            t = common.time_interleaved({n: run(n) for n in names}, dev, rounds=6, reps=2, warmup=1)
            ref = outs["matmul"].float()
            errs = {n: ((outs[n].float() - ref).norm() / ref.norm()).item() for n in names}
            print(f"batch {B} prompt {L}: " + " | ".join(
                f"{n} {t[n]['median_ms']:7.2f} ms ({B * L / t[n]['median_ms']:6.0f} tok/ms, logits vs matmul "
                f"{errs[n]:.1e})" for n in names), flush=True)
    variant("default")


if __name__ == "__main__":
    main()
