"""One training step (forward + loss + backward) of one Jamba-v0.1 block on a GPU, bf16: what the native backward
ops change at the model level (sessions 30-31).

    python3 dev/train_step_probe.py [--lengths 512,2048] [--ref-length 512] [--batch 1] [--copies N]

Rows: our model as it trains by default (native backward ops: selective_scan_bwd, causal_conv1d_bwd, rms_norm_bwd,
silu_mul_bwd; the MoE through moe_experts_trainable: on Hopper grouped GEMMs keeping gate_up for the backward), its
A/B against the MoE's older training forms (a backward that recomputes the forward's products, as grouped GEMMs or
as a per-expert loop), and, at --ref-length only, the same step with the
scan's backward through reference.py, then also with the MoE's dense fp32 backward (the scan and MoE backward of every
version before session 30; one timed call each, they take seconds). Then a profile of the default step at the longest
length: the top CUDA kernels by time (with JAMBA_EXT_PDL=0 for a breakdown that does not bill waits), and a host
profile of the step at the shortest length (self CPU time by op).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from jamba_ext import ops  # noqa: E402
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_ms(model, ids, reps):
    times = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        out = model(ids, labels=ids)
        out.loss.backward()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2], out.loss.item()


def peak_reset(dev, model) -> int:
    """Drops the gradients and resets the peak-memory statistic; returns the bytes allocated now (the weights), so
    that the peak above it is the step's activations and gradients."""
    if dev.type != "cuda":
        return 0
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_str(dev, base: int) -> str:
    if dev.type != "cuda":
        return "peak - (CPU)"
    peak = torch.cuda.max_memory_allocated()
    return f"peak {peak / 2**30:.1f} GiB ({(peak - base) / 2**30:.1f} GiB above the weights: activations and gradients)"


def ab_row(model, ids, L, title, variants, memory=False):
    """Times the step under each variant (a dict {(module, attribute): value} set for its duration), then under the
    defaults again, each after a warm-up step; prints one line (memory: each time's peak beside it)."""
    row = []
    for name, setting in variants + [("default again", {})]:
        keep = {key: getattr(*key) for key in setting}
        for (mod, attr), value in setting.items():
            setattr(mod, attr, value)
        try:
            step_ms(model, ids, 1)
            base = peak_reset(next(model.parameters()).device, model)
            ms = step_ms(model, ids, 3)[0]
            row.append(f"{name} {ms:.1f}" + (f" ({peak_str(next(model.parameters()).device, base)})" if memory else ""))
        finally:
            for (mod, attr), value in keep.items():
                setattr(mod, attr, value)
    print(f"L={L:6d}  {title}, ms a step: " + "; ".join(row), flush=True)


def _frame(f):
    """'path/file.py(123): func' -> 'file.py:123 func'; other frames (built-in methods) shortened."""
    if "): " not in f:
        return f.replace("<built-in method ", "").split(" of ")[0][:40]
    where, func = f.split("): ", 1)
    return f"{where.rsplit('/', 1)[-1].replace('(', ':')} {func}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--ref-length", type=int, default=512)
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (checks this script)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step (each of every --lengths length)")
    ap.add_argument("--no-ab", action="store_true", help="skip the A/B rows (MoE training forms, projections)")
    ap.add_argument("--checkpointing", action="store_true",
                    help="also time the step with model.gradient_checkpointing_enable() (peak memory beside it)")
    ap.add_argument("--copies", type=int, default=0, help="CUDA: the N copy / elementwise ops with the most device "
                                                         "time, by input shapes and Python stack")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("train_step_probe: needs a GPU (or --smoke)")
    dev = torch.device("cpu" if args.smoke else "cuda")
    cfg = JambaConfig(num_hidden_layers=8, **(dict(vocab_size=512, hidden_size=128, intermediate_size=256,
                                                   num_attention_heads=4, num_key_value_heads=2) if args.smoke else {}))
    dtype = torch.float32 if args.smoke else torch.bfloat16
    commit = os.environ.get("JAMBA_COMMIT", "unknown")
    print(f"commit {commit}; building one Jamba-v0.1 block ({dtype}) ...", flush=True)
    model = JambaForCausalLM.from_config(cfg, dtype=dtype, device=dev, seed=0)
    model.train()
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    lengths = [int(x) for x in args.lengths.split(",")]
    for L in lengths:
        ids = torch.randint(3, cfg.vocab_size, (args.batch, L), device=dev, generator=gen)
        step_ms(model, ids, 1)  # warm-up
        base = peak_reset(dev, model)
        ms, loss = step_ms(model, ids, 3)
        print(f"L={L:6d}  native backward: {ms:9.1f} ms a step ({args.batch * L / ms * 1e3:8.0f} tok/s, batch "
              f"{args.batch}), loss {loss:.4f}, {peak_str(dev, base)}", flush=True)
        if args.checkpointing:
            model.gradient_checkpointing_enable()
            try:
                step_ms(model, ids, 1)
                base = peak_reset(dev, model)
                ms_c, _ = step_ms(model, ids, 3)
            finally:
                model.gradient_checkpointing_disable()
            print(f"L={L:6d}  with gradient checkpointing: {ms_c:9.1f} ms a step ({ms_c / ms:.2f}x), "
                  f"{peak_str(dev, base)}", flush=True)
        if args.no_ab:
            continue
        if dev.type == "cuda" and ops._moe_grouped_grads_ok(torch.empty(1, cfg.hidden_size, device=dev, dtype=dtype),
                                                           None, torch.empty(1, 1, cfg.intermediate_size, device=dev)):
            ab_row(model, ids, L, "MoE training forms", [  # session 33
                ("recomputing grouped backward", {(ops, "MOE_TRAIN_SAVED"): False}),
                ("per-expert loop backward (before session 33)",
                 {(ops, "MOE_TRAIN_SAVED"): False, (ops, "MOE_BACKWARD_GROUPED"): False})])
            ab_row(model, ids, L, "MoE backward's id check (one host read per MoE layer)", [
                ("expert-id check skipped (no host sync)", {(ops, "_moe_check_backward_ids"): lambda ids, E: None})])
            ab_row(model, ids, L, "MoE backward's moe_grad_rows", [  # session 35
                ("torch form (before session 35)", {(ops, "MOE_NATIVE_GRAD_ROWS"): False})])
        if dev.type == "cuda":
            from jamba_ext import modeling_jamba as mj
            ab_row(model, ids, L, "Mamba projections' backward", [  # session 34
                ("torch's autograd of matmul / bmm (before session 34)", {(mj, "TRAIN_PROJ_FUNCTIONS"): False})])
            ab_row(model, ids, L, "LM loss", [  # session 35
                ("F.cross_entropy(logits.float()) (before session 35)", {(mj, "NATIVE_LOSS"): False})], memory=True)
        if L == args.ref_length:
            keep = ops._scan_native_ok
            ops._scan_native_ok = lambda u, A: False  # the scan's backward through reference.py
            try:
                ms_s, _ = step_ms(model, ids, 1)
                ops.MOE_SPARSE_BACKWARD = False  # and the MoE's dense fp32 formula: every version before session 30
                ms_r, loss_r = step_ms(model, ids, 1)
            finally:
                ops._scan_native_ok = keep
                ops.MOE_SPARSE_BACKWARD = True
            print(f"L={L:6d}  scan backward through reference.py: {ms_s:9.1f} ms a step; with the MoE's dense fp32 "
                  f"backward too (before session 30): {ms_r:9.1f} ms (loss {loss_r:.4f}); the default is "
                  f"{ms_r / ms:.1f}x faster than that", flush=True)
    L = max(lengths)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, L), device=dev, generator=gen)
    from torch.profiler import ProfilerActivity, profile
    act = [ProfilerActivity.CUDA] if dev.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=act) as prof:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        sync()
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(f"\nprofile of one native step at L={L} ({key}; with PDL on, a kernel's wait for its predecessor counts as "
          f"its time: set JAMBA_EXT_PDL=0 for a breakdown):")
    print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60))
    if dev.type == "cuda":  # the kernels with their whole names (torch's elementwise functors name the operation)
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:32]
        print("\nkernels by device time (ms, calls, name):")
        for e in rows:
            name = e.key.replace("at::native::", "").replace("(anonymous namespace)::", "")
            print(f"  {e.self_device_time_total / 1e3:8.2f} x{e.count:<5d} {name[:220]}")

    if dev.type == "cuda" and args.copies:  # which Python lines launch the copies and casts (device time, ms)
        verbose = torch._C._profiler._ExperimentalConfig(verbose=True)  # without it the stacks come back empty
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True,
                     with_stack=True, experimental_config=verbose) as prof:
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
            sync()
        names = ("aten::copy_", "aten::add", "aten::add_", "aten::mul", "aten::fill_", "aten::cat", "aten::sum")
        rows = [e for e in prof.key_averages(group_by_input_shape=True, group_by_stack_n=8) if e.key in names]
        print(f"\ncopies and elementwise ops at L={L} by device time (ms, calls, op, input shapes, stack):")
        for e in sorted(rows, key=lambda e: -e.device_time_total)[:args.copies]:
            stack = " <- ".join(_frame(f) for f in e.stack if "torch/" not in f)
            print(f"  {e.device_time_total / 1e3:7.2f} x{e.count:<4d} {e.key} {str(e.input_shapes)[:90]}  {stack}")
    # where the host's time goes in a step at the shortest length (host-bound there)
    L = min(lengths)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, L), device=dev, generator=gen)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        sync()
    print(f"\nhost profile of one native step at L={L} (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=24, max_name_column_width=60))


if __name__ == "__main__":
    main()
