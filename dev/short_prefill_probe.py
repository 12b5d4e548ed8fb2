"""Short-prompt prefill (a chat turn's time to first token): the whole Jamba-v0.1 shapes, random bf16 weights, one
GPU.

For prompts of 64-2048 tokens at batch 1: the forward through a fresh cache (logits of the last position), timed with
CUDA events over back-to-back calls and as wall time of one call, against its floor: the weight bytes it must read
(at these lengths every expert of every MoE layer is routed to) at the measured copy bandwidth, or its FLOPs at the
measured bf16 matmul rate, whichever is larger. The same forwards replayed from a CUDA graph (GPU time without the
host's launch gaps). Then a torch.profiler table of one 256-token forward: GPU time per
kernel family, the kernel count and GPU busy time against wall time (is it host-bound?).
Usage (device): python3 dev/short_prefill_probe.py [--layers 32] [--profile-len 256]
"""
import argparse
import collections
import time

import torch

from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM, JambaHybridCache


def ms_events(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--profile-len", type=int, default=256)
    a = ap.parse_args()
    cfg = JambaConfig(num_hidden_layers=a.layers)
    model = JambaForCausalLM.from_config(cfg, dtype=torch.bfloat16, device="cuda", seed=0).eval()
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel()
    active = n_params - emb - (cfg.num_experts - cfg.num_experts_per_tok) * sum(
        p.numel() for n, p in model.named_parameters() if ".experts." in n) // cfg.num_experts
    big = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    bw = 2 * big.numel() / (ms_events(lambda: dst.copy_(big)) * 1e-3)
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm = 2 * 8192 ** 3 / (ms_events(lambda: x @ x) * 1e-3)
    big = dst = x = None                           # (freed)
    print(f"{a.layers} layers, {n_params / 1e9:.1f}B parameters ({active / 1e9:.1f}B active a token); copy "
          f"{bw / 1e9:.0f} GB/s, bf16 matmul {mm / 1e12:.0f} TFLOP/s", flush=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for T in (64, 128, 256, 512, 1024, 2048):
            ids = torch.randint(3, cfg.vocab_size, (1, T), generator=g).cuda()

            def fwd():
                return model(ids, cache=JambaHybridCache(cfg, 1), logits_to_keep=1).logits

            ev = ms_events(fwd)
            torch.cuda.synchronize()
            t = time.perf_counter()
            fwd()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) * 1e3
            floor_b = (n_params - emb) * 2 / bw * 1e3
            floor_f = 2 * active * T / mm * 1e3
            floor = max(floor_b, floor_f)
            print(f"prefill {T:5d} tokens: {ev:7.2f} ms (events, back to back), {wall:7.2f} ms wall; floor "
                  f"{floor:6.2f} ms ({'bytes' if floor_b >= floor_f else 'FLOPs'}; bytes {floor_b:.2f}, FLOPs "
                  f"{floor_f:.2f}): {100 * floor / ev:.0f}%", flush=True)
        # the same forwards captured in a CUDA graph: GPU time without the host's launches between kernels
        for T in (64, 256, 512):
            ids = torch.randint(3, cfg.vocab_size, (1, T), generator=g).cuda()
            fwd = lambda: model(ids, cache=JambaHybridCache(cfg, 1), logits_to_keep=1).logits  # noqa: E731
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                ref = fwd().clone()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    out = fwd()
            except Exception as e:  # noqa: BLE001 -- report and go on to the profile
                print(f"prefill {T} tokens: the capture failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                break
            graph.replay()
            torch.cuda.synchronize()
            same = torch.equal(out, ref)
            print(f"prefill {T:5d} tokens in a CUDA graph: {ms_events(graph.replay):7.2f} ms against "
                  f"{ms_events(fwd):7.2f} eager (same logits: {same})", flush=True)
            del graph, out
        ids = torch.randint(3, cfg.vocab_size, (1, a.profile_len), generator=g).cuda()
        model(ids, cache=JambaHybridCache(cfg, 1), logits_to_keep=1)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            model(ids, cache=JambaHybridCache(cfg, 1), logits_to_keep=1)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) * 1e3
    fam, count, busy = collections.Counter(), collections.Counter(), 0.0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name.split("<")[0].split("(")[0][:60]
            fam[name] += e.device_time_total / 1e3 if hasattr(e, "device_time_total") else e.cuda_time_total / 1e3
            count[name] += 1
            busy += e.device_time_total / 1e3 if hasattr(e, "device_time_total") else e.cuda_time_total / 1e3
    print(f"profile, {a.profile_len} tokens: {sum(count.values())} kernels, GPU busy {busy:.2f} ms of {wall:.2f} ms "
          "wall (under the profiler)")
    for name, t in fam.most_common(18):
        print(f"  {t:7.3f} ms  {count[name]:4d}x  {name}")


if __name__ == "__main__":
    main()
