"""Offline batch generation throughput: jamba_ext.batch.generate_many (what `jamba-ext generate --prompts-file` runs)
against plain generate() calls over the same prompts.

    python benchmarks/bench_batch.py            # GPU: one Jamba-v0.1 block (bench_model's), bf16, 64 prompts of
                                                #      128-2048 tokens (uniform, fixed seed), 64 new tokens each
    python benchmarks/bench_batch.py --smoke    # tiny CPU config (CI-sized)

Every run generates the same work: greedy, EOS off, so every prompt gets all its new tokens. Rows, for each batch
size: "generate_many" (prompts grouped by length, longest first: the batches' left padding is short), "generate,
file order" (model.generate over consecutive slices of the prompt list, each left-padded to its longest prompt: what
one writes without the grouping) and "continuous" (generate_many(continuous=True): a row takes the next prompt as
soon as its completion ends); batch size 1 is one generate() call a prompt. Then the same prompts with a budget a
prompt (--budgets, uniform, fixed seed: completions of different lengths, as EOS gives a real model's):
"generate_many, varied budgets" (each batch runs to its largest budget) against "continuous, varied budgets"
(pad_pct: none for continuous rows, whose prefill groups depend on when rows end). Then prompts that share their
first --prefix tokens (a long system message; each prompt's own tokens: a quarter of its length above):
"generate_many, shared prefix", "continuous, prefix prefilled whole" (shared_prefix=False) and "continuous, shared
prefix" (the prefix runs once). --scenarios picks among fixed, varied and prefix. Each row: the wall time for all
prompts (median of --reps after a warm-up run; the CUDA graphs the calls capture are part of it, as they are for a
user), new tokens/s, all tokens/s (prompt + new), and pad_pct: the padding positions the prefill computes, as a
share of the prompt tokens. Correctness first, on the first prompts: the last position's logits of one left-padded
batch against each prompt alone (norm-wise relative error below 1e-4 in fp32, 0.05 in bf16), and generate_many's
greedy completions against each prompt's own generate() (equal on the CPU in fp32; in bf16 the batch's other GEMM
shapes round differently and random weights give near ties, so the first token's agreement and the common prefix are
recorded, not required).
Writes benchmarks/results/bench_batch.json; --smoke (and a run on the CPU) bench_batch_smoke.json under
benchmarks/results/local/ (gitignored).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_beam import timed  # noqa: E402
from bench_model import ONE_BLOCK, SMOKE  # noqa: E402
from common import meta, results_dir, write_results  # noqa: E402

from jamba_ext.batch import batches_by_length, generate_many  # noqa: E402
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM  # noqa: E402


def workload(smoke: bool, device_arg, n: int, lengths_arg, budgets_arg):
    """The model and requests the offline benchmarks share: (device, cfg, dtype, model, lengths, prompts, budgets).
    One Jamba-v0.1 block (bench_model's) in bf16 on a GPU, the smoke config in fp32 on the CPU; n prompts of random
    tokens, their lengths uniform in lengths_arg ("min,max"; 128,2048, smoke 4,40), then a budget each, uniform in
    budgets_arg (8,128; smoke 1,8); one fixed-seed generator draws them in that order."""
    device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() and not smoke else "cpu"))
    cfg = JambaConfig(**(SMOKE if smoke else ONE_BLOCK))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    lo, hi = map(int, (lengths_arg or ("4,40" if smoke else "128,2048")).split(","))
    b_lo, b_hi = map(int, (budgets_arg or ("1,8" if smoke else "8,128")).split(","))
    print(f"building {'smoke' if smoke else 'one-block Jamba-v0.1'} model on {device} {dtype} ...", flush=True)
    model = JambaForCausalLM.from_config(cfg, dtype=dtype, device=device, seed=0)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    prompts = [torch.randint(3, cfg.vocab_size, (L,), generator=gen).tolist() for L in lengths]
    budgets = torch.randint(b_lo, b_hi + 1, (n,), generator=gen).tolist()
    return device, cfg, dtype, model, lengths, prompts, budgets, gen, (lo, hi), (b_lo, b_hi)


def pad_share(lengths, batches) -> float:
    """Padding positions the prefill computes (each batch left-padded to its longest prompt) / prompt tokens."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 100.0 * (padded - sum(lengths)) / sum(lengths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU config (CI)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompts", type=int, default=None, help="number of prompts (64; smoke 12)")
    ap.add_argument("--lengths", default=None, help="min,max prompt length (128,2048; smoke 4,40)")
    ap.add_argument("--new", type=int, default=None, help="new tokens a prompt (64; smoke 5)")
    ap.add_argument("--batch-sizes", default=None, help="comma list (1,8,16,32; smoke 1,4)")
    ap.add_argument("--budgets", default=None, help="min,max new tokens a prompt, varied rows (8,128; smoke 1,8)")
    ap.add_argument("--prefix", type=int, default=None, help="shared prefix tokens, prefix rows (1024; smoke 16)")
    ap.add_argument("--scenarios", default="fixed,varied,prefix", help="comma list of fixed, varied, prefix")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    n = args.prompts or (12 if args.smoke else 64)
    n_new = args.new or (5 if args.smoke else 64)
    sizes = [int(b) for b in (args.batch_sizes or ("1,4" if args.smoke else "1,8,16,32")).split(",")]
    device, cfg, dtype, model, lengths, prompts, budgets, gen, (lo, hi), (b_lo, b_hi) = workload(
        args.smoke, args.device, n, args.lengths, args.budgets)
    kw = dict(max_new_tokens=n_new, eos_token_id=None)
    kw_varied = dict(max_new_tokens=budgets, eos_token_id=None)
    head = torch.randint(3, cfg.vocab_size, (args.prefix or (16 if args.smoke else 1024),), generator=gen).tolist()
    prefixed = [head + p[:max(4, len(p) // 4)] for p in prompts]
    scenarios = set(args.scenarios.split(","))
    if not scenarios <= {"fixed", "varied", "prefix"}:
        ap.error(f"--scenarios: expected fixed, varied or prefix, got {args.scenarios}")

    # ---- correctness first, on the first prompts: the last position's logits of a left-padded batch against each
    # prompt alone (norm-wise), then generate_many's greedy completions against each prompt's own generate()
    k = min(n, 6)
    with torch.inference_mode():
        ids, mask = model._left_pad(prompts[:k], cfg.pad_token_id or 0, device)
        batched = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits.float()
        rel = 0.0
        for r, p in enumerate(prompts[:k]):
            a = model(input_ids=torch.tensor([p], device=device), logits_to_keep=1).logits.float()[0]
            rel = max(rel, ((batched[r] - a).norm() / a.norm()).item())
        alone = [model.generate([p], **kw)[0, len(p):].tolist() for p in prompts[:k]]
    many = [new for _, new, _ in generate_many(model, prompts[:k], batch_size=max(sizes), **kw)]
    prefix = [next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(alone, many)]
    agree = sum(a == b for a, b in zip(alone, many)) / k
    full = all(len(m) == n_new for m in many)
    # continuous batching against the static batches, budgets varied (the rows are taken over at different steps)
    kc = min(n, 12)
    static_v = list(generate_many(model, prompts[:kc], batch_size=4, max_new_tokens=budgets[:kc], eos_token_id=None))
    cont_v = list(generate_many(model, prompts[:kc], batch_size=4, max_new_tokens=budgets[:kc], eos_token_id=None,
                                continuous=True))
    cont_agree = sum(a == b for a, b in zip(static_v, cont_v)) / kc
    cont_first = sum(a[1][:1] == b[1][:1] for a, b in zip(static_v, cont_v)) / kc
    cont_lengths = [len(t) for _, t, _ in cont_v] == budgets[:kc]
    # the shared prefix run once against every prompt prefilled whole (both continuous)
    whole_p = list(generate_many(model, prefixed[:kc], batch_size=4, continuous=True, shared_prefix=False, **kw))
    shared_p = list(generate_many(model, prefixed[:kc], batch_size=4, continuous=True, **kw))
    prefix_agree = sum(a == b for a, b in zip(whole_p, shared_p)) / kc
    prefix_first = sum(a[1][:1] == b[1][:1] for a, b in zip(whole_p, shared_p)) / kc
    tol = 1e-4 if dtype == torch.float32 else 0.05      # bf16: the batch's other GEMM shapes round differently
    check = {"prompts_checked": k, "padded_logits_rel_err": rel, "logits_tolerance": tol,
             "first_token_agreement": sum(p > 0 for p in prefix) / k, "mean_common_prefix_tokens": sum(prefix) / k,
             "same_tokens_as_alone": agree, "every_completion_full_length": full,
             "continuous_prompts_checked": kc, "continuous_same_as_static": cont_agree,
             "continuous_first_token_agreement": cont_first, "continuous_lengths_are_budgets": cont_lengths,
             "shared_prefix_same_as_whole": prefix_agree, "shared_prefix_first_token_agreement": prefix_first,
             "ok": full and rel < tol and cont_lengths and ((agree == 1.0 and cont_agree == 1.0 and prefix_agree == 1.0)
                                                            or dtype != torch.float32)}
    print("check:", check, flush=True)

    def run_many(bs, continuous=False, varied=False, ps=None, **more):
        for _ in generate_many(model, prompts if ps is None else ps, batch_size=bs, continuous=continuous,
                               **(kw_varied if varied else kw), **more):
            pass

    def run_plain(bs):
        with torch.inference_mode():
            for b in range(0, n, bs):
                model.generate(prompts[b:b + bs], **kw)

    rows = []
    by_length = lambda bs: batches_by_length(lengths, bs)  # noqa: E731
    p_lengths = [len(p) for p in prefixed]
    for bs in sizes:
        variants = {}
        if "fixed" in scenarios:
            variants["generate_many"] = (lambda: run_many(bs), by_length(bs), n * n_new, lengths)
        if bs > 1 and "fixed" in scenarios:
            variants["generate, file order"] = (lambda: run_plain(bs), [list(range(b, min(b + bs, n)))
                                                                        for b in range(0, n, bs)], n * n_new, lengths)
            variants["continuous"] = (lambda: run_many(bs, continuous=True), None, n * n_new, lengths)
        if bs > 1 and "varied" in scenarios:
            variants["generate_many, varied budgets"] = (lambda: run_many(bs, varied=True), by_length(bs),
                                                         sum(budgets), lengths)
            variants["continuous, varied budgets"] = (lambda: run_many(bs, continuous=True, varied=True), None,
                                                      sum(budgets), lengths)
        if bs > 1 and "prefix" in scenarios:
            variants["generate_many, shared prefix"] = (lambda: run_many(bs, ps=prefixed),
                                                        batches_by_length(p_lengths, bs), n * n_new, p_lengths)
            variants["continuous, prefix prefilled whole"] = (
                lambda: run_many(bs, continuous=True, ps=prefixed, shared_prefix=False), None, n * n_new, p_lengths)
            variants["continuous, shared prefix"] = (lambda: run_many(bs, continuous=True, ps=prefixed), None,
                                                     n * n_new, p_lengths)
        for name, (fn, batches, n_gen, lens) in variants.items():
            n_prompt_tokens = sum(lens)
            fn()                                                         # warm-up (first shapes, graph buckets)
            t = timed(fn, device, args.reps) / 1e3                      # median wall time, s
            rows.append(dict(label=f"{name} b{bs}", impl=name, batch_size=bs, prompts=n, new_tokens=n_gen,
                             prompt_tokens=n_prompt_tokens, seconds=t, new_tokens_per_s=n_gen / t,
                             tokens_per_s=(n_prompt_tokens + n_gen) / t,
                             pad_pct=None if batches is None else pad_share(lens, batches),
                             median_us=t * 1e6))
            r = rows[-1]
            print(f"{name:<36} batch {bs:3d} | {t:8.3f} s | {r['new_tokens_per_s']:9.1f} new tok/s | "
                  f"{r['tokens_per_s']:10.1f} tok/s in all" + ("" if batches is None else
                                                               f" | padding {r['pad_pct']:5.1f}% of the prompt tokens"),
                  flush=True)
    info = meta(device, dtype=str(dtype), check=check, config=cfg.to_dict(), prompt_lengths=[lo, hi],
                varied_budgets=[b_lo, b_hi], shared_prefix_tokens=len(head), scenarios=sorted(scenarios))
    path = write_results("bench_batch_smoke" if args.smoke else "bench_batch", rows, info,
                         folder=results_dir(args.smoke, device))
    print("wrote", path)
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
