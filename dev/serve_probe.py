"""Where `jamba-ext serve` loses time against the offline ContinuousBatcher on the same requests (session 51 probe).

    python dev/serve_probe.py [--smoke] [--batch-sizes 8,16]

bench_serve's first GPU run (61100e2) took 7.0 / 5.3 s at 8 / 16 rows for the 64 requests that the offline
ContinuousBatcher (bench_batch, "continuous, varied budgets") runs in 3.95 / 3.0 s. Rows here, each timed with the
batcher's step(), _admit() (the prefills) and the decode part counted on the host:
  offline, longest first   generate_continuous (bench_batch's row)
  offline, arrival order   one ContinuousBatcher, the requests added in index order up front (the server's FIFO)
  serve, clients here      bench_serve's way: the clients are threads of this process (16, half streamed)
  serve, clients apart     the same clients in a process of their own (as a deployment has them)
  serve, switch 0.1 ms     clients here, sys.setswitchinterval(1e-4) (the GIL handed back sooner)
Per row: wall, steps, mean rows running a step, host time in steps / in _admit, the median decode step (a step with
nothing admitted), and time outside steps (the engine loop, waiting for work or for the GIL).
--ahead A,B,...: the offline rows and "serve, clients here" once for each prefill_ahead value (session 52: the
prompts after an idle row's prefilled with it; 0 is the batcher before); the apart / switch rows only with --all-serve.
"""
import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))


def _clients(url, bodies, clients, out):
    """(child process) the requests, half streamed, from `clients` threads -> out.put(wall seconds)."""
    from bench_serve import _request
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(lambda i: _request(url, bodies[i], stream=i % 2 == 1), range(len(bodies))))
    out.put(time.perf_counter() - t0)


def main(argv=None) -> int:
    import torch
    from bench_batch import workload
    from bench_serve import _Ids, _request
    from jamba_ext import continuous, server

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--batch-sizes", default="8,16")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--ahead", default=f"0,{continuous.PREFILL_AHEAD_TOKENS}")
    ap.add_argument("--all-serve", action="store_true")
    args = ap.parse_args(argv)
    n = 16 if args.smoke else 64
    device, cfg, dtype, model, lengths, prompts, budgets, *_ = workload(args.smoke, None, n, None, None)
    hi, b_hi = max(lengths), max(budgets)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    acc = {}
    B = continuous.ContinuousBatcher
    step0, admit0 = B.step, B._admit

    def step(self):
        t0 = time.perf_counter()
        a0 = acc["took"]
        r = step0(self)
        dt = time.perf_counter() - t0
        acc["step"] += dt
        if self.rows is not None and self.running or r:
            acc["steps"] += 1
            acc["rows"] += len(self.stepped)
            if acc["took"] == a0:                  # (no prompt taken in: a decode step alone)
                acc["decode"].append(dt)
        return r

    def admit(self):
        t0, q = time.perf_counter(), self.running
        admit0(self)
        acc["admit"] += time.perf_counter() - t0
        acc["took"] += self.running - q
    B.step, B._admit = step, admit
    acc.update(step=0.0, admit=0.0, took=0, steps=0, rows=0, decode=[])

    def reset():
        acc.update(step=0.0, admit=0.0, took=0, steps=0, rows=0, decode=[])

    def row(label, wall):
        d = acc["decode"]
        print(f"{label:38s} | {wall:7.3f} s | {acc['steps']:4d} steps, {acc['rows'] / max(1, acc['steps']):5.2f} rows"
              f" | in steps {acc['step']:6.3f} s (admit {acc['admit']:6.3f}) | decode step median "
              f"{1e3 * statistics.median(d) if d else 0:6.2f} ms | outside steps {wall - acc['step']:6.3f} s",
              flush=True)

    aheads = [int(a) for a in args.ahead.split(",")]
    bodies = [{"prompt": " ".join(map(str, p)), "max_tokens": b} for p, b in zip(prompts, budgets)]
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        print(f"--- {bs} rows, {n} requests, {sum(budgets)} new tokens", flush=True)
        with torch.inference_mode():
            list(continuous.generate_continuous(model, prompts, batch_size=bs, max_new_tokens=2,
                                                eos_token_id=None))                       # warm-up (every length)
            for ahead in aheads:
                reset()
                sync()
                t0 = time.perf_counter()
                list(continuous.generate_continuous(model, prompts, batch_size=bs, max_new_tokens=budgets,
                                                    eos_token_id=None, prefill_ahead=ahead))
                sync()
                row(f"offline, longest first, ahead {ahead}", time.perf_counter() - t0)
            for ahead in aheads:
                bat = B(model, bs, hi, b_hi, eos_token_id=None, prefill_ahead=ahead)
                bat.add(prompts[0][:8], 2)
                while not bat.done:
                    bat.step()
                reset()
                sync()
                t0 = time.perf_counter()
                for p, b in zip(prompts, budgets):
                    bat.add(p, b)
                while not bat.done:
                    bat.step()
                sync()
                row(f"offline, arrival order, ahead {ahead}", time.perf_counter() - t0)
                bat.close()
        serves = [(f"serve, clients here, ahead {a}", False, None, a) for a in aheads]
        if args.all_serve:
            serves += [("serve, clients apart", True, None, aheads[-1]),
                       ("serve, switch 0.1 ms", False, 1e-4, aheads[-1])]
        for label, apart, switch, ahead in serves:
            got, started = {}, threading.Event()

            def ready(httpd):
                got["httpd"] = httpd
                started.set()
            th = threading.Thread(target=server.serve, args=(model, _Ids(), "127.0.0.1", 0), daemon=True, kwargs=dict(
                ready=ready, batch_size=bs, max_prompt_tokens=hi, max_new_tokens=b_hi, eos_token_id=None,
                prefill_ahead=ahead))
            th.start()
            started.wait(120)
            url = "http://127.0.0.1:%d" % got["httpd"].server_address[1]
            _request(url, {"prompt": bodies[0]["prompt"][:20].rsplit(" ", 1)[0], "max_tokens": 2}, False)
            old = sys.getswitchinterval()
            if switch:
                sys.setswitchinterval(switch)
            if apart:
                ctx = mp.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=_clients, args=(url, bodies, args.clients, q))
                reset()                 # (the engine is idle until the child's first request)
                p.start()
                wall = q.get(timeout=600)
                p.join(60)
            else:
                reset()
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as ex:
                    list(ex.map(lambda i: _request(url, bodies[i], stream=i % 2 == 1), range(n)))
                wall = time.perf_counter() - t0
            sys.setswitchinterval(old)
            row(label, wall)
            got["httpd"].shutdown()
            th.join(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
