"""Decode speed of a model whose layers lie on two GPUs (dispatch("balanced")) against the same model on one GPU.

Jamba-v0.1 shapes (random weights, bf16; --layers N for fewer layers), batch 1 and 8, a 2K prompt, greedy, N new
tokens: one GPU with the CUDA-graph step, one GPU eager (static cache), two GPUs eager (static and dynamic cache), and
two GPUs with cuda_graph=True (one CUDA graph per GPU, _SplitDecodeGraph: the default since session 46). The
static-cache tokens must equal the one-GPU graph's. Each timed call follows a warm-up call of the same shape, so since
session 46 the graph rows replay the graph that call kept (no capture in the time). The split is for memory (a model
larger than one GPU): this shows what it costs. Needs 2 GPUs.
Usage (device kind nvidia-h200-x2): python3 dev/split_decode_probe.py [--layers 32] [--new 32] [--prompt 2048]
"""
import argparse
import time

import torch

from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM


def tok_s(model, ids, new, **kw):
    model.generate(ids, max_new_tokens=new, eos_token_id=None, **kw)          # warm-up (and graph capture)
    for d in range(torch.cuda.device_count()):
        torch.cuda.synchronize(d)
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, eos_token_id=None, **kw)
    for d in range(torch.cuda.device_count()):
        torch.cuda.synchronize(d)
    return out, ids.shape[0] * new / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=2048)
    a = ap.parse_args()
    assert torch.cuda.device_count() >= 2, "needs 2 GPUs"
    cfg = JambaConfig(num_hidden_layers=a.layers)
    t = time.perf_counter()
    model = JambaForCausalLM.from_config(cfg, dtype=torch.bfloat16, device="cuda:0", seed=0).eval()
    print(f"Jamba-v0.1 shapes, {a.layers} layers, {sum(p.numel() for p in model.parameters()) / 1e9:.1f}B parameters, "
          f"bf16, built in {time.perf_counter() - t:.0f} s", flush=True)
    g = torch.Generator().manual_seed(0)
    for B in (1, 8):
        ids = torch.randint(3, cfg.vocab_size, (B, a.prompt), generator=g).cuda()
        ref, graph = tok_s(model, ids, a.new, cuda_graph=True)
        _, eager = tok_s(model, ids, a.new, cuda_graph=False, static_cache=True)
        print(f"batch {B}: one GPU, CUDA graph {graph:.1f} tok/s; one GPU eager {eager:.1f} tok/s", flush=True)
        if B == 1:
            model.dispatch("balanced")
            print("split:", {d: sum(1 for v in model.hf_device_map.values() if v == d) for d in (0, 1)},
                  "units per GPU;", [f"{torch.cuda.memory_allocated(d) / 2**30:.1f} GiB" for d in (0, 1)], flush=True)
        else:
            model.dispatch("balanced")
        out, split = tok_s(model, ids, a.new, static_cache=True, cuda_graph=False)
        _, split_dyn = tok_s(model, ids, a.new, static_cache=False)
        print(f"batch {B}: two GPUs, eager {split:.1f} tok/s (static cache; dynamic cache {split_dyn:.1f}); tokens "
              f"equal to one GPU's: {out.tolist() == ref.tolist()}", flush=True)
        outg, split_g = tok_s(model, ids, a.new)       # (the default: one graph per device)
        print(f"batch {B}: two GPUs, one CUDA graph per GPU {split_g:.1f} tok/s ({model._decode_graph_info}); tokens "
              f"equal to one GPU's: {outg.tolist() == ref.tolist()}", flush=True)
        model.dispatch("cuda:0")


if __name__ == "__main__":
    main()
