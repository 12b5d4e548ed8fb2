"""The persistent swap kernel's ring protocol in Python (session 58; csrc/cuda/moe_wgmma.cu moe_swap_persist_kernel
and sw_consume<..., PERSIST = true>), played out step by step for one CTA:

    python3 dev/swap_persist_emu.py      # prints the cases checked and the failures (0)

The producer fills k tile g into slot g % 4 once the slot's release for k tile g - 4 has come (the empty barrier's
phase); the consumers take k tiles in order and release k tile g - 1 at the first step of k tile g, except the
tile's second-last, which they hold with the last one through the epilogue (its staging area) and release after it.
Between every two consumer steps the producer runs as far as the barriers let it. Checked: no deadlock, every slot
holds the k tile the consumers expect when they read it, the two held slots are not refilled before their release,
every k tile released exactly once and in order per slot, and no waiter ever sees a barrier two phases ahead (the
parity wait could not tell). The index arithmetic only; test_moe_swap_engine checks the CUDA code on a GPU."""
import itertools

STAGES = 4


def play(kts):
    """kts: the KT of each of a CTA's tiles (>= 2). Returns a list of failures (empty: the protocol holds)."""
    total = sum(kts)
    slot = [None] * STAGES           # the k tile a slot holds
    full = [0] * STAGES              # completed phases of full[s] (one a fill)
    empty = [0] * STAGES             # completed phases of empty[s] (one a release of both consumer warpgroups)
    released = []                    # k tiles in release order
    held = set()
    fails = []
    nxt = 0                          # the producer's next k tile

    def produce():
        nonlocal nxt
        while nxt < total:
            s = nxt % STAGES
            if nxt >= STAGES:
                need = nxt // STAGES                 # the release of k tile nxt - 4 completes phase need - 1
                if empty[s] < need:
                    return
                if empty[s] > need:
                    fails.append(f"empty[{s}] two phases ahead of the producer at k tile {nxt}")
            if slot[s] in held:
                fails.append(f"k tile {nxt} refills slot {s} while k tile {slot[s]} is held")
            slot[s] = nxt
            full[s] += 1
            nxt += 1

    def release(g):
        s = g % STAGES
        if released and any(r % STAGES == s and r > g for r in released):
            fails.append(f"slot {s}: k tile {g} released after a later one")
        if g in released:
            fails.append(f"k tile {g} released twice")
        released.append(g)
        empty[s] += 1

    g0 = 0
    for KT in kts:
        for kt in range(KT):
            g = g0 + kt
            s = g % STAGES
            produce()
            if full[s] < g // STAGES + 1:
                return fails + [f"deadlock: consumers wait for k tile {g}, producer at {nxt}"]
            if full[s] > g // STAGES + 1:
                fails.append(f"full[{s}] two phases ahead of the consumers at k tile {g}")
            if slot[s] != g:
                fails.append(f"slot {s} holds k tile {slot[s]}, consumers expect {g}")
            if kt > 0 and kt < KT - 1:
                release(g - 1)
        held = {g0 + KT - 2, g0 + KT - 1}            # the epilogue's staging
        produce()                                     # the producer runs on during the epilogue
        for g in sorted(held):
            if slot[g % STAGES] != g:
                fails.append(f"held k tile {g}'s slot refilled during the epilogue")
        held = set()
        release(g0 + KT - 2)
        release(g0 + KT - 1)
        g0 += KT
    produce()
    if sorted(released) != list(range(total)):
        fails.append("not every k tile released once")
    return fails


def main():
    cases = [list(p) for n in range(1, 5) for p in itertools.product([2, 3, 4, 5, 7, 64], repeat=n)]
    fails = [(c, f) for c in cases for f in play(c)]
    for c, f in fails[:20]:
        print(c, f)
    print(f"cases {len(cases)}, failures {len(fails)}")
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
