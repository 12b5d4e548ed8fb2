"""Why is the captured decode step slower at 8K prompts than at 2K (bench_model: 579 against 529 tok/s at batch 1,
1539 against 1448 at batch 8, 519cb9a), when the bytes it must read differ by ~6 us (batch 1) / ~50 us (batch 8)?

One-block Jamba-v0.1 (random weights, bf16). For each (batch, prompt): prefill into a static cache, capture the
decode step (the model's own _DecodeGraph), time N replays with CUDA events (the replay alone: no argmax, no host
copy), then profile M replays and print the device time per step by kernel name. The last table is the per-kernel
difference between the longest and the shortest prompt at each batch.
Run with JAMBA_EXT_PDL=0 for the per-kernel tables (with PDL the profiler counts a kernel's wait as its time);
the replay timing is printed for whatever PDL setting is in effect.

    python3 dev/decode_ctx_probe.py [--prompts 2048,8192] [--batches 1,8] [--steps 64]
"""
import argparse
import os
import sys
from collections import defaultdict

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
from jamba_ext.modeling_jamba import JambaHybridCache, _DecodeGraph  # noqa: E402
from profile_decode import build_model  # noqa: E402


def short(name, n=60):
    return name if len(name) <= n else name[:n - 3] + "..."


def one(model, cfg, B, L, steps, dev):
    ids = torch.randint(0, cfg.vocab_size, (B, L), device=dev)
    cache = JambaHybridCache(cfg, B, max_length=L + 3 * steps + 8, static=True)
    with torch.no_grad():
        logits = model(ids, cache=cache, logits_to_keep=1).logits[:, -1]
        g = _DecodeGraph.capture(model, cache, logits.argmax(dim=-1))
        assert g is not None, model._decode_graph_info
        tok = logits.argmax(dim=-1)
        for _ in range(3):
            g.step(tok)
        torch.cuda.synchronize(dev)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(steps):
            g.step(tok)
        e1.record()
        torch.cuda.synchronize(dev)
        us = e0.elapsed_time(e1) * 1e3 / steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                g.step(tok)
            torch.cuda.synchronize(dev)
    per = defaultdict(float)
    cnt = defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] += ev.device_time_total / steps if hasattr(ev, "device_time_total") else ev.cuda_time_total / steps
            cnt[ev.name] += 1
    return us, per, {k: v / steps for k, v in cnt.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="2048,8192")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    dev = torch.device("cuda")
    model, cfg = build_model(dev, torch.bfloat16)
    prompts = [int(x) for x in a.prompts.split(",")]
    print(f"PDL {'off' if os.environ.get('JAMBA_EXT_PDL') == '0' else 'on'}; {a.steps} replays each")
    for B in [int(x) for x in a.batches.split(",")]:
        res = {}
        for L in prompts:
            us, per, cnt = one(model, cfg, B, L, a.steps, dev)
            res[L] = per
            tot = sum(per.values())
            print(f"\nB={B} L={L}: replay {us:8.1f} us a step (events); profiled kernels sum {tot:8.1f} us a step")
            for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:14]:
                print(f"   {v:8.1f} us  x{cnt[k]:4.1f}  {short(k)}")
            torch.cuda.empty_cache()
        lo, hi = prompts[0], prompts[-1]
        names = set(res[lo]) | set(res[hi])
        diff = sorted(((res[hi].get(k, 0) - res[lo].get(k, 0), k) for k in names), reverse=True)
        print(f"\nB={B}: per-kernel device time, L={hi} minus L={lo} (us a step), largest first")
        for d, k in diff[:10]:
            print(f"   {d:+8.1f} us  {short(k)}")
        print(f"   total {sum(res[hi].values()) - sum(res[lo].values()):+8.1f} us")


if __name__ == "__main__":
    main()
