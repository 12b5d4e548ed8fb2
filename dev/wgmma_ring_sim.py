"""dev/wgmma_ring_sim.py -- model of the barrier protocol of moe_wgmma_persist_kernel (csrc/cuda/moe_wgmma.cu).

Random interleavings of the 8 warps (warp 0 lane 0 is the producer, inside release_prev) and TMA completions
at random later times. Checks: no deadlock, every consumed stage holds the (tile, kt) the consumer expects,
and a stage is never overwritten while a warp still reads it.
"""
import random

S = 4

class MBar:
    def __init__(self, count):
        self.count, self.pending, self.phase, self.tx = count, count, 0, 0
    def arrive(self, tx=0):
        self.pending -= 1; self.tx += tx; self._check()
    def complete_tx(self, b):
        self.tx -= b; self._check()
    def _check(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1; self.pending = self.count
    def done(self, parity):  # try_wait.parity: phase with this parity completed
        return (self.phase - 1) % 2 == parity if self.phase > 0 else parity == 1

def run(tiles_valid, grid_idx, grid, KT, idle_wg1, seed):
    rnd = random.Random(seed)
    full = [MBar(1) for _ in range(S)]; empty = [MBar(8) for _ in range(S)]
    stage = [None] * S; readers = [set() for _ in range(S)]
    inflight = []  # (stage, content, bar)
    my_tiles = [t for t in range(grid_idx, len(tiles_valid), grid) if tiles_valid[t]]
    loads = [(t, k) for t in my_tiles for k in range(KT)]
    prod = {"q": 0}
    def issue_next():
        q = prod["q"]
        if q >= len(loads): return
        st = q % S
        assert not readers[st], f"overwrite of stage {st} while read by {readers[st]}"
        full[st].arrive(tx=1)  # expect_tx
        inflight.append((st, loads[q], full[st]))
        prod["q"] += 1
    for _ in range(S): issue_next()
    def warp(w):
        it = 0
        wg = w // 4
        def release_prev():
            if it > 0:
                ps = (it - 1) % S
                readers[ps].discard(w)
                empty[ps].arrive()
                if w == 0:
                    while not empty[ps].done(((it - 1) // S) & 1):
                        yield
                    issue_next()
        for t in my_tiles:
            idle = wg == 1 and idle_wg1(t)
            for kt in range(KT):
                st = it % S
                while not full[st].done((it // S) & 1):
                    yield
                assert stage[st] == (t, kt), (w, st, stage[st], (t, kt))
                if not idle:
                    readers[st].add(w)
                yield  # wgmma reading the stage (async; done by the next wait_group 1)
                yield from release_prev()
                it += 1
        # final: last stage's wgmma done at wait_group 0, no release
        if it > 0: readers[(it - 1) % S].discard(w)
    gens = {w: warp(w) for w in range(8)}
    steps = 0
    while gens:
        steps += 1
        if steps > 200000: raise RuntimeError("deadlock")
        if inflight and rnd.random() < 0.3:
            i = rnd.randrange(len(inflight)); st, content, bar = inflight.pop(i)
            stage[st] = content; bar.complete_tx(1)
        w = rnd.choice(list(gens))
        try: next(gens[w])
        except StopIteration: del gens[w]
    return steps

for seed in range(300):
    rnd = random.Random(seed)
    ntiles = rnd.randint(1, 40); valid = [rnd.random() < 0.7 for _ in range(ntiles)]
    grid = rnd.randint(1, 6); KT = rnd.randint(1, 9)
    idle_set = {t for t in range(ntiles) if rnd.random() < 0.4}
    for g in range(grid):
        run(valid, g, grid, KT, lambda t: t in idle_set, seed * 7 + g)
print("ok: no deadlock, stages hold the expected tiles, no overwrite while read")
