"""Where does a forward at a prompt length not run before lose its time? (H200; bench_model's one-block Jamba-v0.1,
bf16.) bench_model's prefill_new_length_ms reads ~1.4-1.5x the steady prefill (e.g. 140 vs 97 ms for the whole
model at batch 1 x 2048). This times forwards (wall clock, synchronised) at a sequence of lengths, some new and
some repeated, with the caching allocator's device-allocation count beside each, and profiles one new-length
forward and one repeat with torch.profiler (top ops by self CPU time and by self CUDA time).
    python3 dev/new_length_probe.py [--batch B] [--prompt L]"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_model  # noqa: E402
from jamba_ext import modeling_jamba as mj  # noqa: E402


def allocs():
    s = torch.cuda.memory_stats()
    return s.get("num_device_alloc", -1), s.get("reserved_bytes.all.current", 0)


def timed(model, ids):
    torch.cuda.synchronize()
    a0, r0 = allocs()
    t0 = time.perf_counter()
    with torch.no_grad():
        model(ids, logits_to_keep=1)
    torch.cuda.synchronize()
    a1, r1 = allocs()
    return (time.perf_counter() - t0) * 1e3, a1 - a0, (r1 - r0) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=2048)
    args = ap.parse_args()
    dev = torch.device("cuda")
    model = mj.JambaForCausalLM.from_config(mj.JambaConfig(**bench_model.ONE_BLOCK), dtype=torch.bfloat16,
                                            device=dev, seed=0)
    B, L = args.batch, args.prompt
    ids = torch.randint(3, model.config.vocab_size, (B, L), device=dev)
    print(f"batch {B}, prompt {L}: wall ms of one forward (logits_to_keep=1), device allocations, reserved MiB delta")
    seq = [L, L, L, L - 1, L - 2, L - 1, L - 3, L - 3, L - 64, L - 65, L, L - 4]
    seen = set()
    for n in seq:
        ms, na, dr = timed(model, ids[:, :n])
        print(f"  L={n:6d} {'new ' if n not in seen else 'seen'}  {ms:8.2f} ms  allocs {na:3d}  reserved {dr:+8.1f} MiB",
              flush=True)
        seen.add(n)
    from torch.profiler import ProfilerActivity, profile
    for tag, n in (("new length", L - 7), ("repeat", L - 7)):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            with torch.no_grad():
                model(ids[:, :n], logits_to_keep=1)
            torch.cuda.synchronize()
        ka = prof.key_averages()
        print(f"\n== profile, {tag} (L={n}): top by self CPU time")
        print(ka.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
        print(f"== profile, {tag} (L={n}): top by self CUDA time")
        print(ka.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
