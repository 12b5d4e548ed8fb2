"""A/B of jamba.gemv in the CUDA-graph decode step (H200): the one-block Jamba-v0.1 of bench_model, batch 1 after a
2048-token prompt; the static decode step captured twice (GEMV_MAX_ROWS 0: F.linear; 1: jamba.gemv), the two graphs'
replays timed in turns (CUDA events around REPS replays, ROUNDS rounds). Usage: python3 dev/gemv_decode_ab.py"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_model  # noqa: E402
from jamba_ext import modeling_jamba as mj  # noqa: E402

REPS, ROUNDS, PROMPT = 200, 6, 2048


def main():
    dev = torch.device("cuda")
    model = mj.JambaForCausalLM.from_config(mj.JambaConfig(**bench_model.ONE_BLOCK), dtype=torch.bfloat16,
                                            device=dev, seed=0)
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), device=dev)
    cache = mj.JambaHybridCache(model.config, 1, max_length=PROMPT + 2 * REPS * ROUNDS + 64, static=True)
    with torch.no_grad():
        logits = model(ids, cache=cache, logits_to_keep=1).logits[:, -1]
        graphs = {}
        for rows in (0, 1):
            mj.GEMV_MAX_ROWS = rows
            graphs[rows] = mj._DecodeGraph.capture(model, cache, logits.argmax(-1))
            assert graphs[rows] is not None, model._decode_graph_info
        mj.GEMV_MAX_ROWS = 1
        times = {0: [], 1: []}
        for _ in range(ROUNDS):
            for rows, g in graphs.items():
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(REPS):
                    g.graph.replay()
                b.record()
                torch.cuda.synchronize()
                times[rows].append(a.elapsed_time(b) * 1e3 / REPS)
    from torch.profiler import ProfilerActivity, profile
    for rows, g in graphs.items():                     # where the step's time goes (kernel totals per step)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                g.graph.replay()
            torch.cuda.synchronize()
        tot = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                k = e.name[:70]
                tot[k] = tot.get(k, 0.0) + e.device_time_total / 5
        print(f"-- GEMV_MAX_ROWS={rows}: kernels per step, us (sum {sum(tot.values()):.1f})")
        for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:14]:
            print(f"   {v:8.1f}  {k}")
    for rows, ts in times.items():
        ts.sort()
        med = ts[len(ts) // 2]
        print(f"GEMV_MAX_ROWS={rows} ({'jamba.gemv' if rows else 'F.linear'}): decode step {med:7.1f} us "
              f"(min {ts[0]:.1f}, max {ts[-1]:.1f}) = {1e6 / med:6.1f} tok/s")


if __name__ == "__main__":
    main()
