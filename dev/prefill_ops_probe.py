"""Which operations of one Jamba layer's prefill cost what, at aligned and unaligned prompt lengths? (H200, bf16,
Jamba-v0.1 sizes.) One Mamba mixer and one MoE layer of bench_model's one-block model, profiled at each length with
torch.profiler (shapes and the Python line that issued each op), after a warm-up at that length.
    python3 dev/prefill_ops_probe.py [--lengths 2048,2041] [--batch 1]"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_model  # noqa: E402
from jamba_ext import modeling_jamba as mj  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="2048,2041")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile
    dev = torch.device("cuda")
    cfg = mj.JambaConfig(**dict(bench_model.ONE_BLOCK, num_hidden_layers=2))
    model = mj.JambaForCausalLM.from_config(cfg, dtype=torch.bfloat16, device=dev, seed=0)
    layer = model.model.layers[1]                       # Mamba mixer + MoE (expert_layer_offset 1)
    for L in (int(s) for s in args.lengths.split(",")):
        h = torch.randn(args.batch, L, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            for _ in range(2):
                layer.mamba.prefill(h, keep_state=False)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True,
                         with_stack=True) as prof:
                out, _, _ = layer.mamba.prefill(h, keep_state=False)
                torch.cuda.synchronize()
        print(f"\n==== Mamba mixer prefill, batch {args.batch}, L={L}: out strides {tuple(out.stride())}")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=16,
                                                                 max_name_column_width=40,
                                                                 max_shapes_column_width=70))
        print(prof.key_averages(group_by_stack_n=2).table(sort_by="self_cuda_time_total", row_limit=10,
                                                          max_name_column_width=40, max_src_column_width=90))


if __name__ == "__main__":
    main()
