"""What the kept decode graph saves: generate() calls of the whole Jamba-v0.1 shapes (random bf16 weights) on one GPU,
each on a new prompt, timed whole (prefill, capture or none, decode), with the graph captured in the call (the model's
kept graph cleared first) against the graph kept by the previous call of the same rows and cache bucket, taken in
turns; the eager decode (no graph) beside them. Tokens of the kept-graph call must equal the eager static decode's.
Usage (device): python3 dev/kept_graph_probe.py [--layers 32] [--reps 3]
"""
import argparse
import statistics
import time

import torch

from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM


def timed(model, ids, new, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, eos_token_id=None, **kw)
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    cfg = JambaConfig(num_hidden_layers=a.layers)
    t = time.perf_counter()
    model = JambaForCausalLM.from_config(cfg, dtype=torch.bfloat16, device="cuda", seed=0).eval()
    print(f"Jamba-v0.1 shapes, {a.layers} layers, {sum(p.numel() for p in model.parameters()) / 1e9:.1f}B parameters, "
          f"bf16, built in {time.perf_counter() - t:.0f} s; prompts of 300-379 tokens (with 32 or 128 new tokens: one "
          "cache bucket, 512)", flush=True)
    g = torch.Generator().manual_seed(0)
    prompt = lambda B: torch.randint(3, cfg.vocab_size, (B, int(torch.randint(300, 380, (1,), generator=g))),  # noqa
                                     generator=g).cuda()
    with torch.no_grad():
        timed(model, prompt(1), 16)                                   # warm-up (kernels, allocator)
        timed(model, prompt(1), 16, cuda_graph=False)
        for B in (1, 8):
            for new in (32, 128):
                rows = {"captured in the call": [], "kept from the last call": [], "eager (no graph)": []}
                same = True
                timed(model, prompt(B), new)                          # (a graph of these rows to keep)
                for _ in range(a.reps):
                    model.clear_decode_graph()
                    _, ms = timed(model, prompt(B), new)
                    assert not model._decode_graph_info.get("reused")
                    rows["captured in the call"].append(ms)
                    ids = prompt(B)
                    out, ms = timed(model, ids, new)
                    assert model._decode_graph_info.get("reused")
                    rows["kept from the last call"].append(ms)
                    ref, _ = timed(model, ids, new, cuda_graph=False, static_cache=True)
                    same &= out.tolist() == ref.tolist()
                    _, ms = timed(model, prompt(B), new, cuda_graph=False)
                    rows["eager (no graph)"].append(ms)
                print(f"batch {B}, {new} new tokens: " + "; ".join(
                    f"{k} {statistics.median(v):.1f} ms ({B * new / statistics.median(v) * 1e3:.1f} tok/s)"
                    for k, v in rows.items()) + f"; kept-graph tokens equal to the eager static decode's: {same}",
                    flush=True)


if __name__ == "__main__":
    main()
