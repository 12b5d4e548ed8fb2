"""dev/moe_tiles.py -- the tile counts of the wgmma MoE engine (csrc/cuda/moe_wgmma.cu), without a GPU.

    python3 dev/moe_tiles.py            # tile table for bench_moe's routing + coverage check (~20 s)

1. Tile table. bench_moe's routing (router randn(E, H) * H^-0.5 * 4, x randn(T, H), top-2, H 4096, E 16) replayed
   on the CPU (the GPU's random numbers differ; the counts' spread is what matters): per token count, the
   128-row tiles per GEMM pass that the default tiling (WT_ALL) runs, idle rows included, against the rows'
   worth of tiles, and the same for the tail tiling (WT_FULL + WT_TAIL: a tail of <= 64 rows costs half a
   tile per 256 W rows, being one 64 x 512 tile) and for 192-row blocks (measured in session 6). Session 6
   found the engine's time proportional to this count (~50 us per added tile at Jamba-v0.1 sizes, one tile's
   tensor time); session 7 found where that stops: the tail tiling's second launch streams every expert's
   weights again (~1.3 ms at these sizes), so it lost at 1024+ tokens while the count predicted a gain, and
   it is used only up to 16 slots per expert (docs/PERF_NOTES.md, MoE prefill). Count tiles AND weight passes.
   Column "merged": tile units with merged tiles (session 18: an expert's last <= 64 rows in its previous tile, 1.5
   units), and the W passes (m-tiles per GEMM) with them / without: where the weights' bandwidth binds (1024-1280
   tokens) the passes predict the gain, at 2048 neither column did (the merged kernel lacks the epilogue warps).
   Then the default engines by size (default_engine_table: the swap engine, merged tiles, the 128 x 256 tiles with
   or without half tiles, per GEMM, by moe_wgmma.cu's size rules as of session 67) and the share of each GEMM's
   tensor work that is real rows, with its W passes.
2. Coverage check. A Python mirror of the kernel's tile mapping (wt_find_tile, the n tiles, the rows and
   outputs each warpgroup's epilogue writes) over random expert counts: WT_ALL and WT_FULL + WT_TAIL must each
   write every (row, output) exactly once, and WT_ALL's expert-major block order (wt_expert_tile) must visit each
   of its tiles exactly once within the launch's grid. Change it with the kernel.
"""
import os
import random
import re

import torch

BM, BN = 128, 256


def bench_counts(T, H=4096, E=16, K=2, seed=0):
    torch.manual_seed(seed)
    router = (torch.randn(E, H) * H ** -0.5 * 4).bfloat16()
    x = torch.randn(T, H).bfloat16()
    ids = torch.nn.functional.linear(x, router).float().softmax(-1).topk(K, -1).indices
    return torch.bincount(ids.flatten(), minlength=E).tolist()


def tile_table():
    print(f"{'tokens':>7} {'rows/128':>9} {'WT_ALL':>7} {'fill':>5} {'FULL+TAIL':>10} {'fill':>5} {'192-row':>8} {'fill':>5}"
          f" {'merged':>7} {'W passes':>9}")
    for T in (512, 1024, 1280, 1536, 2048, 4096, 8192, 16384):
        c = bench_counts(T)
        ideal = 2 * T / BM
        t_all = sum(-(-n // BM) for n in c)
        t_split = sum(n // BM + (1 if n % BM > 64 else (0.5 if n % BM else 0)) for n in c)
        t_192 = sum(-(-n // 192) for n in c) * 192 / BM  # in 128-row tile units of tensor work
        # merged tiles (wp_tile with NA = 192 in moe_wgmma.cu): a last partial tile of <= 64 rows joins the tile
        # before it (1.5 units, one pass)
        mrg = [n > BM and 0 < n % BM <= 64 for n in c]
        t_mg = sum(n // BM + 0.5 if m else -(-n // BM) for n, m in zip(c, mrg))
        p_mg = sum(n // BM if m else -(-n // BM) for n, m in zip(c, mrg))
        print(f"{T:>7} {ideal:>9.1f} {t_all:>7} {ideal / t_all:>5.2f} {t_split:>10.1f} {ideal / t_split:>5.2f} "
              f"{t_192:>8.1f} {ideal / t_192:>5.2f} {t_mg:>7.1f} {p_mg:>4} / {t_all:<3}")
    swap_ab_table()
    default_engine_table()


def swap_ab_rows(counts, step, chunk=256):
    """Token rows of tensor work when the GEMM's operands are swapped (weights = wgmma A, 128 output features per
    tile; an expert's tokens = wgmma N in chunks of <= chunk, the last rounded up to a multiple of step), and the
    weight passes (one per token chunk) per expert."""
    rows = sum((n // chunk) * chunk + -(-(n % chunk) // step) * step for n in counts)
    passes = sum(-(-n // chunk) for n in counts)
    return rows, passes


def swap_ab_table():
    """The tile rows' useful share and the W passes of the current 128-row m-tiles against swapped operands with
    token chunks in steps of 8 / 16 / 64 (the ceiling of the swap form measured and dropped in session 8:
    docs/PERF_NOTES.md, MoE prefill)."""
    print(f"\n{'tokens':>7} {'128-row: useful':>16} {'W passes':>9} | swap-AB useful (W passes) at N step 8 / 16 / 64")
    for T in (512, 1024, 2048, 4096, 16384):
        c = bench_counts(T)
        rows128 = sum(-(-n // BM) * BM for n in c)
        cells = []
        for step in (8, 16, 64):
            r, p = swap_ab_rows(c, step)
            cells.append(f"{2 * T / r:.3f} ({p})")
        print(f"{T:>7} {2 * T / rows128:>16.3f} {sum(-(-n // BM) for n in c):>9} | " + " / ".join(cells))


def cu_rules():
    """The size rules' constants as csrc/cuda/moe_wgmma.cu defines them (read from the source, so that this mirror
    cannot drift from it)."""
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "csrc", "cuda", "moe_wgmma.cu")).read()
    names = ("MOE_SWAP_MIN_SLOTS_PER_EXPERT", "MOE_SWAP_MAX_SLOTS_PER_EXPERT", "MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT",
             "MOE_SWAP_DOWN_MAX_SLOTS_PER_EXPERT", "MOE_WGMMA_MERGE_MIN_SLOTS_PER_EXPERT",
             "MOE_WGMMA_MERGE_MAX_SLOTS_PER_EXPERT", "MOE_WGMMA_HALF_MIN_SLOTS_PER_EXPERT",
             "MOE_WGMMA_HALF_DOWN_MIN_SLOTS_PER_EXPERT", "SW_MAX_ROWS")
    return {n: int(re.search(rf"#define {n} (\d+)", src).group(1)) for n in names}


def default_engine_rows(counts, gate_up, E=16):
    """(engine, rows of tensor work, W passes) of one GEMM under the default rules of moe_wgmma.cu (bf16; constants
    from cu_rules, as of session 67: 176-303 / 368-607 / 128-191 / 384 / 1024 / 320): the swap engine (chunks of <=
    SW_MAX_ROWS rows split near-equal, each padded to 32) at 176-303 slots an expert in both GEMMs and at 368-607 in
    down; else merged tiles at 128-191; else the 128 x 256 tiles, with half tiles (an expert's last <= 64 rows as 64)
    from 384 slots an expert in gate_up and from 1024 in down. Mirror of moe_swap_on / wgmma_launch_persist's size
    rules: change it with their logic."""
    c = cu_rules()
    slots = sum(counts)
    avg = slots / E
    swap = c["MOE_SWAP_MIN_SLOTS_PER_EXPERT"] <= avg < c["MOE_SWAP_MAX_SLOTS_PER_EXPERT"]
    swap_down = c["MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT"] <= avg < c["MOE_SWAP_DOWN_MAX_SLOTS_PER_EXPERT"]
    if swap or (not gate_up and swap_down):
        rows = passes = 0
        for n in counts:
            k = -(-n // c["SW_MAX_ROWS"])
            passes += k
            rows += sum(-(-(n // k + (1 if i < n % k else 0)) // 32) * 32 for i in range(k))
        return "swap", rows, passes
    if c["MOE_WGMMA_MERGE_MIN_SLOTS_PER_EXPERT"] <= avg < c["MOE_WGMMA_MERGE_MAX_SLOTS_PER_EXPERT"]:
        rows = sum((n // BM) * BM + (64 if n > BM and 0 < n % BM <= 64 else -(-(n % BM) // BM) * BM) for n in counts)
        return "merged", rows, sum(-(-n // BM) - (1 if n > BM and 0 < n % BM <= 64 else 0) for n in counts)
    half = avg >= c["MOE_WGMMA_HALF_MIN_SLOTS_PER_EXPERT" if gate_up else "MOE_WGMMA_HALF_DOWN_MIN_SLOTS_PER_EXPERT"]
    rows = sum((n // BM) * BM + (64 if half and 0 < n % BM <= 64 else -(-(n % BM) // BM) * BM) for n in counts)
    return "tiles+half" if half else "tiles", rows, sum(-(-n // BM) for n in counts)


def default_engine_table():
    """The default engines by size and the share of their tensor work that is real rows (gate_up 2/3 of the FLOPs,
    down 1/3), on bench_moe's routing: where the padding goes since session 67's per-GEMM rule."""
    print(f"\n{'tokens':>7} {'gate_up: engine':>16} {'useful':>7} {'W passes':>9} | {'down: engine':>13} {'useful':>7} "
          f"{'W passes':>9} | op useful")
    for T in (1024, 1536, 2048, 2560, 2816, 3072, 3584, 4096, 4608, 5120, 6144, 8192, 16384):
        c = bench_counts(T)
        cells, share = [], 0.0
        for gate_up, weight in ((True, 2 / 3), (False, 1 / 3)):
            eng, rows, passes = default_engine_rows(c, gate_up)
            cells.append((eng, 2 * T / rows, passes))
            share += weight * rows / (2 * T)
        (ge, gu, gp), (de, du, dp) = cells
        print(f"{T:>7} {ge:>16} {gu:>7.3f} {gp:>9} | {de:>13} {du:>7.3f} {dp:>9} | {1 / share:.3f}")


def written(offs, N, gate_up, mode):
    """(row, output) pairs the launch of `mode` ("all", "full", "tail") writes; asserts none twice"""
    E, slots = len(offs) - 1, offs[-1]
    wr = 2 * BN if mode == "tail" else BN
    n_step = wr // 2 if gate_up else wr
    m_tiles = E if mode == "tail" else -(-slots // BM) + E
    if mode == "full":  # the launcher's bound (each WT_FULL tile holds > 64 rows), as in wgmma_launch_mode
        m_tiles = min(m_tiles, slots // 65)
    cov = set()
    for mt in range(m_tiles):
        tile = None
        if mode == "tail":
            if mt < E:
                lo, hi = offs[mt], offs[mt + 1]
                rem = (hi - lo) % BM
                if 0 < rem <= 64:
                    tile = (hi - rem, hi)
        else:
            m = mt
            for e in range(E):
                lo, hi = offs[e], offs[e + 1]
                last = (hi - lo) % BM > (64 if mode == "full" else 0)
                nt = (hi - lo) // BM + int(last)
                if mode == "merge" and hi - lo > BM and 0 < (hi - lo) % BM <= 64:  # wt_cursor_find<true>
                    nt -= 1
                if m < nt:
                    tile = (lo + m * BM, hi)
                    break
                m -= nt
        if tile is None:
            continue
        row0, row_end = tile
        for nt in range(-(-N // n_step)):
            n0 = nt * n_step
            for wgi in range(2):
                if mode == "tail":  # both warpgroups: the 64 rows; warpgroup wgi: outputs of W rows 256 wgi ..
                    rows, c0 = range(row0, row0 + 64), n0 + wgi * (BN // 2 if gate_up else BN)
                else:
                    rows, c0 = range(row0 + 64 * wgi, row0 + 64 * wgi + 64), n0
                parts = [(rows, c0, BN // 2 if gate_up else BN)]
                if mode == "merge" and BM < row_end - row0 <= BM + 64:  # merged: the 64 tail rows, W rows 128 wgi ..
                    parts.append((range(row0 + BM, row0 + BM + 64), n0 + wgi * (BN // 4 if gate_up else BN // 2),
                                  BN // 4 if gate_up else BN // 2))
                for rows, c0, width in parts:
                    for p in rows:
                        for f in range(c0, c0 + width):
                            if p < row_end and f < N:
                                assert (p, f) not in cov, (mode, p, f)
                                cov.add((p, f))
    return cov


def expert_order_tiles(offs, n_tiles):
    """Python mirror of wt_expert_tile (WT_ALL's block order): the (row0, n-tile) of every block of the launch's
    grid (ceil(slots / 128) + E tile rows x n_tiles), None for blocks past the last tile"""
    E, slots = len(offs) - 1, offs[-1]
    out = []
    for pid in range((-(-slots // BM) + E) * n_tiles):
        tile, q = None, pid
        for e in range(E):
            lo, hi = offs[e], offs[e + 1]
            mte = -(-(hi - lo) // BM)
            if q < mte * n_tiles:
                tile = (lo + (q % mte) * BM, q // mte)
                break
            q -= mte * n_tiles
        out.append(tile)
    return out


def coverage_check(trials=100):
    rng = random.Random(1)
    for _ in range(trials):
        counts = [rng.choice([0, 1, 5, 63, 64, 65, 127, 128, 129, 192, 200, 256, 300])
                  for _ in range(rng.choice([1, 3, 8, 16]))]
        offs = [0]
        for n in counts:
            offs.append(offs[-1] + n)
        N, gate_up = rng.choice([8, 96, 200, 264, 520]), rng.random() < 0.5
        every = {(p, f) for p in range(offs[-1]) for f in range(N)}
        full, tail = written(offs, N, gate_up, "full"), written(offs, N, gate_up, "tail")
        assert written(offs, N, gate_up, "all") == every, (counts, N, gate_up)
        assert written(offs, N, gate_up, "merge") == every, (counts, N, gate_up)
        assert not (full & tail) and full | tail == every, (counts, N, gate_up)
        # WT_ALL's expert-major block order visits each of its tiles exactly once
        n_tiles = -(-N // (BN // 2 if gate_up else BN))
        blocks = [t for t in expert_order_tiles(offs, n_tiles) if t is not None]
        tiles = {(lo + m * BM, nt) for e, (lo, hi) in enumerate(zip(offs[:-1], offs[1:]))
                 for m in range(-(-(hi - lo) // BM)) for nt in range(n_tiles)}
        assert len(blocks) == len(set(blocks)) and set(blocks) == tiles, (counts, N, gate_up)
    print(f"coverage: WT_ALL, merged tiles and WT_FULL + WT_TAIL write every (row, output) once, the expert-major order visits "
          f"every WT_ALL tile once ({trials} random cases)")


if __name__ == "__main__":
    tile_table()
    coverage_check()
