"""A numpy replay of the index plan of gemv.cu's tensor-core kernel (no GPU: a CPU check of the mapping only).

gemv_ring_kernel: the weights and x copied through a per-warp ring (2 rows x 256 bytes a copy instruction, odd rows'
16-byte units at unit ^ 4) and read back as the fragments of two m16n8k16 products per 32 elements of K (lane (g, t):
16 bytes of weight rows g and g + 8 and of x row g at k = 32 j + 8 t). The replay builds each product's 16 x 16 A and
16 x 8 B from what every lane holds, as PTX defines the m16n8k16 fragments, multiplies them, scatters the
accumulators as the kernel stores them, adds the K slices in slice order and compares with x @ W^T in float64. Also checks that the ring's fragment reads are free of shared-memory
bank conflicts (each quarter warp's eight 16-byte reads fall in eight different 16-byte bank groups).

    python3 dev/gemv_ring_mirror.py
"""
import numpy as np

RING_WARPS, RING_S = 4, 4        # gemv.cu: GR_WARPS, GR_S


def product(frags):
    """frags[lane] = (w_g, w_g8, x_g): 4 elements each for one m16n8k16 (k slots 2t, 2t+1, 2t+8, 2t+9) -> the lanes'
    accumulators (row g, cols 2t / 2t+1; row g + 8, same cols)."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for lane, (wg, wg8, xg) in enumerate(frags):
        g, t = lane >> 2, lane & 3
        A[g, [2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9]] = wg
        A[g + 8, [2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9]] = wg8
        B[[2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9], g] = xg
    D = A @ B
    return np.array([[D[l >> 2, 2 * (l & 3)], D[l >> 2, 2 * (l & 3) + 1], D[(l >> 2) + 8, 2 * (l & 3)],
                      D[(l >> 2) + 8, 2 * (l & 3) + 1]] for l in range(32)])


def mma16(acc, wa, wb, xv):
    """the kernel's two products of 32 elements: elements 0-3 of each lane's 16 bytes, then 4-7"""
    for h in range(2):
        acc += product([(wa[l][4 * h:4 * h + 4], wb[l][4 * h:4 * h + 4], xv[l][4 * h:4 * h + 4]) for l in range(32)])


def store(out, acc_by_slice, n0, M, N):
    c = sum(acc_by_slice)                      # slices added in slice order
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(4):
            n, m = n0 + g + (j >> 1) * 8, 2 * t + (j & 1)
            if n < N and m < M:
                out[m, n] = c[lane, j]


def ring_kernel(W, X, kw, conflicts):
    (N, K), M = W.shape, X.shape[0]
    out = np.full((M, N), np.nan)
    nst = -(-K // 128)
    for bx in range(-(-N // (16 * (RING_WARPS // kw)))):
        for pair in range(RING_WARPS // kw):
            n0, accs = (bx * (RING_WARPS // kw) + pair) * 16, []
            for ks in range(kw):
                ring = np.zeros((RING_S, 24 * 128))   # a stage: 16 W rows + 8 x rows of 128 elements
                nq = (nst - ks + kw - 1) // kw if nst > ks else 0

                def issue(slot, q):
                    for lane in range(32):
                        half, unit = lane >> 4, lane & 15
                        k = (ks + q * kw) * 128 + unit * 8
                        for i in range(8):
                            r = 2 * i + half
                            v = k < K and n0 + r < N
                            o = r * 128 + (unit ^ (half << 2)) * 8
                            ring[slot, o:o + 8] = W[n0 + r, k:k + 8] if v else 0
                        for i in range(4):
                            r = 2 * i + half
                            v = k < K and r < M
                            o = (16 + r) * 128 + (unit ^ (half << 2)) * 8
                            ring[slot, o:o + 8] = X[r, k:k + 8] if v else 0
                for q in range(RING_S - 1):
                    if q < nq:
                        issue(q, q)
                acc, slot = np.zeros((32, 4)), 0
                for q in range(nq):
                    if q + RING_S - 1 < nq:
                        issue((slot - 1) % RING_S, q + RING_S - 1)
                    st = ring[slot]
                    for j in range(4):
                        wa, wb, xv, groups = [], [], [], []
                        for lane in range(32):
                            g, t = lane >> 2, lane & 3
                            u = (4 * j + t) ^ ((g & 1) << 2)
                            wa.append(st[g * 128 + u * 8:g * 128 + u * 8 + 8])
                            wb.append(st[(g + 8) * 128 + u * 8:(g + 8) * 128 + u * 8 + 8])
                            xv.append(st[(16 + g) * 128 + u * 8:(16 + g) * 128 + u * 8 + 8])
                            groups.append((g * 256 + u * 16) // 16 % 8)   # 16-byte bank group of the W read
                        for qw in range(4):                                 # quarter warps
                            if len(set(groups[8 * qw:8 * qw + 8])) != 8:
                                conflicts.append((q, j, qw))
                        mma16(acc, wa, wb, xv)
                    slot = (slot + 1) % RING_S
                accs.append(acc)
            store(out, accs, n0, M, N)
    return out


def main():
    rng = np.random.default_rng(0)
    bad = 0
    for M, N, K, kw in [(3, 40, 264, 2), (8, 33, 1032, 4), (1, 16, 8, 1), (5, 70, 520, 1), (2, 100, 1000, 4),
                        (7, 17, 4104, 8)]:
        W, X = rng.standard_normal((N, K)), rng.standard_normal((M, K))
        ref = X @ W.T
        conflicts = []
        e_ring = np.abs(ring_kernel(W, X, min(kw, RING_WARPS), conflicts) - ref).max()
        ok = e_ring < 1e-9 and not conflicts
        bad += not ok
        print(f"M {M} N {N} K {K} kw {min(kw, RING_WARPS)}: max err {e_ring:.1e}, bank conflicts {len(conflicts)} "
              f"{'ok' if ok else 'FAIL'}")
    print("all cases pass" if not bad else f"{bad} cases FAIL")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
