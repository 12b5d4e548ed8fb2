"""A/B of the CUDA-graph decode step (H200): the one-block Jamba-v0.1 of bench_model, batch 1 after a 2048-token
prompt; the static decode step captured twice, the two graphs' replays timed in turns (CUDA events around REPS
replays, ROUNDS rounds), then each graph's kernel totals per step.
    python3 dev/gemv_decode_ab.py                 # GEMV_MAX_ROWS 0 (F.linear) against 1 (jamba.gemv)
    python3 dev/gemv_decode_ab.py --env NAME      # env NAME=0 against NAME=1 at capture (a run-time kernel switch
                                                  # read at launch, e.g. JAMBA_EXT_GEMV_PREFETCH)
    python3 dev/gemv_decode_ab.py --env NAME --values default,vec1,ring [--batch B] [--prompt L]
                                                  # any values ("default": NAME unset), any number of graphs
    python3 dev/gemv_decode_ab.py --unfuse        # 0: projection weights apart (separate products), 1: laid out
                                                  # back to back (fuse_projections, the default layout)"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_model  # noqa: E402
from jamba_ext import modeling_jamba as mj  # noqa: E402

REPS, ROUNDS, PROMPT = 200, 6, 2048


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default=None, help="compare env NAME=0 and NAME=1 instead of GEMV_MAX_ROWS 0 / 1")
    ap.add_argument("--unfuse", action="store_true", help="compare separate projection weights (0) with the joint "
                    "layout (1)")
    ap.add_argument("--values", default="0,1", help="with --env: the comma list of values (default: unset)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=PROMPT, help="prompt length (2048)")
    args = ap.parse_args()
    values = args.values.split(",") if args.env else [1, 0] if args.unfuse else [0, 1]
    label = (lambda v: f"{args.env}={v}") if args.env else (lambda v: f"joint projections={v}") if args.unfuse \
        else (lambda v: f"GEMV_MAX_ROWS={v}")
    dev = torch.device("cuda")
    rows_default = mj.GEMV_MAX_ROWS
    model = mj.JambaForCausalLM.from_config(mj.JambaConfig(**bench_model.ONE_BLOCK), dtype=torch.bfloat16,
                                            device=dev, seed=0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt), device=dev)
    max_length = args.prompt + len(values) * (REPS * ROUNDS + 8) + 64     # every graph's replays advance it
    cache = mj.JambaHybridCache(model.config, args.batch, max_length=max_length, static=True)
    with torch.no_grad():
        logits = model(ids, cache=cache, logits_to_keep=1).logits[:, -1]
        graphs = {}
        keep = []                                          # the joint buffers stay alive for graph 1
        for rows in values:
            if args.unfuse and rows == 0:
                for m in model.modules():
                    if isinstance(m, (mj.JambaMLP, mj.JambaAttention)):
                        for lin in m.children():
                            keep.append(lin.weight)
                            lin.weight = torch.nn.Parameter(lin.weight.detach().clone())
            elif args.env:
                os.environ.pop(args.env, None)
                if rows != "default":
                    os.environ[args.env] = rows
            elif not args.unfuse:
                mj.GEMV_MAX_ROWS = rows
            graphs[rows] = mj._DecodeGraph.capture(model, cache, logits.argmax(-1))
            assert graphs[rows] is not None, model._decode_graph_info
        mj.GEMV_MAX_ROWS = rows_default
        if args.env:
            os.environ.pop(args.env, None)
        times = {v: [] for v in values}
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
        print(f"-- {label(rows)}: kernels per step, us (sum {sum(tot.values()):.1f})")
        for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:14]:
            print(f"   {v:8.1f}  {k}")
    for rows, ts in times.items():
        ts.sort()
        med = ts[len(ts) // 2]
        what = "" if args.env or args.unfuse else f" ({'jamba.gemv' if rows else 'F.linear'})"
        print(f"{label(rows)}{what}: decode step {med:7.1f} us "
              f"(min {ts[0]:.1f}, max {ts[-1]:.1f}) = {1e6 / med:6.1f} tok/s")


if __name__ == "__main__":
    main()
