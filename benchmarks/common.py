"""Shared benchmark helpers: timers, ceilings measured in the same run, JSON + PNG writers.

    time_ms(fn)            median / p10 / p90 in ms (CUDA events after warm-up on GPU; perf_counter on CPU)
    time_interleaved(fns)  the same for several variants, timed in turns (fair under clock drift)
    graph_us(fn)           median us of fn() as CUDA-graph replays (no host launch cost)
    copy_bandwidth_gbs()   device-to-device copy, bytes read + written / time (the memory ceiling)
    matmul_tflops()        large bf16 matmul rate on random data (the FLOP ceiling)
    sfu_rate()             ex2 per second on the special-function units (the scan's ceiling; measured by Triton)
    write_results(name, rows, meta)  -> benchmarks/results/<name>.json (+ .png when matplotlib exists)
    results_dir(smoke, device)       benchmarks/results/ for a full GPU run, else benchmarks/results/local/ (gitignored)
"""
import contextlib
import glob
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

import torch

# The checkout's jamba_ext when it is built in place (pip install -e, or the device's build); otherwise the installed
# package (a wheel), which an unbuilt checkout on sys.path would shadow. Every benchmark imports this module first.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if glob.glob(os.path.join(ROOT, "jamba_ext", "_C*")) and ROOT not in sys.path:
    sys.path.insert(1, ROOT)

RESULTS = os.environ.get("JAMBA_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Runs whose files are not for committing (--smoke, a GPU benchmark run on the CPU, bench_cpu.py without --out) write
# here, which .gitignore leaves out, so a run in a checkout leaves it clean; JAMBA_BENCH_RESULTS overrides both.
LOCAL = os.environ.get("JAMBA_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                              "local")


@contextlib.contextmanager
def env(**values):
    """The environment variables set for the block (EXPERIMENT knobs the kernels read per call; None: unset),
    restored after."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def git_commit() -> str:
    """JAMBA_COMMIT when set (the device machine gets a copy of the working tree whose .git can be stale:
    session 2's JSONs said 39bd0df for every round, session 28's whole-model JSON 23f101492488), else git's HEAD,
    marked as such where a GPU is visible (a device run that was not given JAMBA_COMMIT)."""
    if os.environ.get("JAMBA_COMMIT"):
        return os.environ["JAMBA_COMMIT"]
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short=12", "HEAD"],
                                       cwd=os.path.dirname(os.path.abspath(__file__)), text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"
    return head + " (.git HEAD; JAMBA_COMMIT not set)" if torch.cuda.is_available() else head


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def _flush_l2(device: torch.device, _buf={}):
    """Overwrite a buffer larger than L2 (H200: 60 MB) so the next run starts from DRAM."""
    if device.type != "cuda":
        return
    b = _buf.get(device)
    if b is None:
        b = _buf[device] = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    b.zero_()


def time_ms(fn, device: torch.device = torch.device("cpu"), warmup: int = 5, reps: int = 30,
            flush_l2: bool = False) -> dict:
    """Median (and p10/p90) time of fn() in ms."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for s, e in evs:
            if flush_l2:
                _flush_l2(device)
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in evs]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9), "reps": reps}


def capture(fn) -> "torch.cuda.CUDAGraph":
    """fn() run once eagerly on a side stream (warm-up: lazy allocations, one-time attributes), then captured into a
    CUDA graph, which is returned (replay() runs fn's kernels again on their captured buffers)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_us(fn, calls: int = 10, reps: int = 20) -> float:
    """Median time of one fn() in us as CUDA-graph replays (calls fn()s captured in one graph after an eager warm-up
    on a side stream; reps timed replays): host launch costs left out, for kernels shorter than their launch."""
    def many():
        for _ in range(calls):
            fn()
    g = capture(many)
    g.replay()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(out)


def time_interleaved(fns: dict, device: torch.device, rounds: int = 5, reps: int = 2, warmup: int = 1,
                     order: str = "random", seed: int = 0) -> dict:
    """Median / p10 / p90 (ms) of several functions measured in turns: `rounds` rounds, each timing every function
    `reps` times after `warmup` calls, the order rotated each round. Sustained load lowers the GPU's clocks (the
    H200 runs the MoE GEMMs at its power limit), so variants timed one after another drift (session 6 saw rows
    of one engine 12-16% apart); in turns each variant sees the same mix. On CUDA each round's timed calls are
    queued behind a short GPU sleep, so the host's launch time of a sub-millisecond call is not counted (a
    freshly synchronised queue made 200 us MoE decode calls read 240 us). order "random" (the default since
    session 10) draws a new order each round (seeded); "rotate" (sessions 6-9) keeps the cyclic order, so each
    variant always follows the same one, and the GPU's state after that one biased it: two rows of one MoE kernel
    at 16384 tokens read 18.35 and 17.02 ms with "rotate", 18.38 and 18.38 with "random" in the same call
    (moe_order_dd0a741.log). The random orders come from `seed`: with one seed for every call, a row met the same
    predecessors in every full round (bench_moe's "ours:wgmma nohalf" at 16384 tokens read ~6% faster than the
    default in two full rounds, not in dedicated A/B calls), so bench_moe seeds each token count differently.
    {name: dict as time_ms}"""
    names = list(fns)
    samples = {n: [] for n in names}
    cuda = device.type == "cuda"
    if order not in ("rotate", "random"):
        raise ValueError(f"time_interleaved: order must be 'rotate' or 'random', got {order!r}")
    rng = random.Random(seed)
    for r in range(rounds):
        seq = rng.sample(names, len(names)) if order == "random" else [names[(i + r) % len(names)]
                                                                        for i in range(len(names))]
        for n in seq:
            fn = fns[n]
            for _ in range(warmup):
                fn()
            if not cuda:
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    samples[n].append((time.perf_counter() - t0) * 1e3)
                continue
            torch.cuda.synchronize(device)
            evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            torch.cuda._sleep(2_000_000)  # ~1 ms: the calls below are queued before the GPU reaches them
            for s, e in evs:
                s.record()
                fn()
                e.record()
            torch.cuda.synchronize(device)
            samples[n] += [s.elapsed_time(e) for s, e in evs]
    out = {}
    for n, times in samples.items():
        times.sort()
        q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
        out[n] = {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9), "reps": len(times)}
    return out


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Bytes read + written per second by a large device-to-device copy (GB/s, 1e9)."""
    n = nbytes // 4
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    t = time_ms(lambda: b.copy_(a), device, warmup=3, reps=20)["median_ms"]
    return 2 * n * 4 / (t * 1e-3) / 1e9


def sfu_rate(dev):
    """(ex2 per second, how it was obtained)."""
    if dev.type != "cuda":
        return None, "n/a (cpu)"
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def ex2_kernel(out_ptr, n_iter, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x0 = (offs % 97).to(tl.float32) * -0.001 - 0.6
            x1, x2, x3 = x0 - 0.1, x0 - 0.2, x0 - 0.3
            for _ in range(n_iter):  # 4 independent chains; 2^x - 1.5 keeps x in (-1.2, -0.5)
                x0 = tl.exp2(x0) - 1.5
                x1 = tl.exp2(x1) - 1.5
                x2 = tl.exp2(x2) - 1.5
                x3 = tl.exp2(x3) - 1.5
            tl.store(out_ptr + offs, x0 + x1 + x2 + x3)

        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        BLOCK, n_iter = 1024, 4096
        grid = sms * 16
        out = torch.empty(grid * BLOCK, device=dev)
        t = time_ms(lambda: ex2_kernel[(grid,)](out, n_iter, BLOCK=BLOCK), dev, warmup=3, reps=10)
        rate = grid * BLOCK * n_iter * 4 / (t["median_ms"] * 1e-3)
        return rate, "measured: Triton kernel, 4 independent exp2 chains per thread"
    except Exception as e:  # noqa: BLE001 -- fall back to the datasheet formula
        why = f"{type(e).__name__}"
    props = torch.cuda.get_device_properties(dev)
    clk_mhz = None
    try:
        clk_mhz = float(subprocess.check_output(
            ["nvidia-smi", "-i", str(dev.index or 0), "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
            text=True).strip().splitlines()[0])
    except Exception:  # noqa: BLE001
        clk_mhz = 1980.0
    rate = props.multi_processor_count * 16 * clk_mhz * 1e6
    return rate, f"formula: {props.multi_processor_count} SMs x 16 ex2/clk x {clk_mhz:.0f} MHz (Triton: {why})"


def matmul_tflops(device: torch.device, n: int = 8192, dtype=torch.bfloat16) -> float:
    """Dense matmul rate on random data (TFLOP/s)."""
    if device.type == "cpu":
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_ms(lambda: a @ b, device, warmup=3, reps=10)["median_ms"]
    return 2 * n ** 3 / (t * 1e-3) / 1e12


def meta(device: torch.device, **extra) -> dict:
    m = {"device": device_name(device), "torch": torch.__version__, "commit": git_commit(),
         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    m.update(extra)
    return m


def results_dir(smoke: bool, device) -> str:
    """Where a run's files go: benchmarks/results/ for a full run on a GPU (the GPU rounds copy them from there), else
    (--smoke, or on the CPU) LOCAL, so that a run on a development machine leaves the checkout as it was."""
    return RESULTS if not smoke and torch.device(device).type == "cuda" else LOCAL


def write_results(name: str, rows: list, info: dict, plot_key: str = "median_us", folder: str = None) -> str:
    """Writes <folder>/<name>.json (folder: default RESULTS, benchmarks/results/) and, when matplotlib is importable,
    a bar chart <name>.png."""
    folder = folder or RESULTS
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".json")
    with open(path, "w") as f:
        json.dump({"meta": info, "rows": rows}, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = [r.get("label", r.get("op", "?")) for r in rows if plot_key in r]
        vals = [r[plot_key] for r in rows if plot_key in r]
        if vals:
            fig, ax = plt.subplots(figsize=(10, max(3, 0.3 * len(vals))))
            ax.barh(range(len(vals)), vals)
            ax.set_yticks(range(len(vals)))
            ax.set_yticklabels(labels, fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel(plot_key)
            ax.set_title(f"{name} on {info.get('device', '?')} @ {info.get('commit', '?')}")
            fig.tight_layout()
            fig.savefig(os.path.join(folder, name + ".png"), dpi=100)
            plt.close(fig)
    except ImportError:
        pass
    return path


def fmt_row(label: str, us: float, floor_us: float = None, extra: str = "") -> str:
    s = f"{label:<58} {us:10.1f} us"
    if floor_us:
        s += f" | floor {floor_us:9.1f} us | {100 * floor_us / us:5.1f}% of floor"
    return s + (" | " + extra if extra else "")
