"""sw_chunk's two scans in Python (session 57): the serial scan moe_swap_kernel had until session 58 (the reference)
and the warp-parallel one it has since (32 lanes, an inclusive prefix sum of the experts' chunk counts, the first
lane past y; JAMBA_EXT_MOE_SWAP_WARPSCAN=1 when it was an EXPERIMENT), written as csrc/cuda/moe_wgmma.cu's sw_chunk computes them (SW_MAX_ROWS = 320), compared on
random routings (E from 1 to 100, empty experts, experts of several chunks, y past the last chunk):

    python3 dev/sw_chunk_emu.py      # prints the mismatch count (0)

It checks the index arithmetic only; the kernel's same-bits test (test_moe_swap_engine) checks the CUDA code."""
import random
R = 320
def serial(off, E, y):
    first = 0
    for e in range(E):
        o, n = off[e], off[e+1]-off[e]; nch = (n + R - 1)//R
        if y < first + nch:
            j = y - first; csz = (n + nch - 1)//nch; start = j*csz
            return (e, o + start, min(n - start, csz))
        first += nch
    return None
def warp(off, E, y):
    first = 0
    for e0 in range(0, E, 32):
        o = [0]*32; n = [0]*32
        for l in range(32):
            e = e0 + l
            if e < E: o[l] = off[e]; n[l] = off[e+1]-off[e]
        nch = [(x + R - 1)//R for x in n]
        incl = []; s = 0
        for l in range(32): s += nch[l]; incl.append(s)
        hit = [ (e0+l) < E and y < first + incl[l] for l in range(32)]
        if any(hit):
            src = hit.index(True)
            j = y - (first + incl[src] - nch[src]); csz = (n[src] + nch[src] - 1)//nch[src]; start = j*csz
            return (e0+src, o[src] + start, min(n[src]-start, csz))
        first += incl[31]
    return None
random.seed(1)
bad = 0
for it in range(20000):
    E = random.choice([1, 2, 4, 8, 16, 31, 32, 33, 40, 64, 65, 100])
    cnt = [random.choice([0, 0, 1, 5, 100, 250, 319, 320, 321, 640, 700, 2048]) for _ in range(E)]
    off = [0]
    for c in cnt: off.append(off[-1] + c)
    total = sum((c + R - 1)//R for c in cnt)
    for y in range(0, total + E + 2):
        if serial(off, E, y) != warp(off, E, y): bad += 1
print("mismatches", bad)
