"""The wgmma engines' epilogues, measured (session 56, dev/swap_sched_ab.py then; H200, Jamba-v0.1, bf16).

    python3 dev/moe_epi_ab.py ab 1536 2048 4096   # the op in turns: default and the variants below
    python3 dev/moe_epi_ab.py ksweep              # gate_up's time against its k steps (H 2048 / 4096 / 8192)
    python3 dev/moe_epi_ab.py swapf16 1536 2048   # f16: the swap engine (forced) against the 128 x 256 tiles
    python3 dev/moe_epi_ab.py data                # the swap kernels and a dense mm on random operands and on zeros
    python3 dev/moe_epi_ab.py mc 1536 2048 2304   # ab of the swap kernel's A box sizes (session 62)
    python3 dev/moe_epi_ab.py mcsweep             # ksweep of the same variants
    python3 dev/moe_epi_ab.py swaprule 1024 2560  # bf16: the swap engine (forced) against the 128 x 256 tiles

ab: moe_route + moe_experts (impl auto: the swap engine at 176-303 slots an expert, else the 128 x 256 tiles) on
bench_moe's routing (router randn(E, H) * H^-0.5 * 4 on x randn), variants set by env (read by the library at each
call): "default" (the epilogues' roundings in pairs, moe_act_fast2 / moe_scaled2) and "f2f" (JAMBA_EXT_MOE_EPI_F2F=1:
a conversion a value, the kernels before session 56). The outputs must be bit-identical. (Session 56 measured
two more variants here, since removed: chunk counters that let the down GEMM's blocks start as their chunk's
gate_up blocks ended, and the blocks longest chunk first; within +-1.5%: s56_first_df6bcc7.log, s56_epi_*.log.)
ROUNDS rounds, each timing every variant (benchmarks/common.time_ms, CUDA events, median of REPS calls), round r
starting at variant r mod the variant count (the clock falls within a round); the table gives each variant's median
over the rounds and its share of the dense bf16 matmul rate measured in the same process (8192^3). At 16384 tokens
the rounds spread by 10% (the clock under long GEMMs) and this A/B read the other sign than bench_moe's four runs
(s56_tiles_ee5fd42.log, s56_again_d32d153.log): read bench_moe there. Then the
kernels' times of "default" and "f2f" (bench_moe.kernel_breakdown: torch.profiler with PDL off; session 56's logs were
made with the tool's own profiler loop, PDL on, where a kernel's time includes its wait for the one before).

ksweep: gate_up and down alone by kernel time (profiler) with every expert at 256 rows (T 2048, top-2, uniform),
F 14336, H 2048 / 4096 / 8192: gate_up's blocks are the same 3584 (224 W blocks x 16 experts), each with H / 64 k
steps; the fit time = a + b * k steps says what a block costs besides its k steps (fill, epilogue, launch); for
the default and for JAMBA_EXT_MOE_EPI_F2F=1, four turns each, which runs first alternating (the mean of
the middle two)."""
import os
import re
import sys

import torch
from jamba_ext import ops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import common  # noqa: E402
from bench_moe import kernel_breakdown as kernel_times  # noqa: E402  (PDL off, us a call)

F, E, K = 14336, 16, 2
dev, dt = torch.device("cuda"), torch.bfloat16
VARIANTS = {"default": {}, "f2f": {"JAMBA_EXT_MOE_EPI_F2F": "1"}}
SWAP_VARIANTS = {"swap": {"JAMBA_EXT_MOE_SWAP": "1"}, "tiles": {"JAMBA_EXT_MOE_SWAP": "0"}}
# session 62: the swap kernel's A loads of up to 4 chunks (the default since), of up to 2 and of one chunk
# (JAMBA_EXT_MOE_SWAP_ABOX; the same sums). Its first calls measured clusters of W blocks with the A boxes multicast:
# 1.3-2x slower (s62_mc_*.log), removed
ABOX_VARIANTS = {"default": {}, "a64": {"JAMBA_EXT_MOE_SWAP_ABOX": "64"}, "a32": {"JAMBA_EXT_MOE_SWAP_ABOX": "32"}}
# session 63 measured (mode wbox, since removed) the persistent kernel's 256 W rows a k tile in one 32 KB TMA box
# against two 16 KB boxes (JAMBA_EXT_MOE_WBOX=2 in 10c2aee): within the noise (s63_wbox_10c2aee.log)
# session 64 measured (mode ss, since removed) the swap kernel's W as the wgmma's A operand from shared memory (SS;
# gate_up through a 4-d TMA view of 8 gate rows and their 8 up rows) against ldmatrix into registers: no faster at
# <= 8 chunks, slower past 8 (two wgmmas a k16 step each read A again): s64_ss_c1ff08f.log
# session 64 also measured (mode order, since removed) the swap kernel's blocks expert-major (an expert's chunks of
# one W block adjacent) against chunk-major, swap forced: -3.5 to +1.8% at 2304-4096 tokens, no gain
# (s64_order_f0c89df.log)
SETS = {"f2f": VARIANTS, "abox": ABOX_VARIANTS}
ENV_KEYS = {k for vs in [VARIANTS, SWAP_VARIANTS] + list(SETS.values()) for v in vs.values() for k in v}
ROUNDS, REPS = 8, 10


def set_env(env):
    for k in ENV_KEYS:   # (session 58's diag set lost rows to a key this did not clear)
        os.environ.pop(k, None)
    os.environ.update(env)


def matmul_tflops(dt):
    a = torch.randn(8192, 8192, device=dev, dtype=dt)
    ms = common.time_ms(lambda: a @ a, dev, warmup=3, reps=20)["median_ms"]
    return 2 * 8192 ** 3 / ms / 1e9


def ab(tokens, variants=VARIANTS, dt=dt):
    """variants: name -> env, the first the reference; outputs compared bit for bit (VARIANTS) or by their largest
    difference relative to the reference's largest magnitude (other variants: other sums)"""
    H = 4096
    torch.manual_seed(0)
    wgu = (torch.randn(E, 2 * F, H, device=dev) * H ** -0.5).to(dt)
    wd = (torch.randn(E, H, F, device=dev) * F ** -0.5).to(dt)
    router = (torch.randn(E, H, device=dev) * H ** -0.5 * 4).to(dt)
    rate = matmul_tflops(dt)
    print(f"dense {dt} matmul (8192^3): {rate:.1f} TFLOP/s")
    for T in tokens:
        x = torch.randn(T, H, device=dev).to(dt)
        logits = torch.nn.functional.linear(x, router).float()

        def op():
            w, ids, offsets, slots = ops.moe_route(logits, K)
            return ops.moe_experts(x, w, ids, wgu, wd, slots, offsets)

        outs = {}
        for name, env in variants.items():
            set_env(env)
            outs[name] = op()
        names = list(variants)
        first = outs[names[0]].float()
        if variants in (VARIANTS, ABOX_VARIANTS):
            same = f"outputs bit-identical: {all(torch.equal(outs[names[0]], o) for o in outs.values())}"
        else:
            same = "largest difference / largest output: " + ", ".join(
                f"{(o.float() - first).abs().max().item() / first.abs().max().item():.2e}" for o in outs.values())
        times = {n: [] for n in variants}
        for r in range(ROUNDS):  # each round starts at another variant (the clock falls within a round)
            for name in names[r % len(names):] + names[:r % len(names)]:
                set_env(variants[name])
                times[name].append(common.time_ms(op, dev, warmup=2, reps=REPS)["median_ms"] * 1e3)
        counts = torch.bincount(ops.moe_route(logits, K)[1].flatten().long(), minlength=E).tolist()
        flops = 2.0 * T * K * 3 * H * F
        print(f"--- {T} tokens (rows an expert {min(counts)}-{max(counts)}); {same}")
        for name in variants:
            ts = sorted(times[name])
            med = ts[len(ts) // 2]
            print(f"  {name:8s} {med:8.1f} us  ({ts[0]:.1f}-{ts[-1]:.1f})  {flops / med / 1e6:6.1f} TFLOP/s  "
                  f"{100 * flops / med / 1e6 / rate:5.1f}% of the matmul rate")
        for name in names:
            set_env(variants[name])
            kt = kernel_times(op)
            print(f"  kernels, {name}: " + ", ".join(f"{k.split('(')[0][:40]} {v:.1f}" for k, v in
                                                 sorted(kt.items(), key=lambda r: -r[1])))
    set_env({})


def swap_times(kt):
    """(gate_up, down) us of the swap kernels in a kernel_times dict: moe_swap_kernel<T, GATE_UP[, ...]>"""
    gu = [re.search(r"moe_swap_kernel<[^,>]+, (true|false)", k) for k in kt]
    return (sum(v for m, v in zip(gu, kt.values()) if m and m.group(1) == "true"),
            sum(v for m, v in zip(gu, kt.values()) if m and m.group(1) == "false"))


def ksweep(variants=VARIANTS):
    T = 2048
    print(f"T {T}, F {F}, E {E}, top-{K}, 256 rows an expert; gate_up / down kernel times (profiler), us")
    idx = torch.arange(T, device=dev)
    ids = torch.stack([idx % E, (idx + 1) % E], 1).to(torch.int32)
    w = torch.full((T, K), 0.5, device=dev)
    offsets, slots = ops.moe_permute(ids, E)
    pts = {name: [] for name in variants}
    for H in (2048, 4096, 8192):
        torch.manual_seed(0)
        wgu = (torch.randn(E, 2 * F, H, device=dev) * H ** -0.5).to(dt)
        wd = (torch.randn(E, H, F, device=dev) * F ** -0.5).to(dt)
        x = torch.randn(T, H, device=dev).to(dt)
        steps = H // 64
        res = {n: [] for n in pts}
        for r in range(4):  # alternating which runs first
            for name in (list(pts) if r % 2 == 0 else list(pts)[::-1]):
                set_env(variants[name])
                kt = kernel_times(lambda: ops.moe_experts(x, w, ids, wgu, wd, slots, offsets))
                res[name].append(swap_times(kt))
        set_env({})
        for name in pts:
            gu, dn = sorted(r[0] for r in res[name])[1:3], sorted(r[1] for r in res[name])[1:3]
            gu, dn = sum(gu) / 2, sum(dn) / 2  # the mean of the middle two of four
            pts[name].append((steps, gu))
            print(f"  H {H:5d} {name:7s}: gate_up {gu:8.1f} us ({steps} k steps a block, "
                  f"{2.0 * T * K * 2 * F * H / gu / 1e6:.0f} TFLOP/s), down {dn:8.1f} us "
                  f"({2.0 * T * K * F * H / dn / 1e6:.0f} TFLOP/s)")
        wgu = wd = x = None
        torch.cuda.empty_cache()
    waves = 3584 / torch.cuda.get_device_properties(0).multi_processor_count
    for name, p in pts.items():
        n = len(p)
        mx, my = sum(q[0] for q in p) / n, sum(q[1] for q in p) / n
        b = sum((q[0] - mx) * (q[1] - my) for q in p) / sum((q[0] - mx) ** 2 for q in p)
        a = my - b * mx
        print(f"  fit {name}: gate_up = {a:.1f} + {b:.2f} us a k step; per block (/{waves:.2f} waves): "
              f"{a / waves:.2f} us + {b / waves:.3f} us a k step -> at 64 k steps {100 * a / (a + 64 * b):.1f}% of "
              "the time is not k steps")


def data():
    """Do the swap kernels (and a dense matmul of gate_up's work) run faster on zeros than on random operands? Every
    lab of sessions 54-58 ran on zeros; the op runs on real values. T 2048, 256 rows an expert, H 4096: kernel
    times (profiler) with random x and weights, and with zeros, in turns (4 rounds, the mean of the middle two)."""
    T, H = 2048, 4096
    idx = torch.arange(T, device=dev)
    ids = torch.stack([idx % E, (idx + 1) % E], 1).to(torch.int32)
    w = torch.full((T, K), 0.5, device=dev)
    offsets, slots = ops.moe_permute(ids, E)
    torch.manual_seed(0)
    sets = {"random": ((torch.randn(E, 2 * F, H, device=dev) * H ** -0.5).to(dt),
                       (torch.randn(E, H, F, device=dev) * F ** -0.5).to(dt), torch.randn(T, H, device=dev).to(dt)),
            "zeros": (torch.zeros(E, 2 * F, H, device=dev, dtype=dt), torch.zeros(E, H, F, device=dev, dtype=dt),
                      torch.zeros(T, H, device=dev, dtype=dt))}
    a_mm = {"random": torch.randn(T * K, H, device=dev).to(dt), "zeros": torch.zeros(T * K, H, device=dev, dtype=dt)}
    b_mm = {"random": (torch.randn(H, 2 * F, device=dev) * H ** -0.5).to(dt),
            "zeros": torch.zeros(H, 2 * F, device=dev, dtype=dt)}
    set_env({})
    res = {n: [] for n in sets}
    for r in range(4):
        for name in (list(sets) if r % 2 == 0 else list(sets)[::-1]):
            wgu, wd, x = sets[name]
            kt = kernel_times(lambda: ops.moe_experts(x, w, ids, wgu, wd, slots, offsets))
            mm = kernel_times(lambda: torch.mm(a_mm[name], b_mm[name]))
            res[name].append(swap_times(kt) + (sum(mm.values()),))
    fl = 2.0 * T * K * 2 * F * H
    print(f"T {T}, H {H}, F {F}, E {E}, top-{K}, 256 rows an expert; kernel times (profiler), us")
    for name in sets:
        gu, dn, mm = (sum(sorted(r[i] for r in res[name])[1:3]) / 2 for i in range(3))
        print(f"  {name:6s}: gate_up {gu:8.1f} us ({fl / gu / 1e6:.0f} TFLOP/s), down {dn:8.1f} us "
              f"({fl / 2 / dn / 1e6:.0f}), dense mm of gate_up's work {mm:8.1f} us ({fl / mm / 1e6:.0f})")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "ab"
    if mode == "ab":
        ab([int(t) for t in sys.argv[2:]] or [2048])
    elif mode == "swapf16":
        ab([int(t) for t in sys.argv[2:]] or [2048], SWAP_VARIANTS, torch.float16)
    elif mode == "data":
        data()
    elif mode == "swaprule":
        ab([int(t) for t in sys.argv[2:]] or [2048], SWAP_VARIANTS)
    elif mode == "mc":
        ab([int(t) for t in sys.argv[2:]] or [2048], ABOX_VARIANTS)
    elif mode == "mcsweep":
        ksweep(ABOX_VARIANTS)
    elif mode == "ksweep":
        ksweep(SETS[sys.argv[2] if len(sys.argv) > 2 else "f2f"])
    else:
        sys.exit(f"unknown mode {mode} (ab, swapf16, data, ksweep)")
