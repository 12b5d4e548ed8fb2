"""Profile decode steps of the model (torch.profiler): where does a decode step's time go?

On the H200 (round 2, 3b497e2) a decode step of the one-block Jamba-v0.1 model took ~67 ms at batch 1,
while the GPU work it needs is ~2 ms (weights touched / bandwidth): the step is bound by something else
(host overhead, a sync, or one slow kernel). This script answers which, in one call:

    python benchmarks/profile_decode.py                  # one-block Jamba-v0.1 on cuda, bf16
    python benchmarks/profile_decode.py --small          # a small config (CPU ok)
    python benchmarks/profile_decode.py --cuda-graph     # decode steps replayed from a CUDA graph
Prints the top ops by self CPU time and by self device time for N decode steps, and the wall time per step.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (puts the checkout's jamba_ext first when it is built)
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM  # noqa: E402


def build_model(dev, dtype, small=False):
    """One block of Jamba-v0.1 (8 layers: 1 attention, 7 Mamba, 4 MoE) with random weights (normal 0.02, A_log
    uniform in [0, 2.7]), built in place on dev (no joint projections: JambaForCausalLM(cfg), not from_config);
    small: hidden 512 (CPU ok). Returns (model in eval mode, config)."""
    if small:
        cfg = JambaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1792, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=2, num_experts=16)
    else:
        cfg = JambaConfig(num_hidden_layers=8)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = JambaForCausalLM(cfg)
    model = model.to_empty(device=dev).to(dtype)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            p.data.uniform_(0, 2.7)
    return model.eval(), cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="hidden 512, 8 layers (CPU ok)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cuda-graph", action="store_true", help="generate(cuda_graph=True)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, cfg = build_model(dev, dtype, args.small)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), device=dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        kw = dict(eos_token_id=None, cuda_graph=args.cuda_graph)
        model.generate(ids[:, :64], max_new_tokens=4, **kw)                          # warm-up
        stamps = []
        model.generate(ids, max_new_tokens=args.steps, **kw,
                       streamer=lambda t: (sync(), stamps.append(time.perf_counter())))
        per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
        print(f"wall time per decode step: {per_step * 1e3:.2f} ms ({dev}, {dtype}, prompt {args.prompt}"
              f"{', CUDA graph: ' + str(model._decode_graph_info) if args.cuda_graph else ''})")
        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            model.generate(ids[:, :256], max_new_tokens=args.steps, **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    if dev.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))


if __name__ == "__main__":
    main()
