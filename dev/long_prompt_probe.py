"""Long prompts on one GPU: generate() with the chunked prefill (the default) against one forward (prefill_chunk=0),
on the whole Jamba-v0.1 (bench_model's config, --layers 32: 103 GB of bf16 weights, random) or fewer layers.
For each prompt length: wall time of generate(max_new_tokens=2) (the prefill and one step), peak GPU memory over
the weights, or the out-of-memory error; at the first length also the last-position logits of a chunked and of a
one-forward prefill through a cache, compared (bf16).
    python3 dev/long_prompt_probe.py [--layers 32] [--lengths 32768,131072,262144]"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_model  # noqa: E402
from jamba_ext import modeling_jamba as mj  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--lengths", default="32768,131072,262144")
    args = ap.parse_args()
    dev = torch.device("cuda")
    cfg = mj.JambaConfig(**dict(bench_model.ONE_BLOCK, num_hidden_layers=args.layers))
    t0 = time.perf_counter()
    model = mj.JambaForCausalLM.from_config(cfg, dtype=torch.bfloat16, device=dev, seed=0)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated() / 2**30
    print(f"{args.layers} layers built in {time.perf_counter() - t0:.0f} s: {base:.1f} GiB of weights; "
          f"GPU {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB; "
          f"chunk {mj.PREFILL_CHUNK_TOKENS} tokens", flush=True)
    lengths = [int(n) for n in args.lengths.split(",")]
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.inference_mode():
        L = lengths[0]
        ids = torch.randint(3, cfg.vocab_size, (1, L), device=dev, generator=g)
        C = mj.PREFILL_CHUNK_TOKENS
        cache = mj.JambaHybridCache(cfg, 1, max_length=L)
        for s in range(0, L, C):
            chunked = model(ids[:, s:s + C], cache=cache, logits_to_keep=1).logits[:, -1].float()
        del cache
        one = model(ids, cache=mj.JambaHybridCache(cfg, 1, max_length=L), logits_to_keep=1).logits[:, -1].float()
        err = ((chunked - one).norm() / one.norm()).item()
        print(f"L={L}: last-position logits, chunked prefill vs one forward: relative error {err:.2e}, "
              f"argmax equal {bool(chunked.argmax() == one.argmax())}", flush=True)
        for L in lengths:
            ids = torch.randint(3, cfg.vocab_size, (1, L), device=dev, generator=g)
            for chunk in (None, 0):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                try:
                    model.generate(ids, max_new_tokens=2, eos_token_id=None, prefill_chunk=chunk)
                    torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                    peak = torch.cuda.max_memory_allocated() / 2**30 - base
                    how = f"{dt:6.2f} s ({L / dt:7.0f} tok/s), peak {peak:5.1f} GiB over the weights"
                except torch.OutOfMemoryError as e:
                    how = f"out of memory ({str(e).splitlines()[0][:120]})"
                print(f"L={L:7d} prefill_chunk={'default' if chunk is None else chunk}: {how}", flush=True)


if __name__ == "__main__":
    main()
