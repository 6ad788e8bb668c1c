#!/usr/bin/env python3
"""Block-level numpy emulation of the mma.sync SSD tile kernels (ssm/kernels/ssd_cuda.cu:
chunk_scan_fwd_mma_kernel, bwd_l_mma_kernel, bwd_s_x/b_mma_kernel) against the chunk
formulas of SPECS section 3, one chunk without documents: each warp's fragments, masks,
diagonal skips and the two halves' sums as the kernels compute them, with the bf16
roundings of their operands (the l-tile and dB kernels: two heads of a group together, W
summed over them and handed between the warps of a row strip through a shared tile, read
only where written); and chunk_state_mma_kernel's fragments. Relative errors near
2e-3 (bf16) mean the index logic is right; a wrong mask or index gives errors of order 1.
Exits 1 on an error above TOL, 77 (skipped) without numpy. No GPU needed; a CTest case:

    python3 tools/check_ssd_mma_kernels.py
"""
import os
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not installed: skipped")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_mma_fragments import acc_to_matrix, ldsm_x4, mma, mma_abt  # noqa: E402


def bf16(x):
    x = np.asarray(x, dtype=np.float32)
    b = x.view(np.uint32)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def quad(v):  # per-lane partials (32,) -> the sums of the four lanes of each row group
    return v.reshape(8, 4).sum(1)


KT = 64


# The error bound of these emulations against the float64 formulas, relative to the largest
# |reference| value: the kernels round their operands (and the scaled score tiles) to bf16,
# unit roundoff 2^-9 = 2e-3, so a product of two rounded factors is off by up to ~4e-3
# relatively; the sums measured here stay near 2e-3. A wrong index or mask gives errors of
# order 1 (0.5-0.6 for a wrong weight index in the chunk-state check).
TOL = 1e-2


def check(name, err):
    print(f"{name}: max rel err {err:.1e}")
    assert err < TOL, (name, err)


def pair_decay(rows_l, cs, dt, i, j, r, col):
    """pair_decay of the kernels at row r of the block's tile i and column col of the staged
    tile j (chunk-wide cs, dt): rows_l, e^{cs_l - cs_s} dt_s with l in tile i; else
    e^{cs_l - cs_s} with s in tile i; 0 where the causal order cuts it."""
    if rows_l:
        l, s, off = i * KT + r, j * KT + col, j < i
    else:
        s, l, off = i * KT + r, j * KT + col, j > i
    keep = off or (col <= r if rows_l else col >= r)
    v = np.exp(cs[l] - cs[s]) if keep else 0.0
    return v * dt[s] if rows_l else v


def check_forward():
    rng = np.random.default_rng(1)

    kT, NP, PP = 64, 64, 64
    i = 2   # l-tile index: source tiles j = 0..2
    Qt = 3
    C = bf16(rng.standard_normal((kT * Qt, NP)))      # rows of the chunk
    Bm = bf16(rng.standard_normal((kT * Qt, NP)))
    X = bf16(rng.standard_normal((kT * Qt, PP)))
    dt = rng.uniform(0.05, 0.5, kT * Qt)
    cs = np.cumsum(dt * -0.7)
    Hc = rng.standard_normal((PP, NP))                # entering state (P x N), f32
    # reference: y_l = sum_{s<=l} (C_l.B_s) e^{cs_l-cs_s} dt_s x_s + e^{cs_l} H C_l
    L0 = i * kT
    yref = np.zeros((kT, PP))
    for r in range(kT):
        l = L0 + r
        for s in range(l + 1):
            yref[r] += (C[l] @ Bm[s]) * np.exp(cs[l] - cs[s]) * dt[s] * X[s]
        yref[r] += np.exp(cs[l]) * (Hc @ C[l])

    sC = C[L0:L0 + kT]
    sH = bf16(Hc)
    cs_l = cs[L0:L0 + kT]
    NTO = PP // 8
    accs = {}
    for warp in range(8):
        strip, half = warp & 3, warp >> 2
        row0 = strip * 16
        acc = np.zeros((NTO, 32, 4))
        mma_abt(acc, sC, row0, sH, 0, half * (NP // 2), NP // 2, NTO)
        for t in range(32):
            g = t // 4
            e0, e1 = np.exp(cs_l[row0 + g]), np.exp(cs_l[row0 + g + 8])
            acc[:, t, 0:2] *= e0; acc[:, t, 2:4] *= e1
        for j in range(i + 1):
            sB = Bm[j * kT:(j + 1) * kT]; sX = X[j * kT:(j + 1) * kT]
            cs_s = cs[j * kT:(j + 1) * kT]; dt_s = dt[j * kT:(j + 1) * kT]
            if not (j < i or half * 32 <= row0 + 15):
                continue
            sc = np.zeros((4, 32, 4))
            mma_abt(sc, sC, row0, sB, half * 32, 0, NP, 4)
            af = np.zeros((2, 32, 4, 2))
            for nt in range(4):
                for t in range(32):
                    g, tq = t // 4, t % 4
                    sw = np.zeros(4)
                    for e in range(4):
                        r = row0 + g + (e >> 1) * 8; s = half * 32 + nt * 8 + tq * 2 + (e & 1)
                        sw[e] = sc[nt, t, e] * pair_decay(True, cs, dt, i, j, r, s)
                    sw = bf16(sw)
                    af[nt >> 1, t, (nt & 1) * 2 + 0] = sw[0:2]
                    af[nt >> 1, t, (nt & 1) * 2 + 1] = sw[2:4]
            for k in range(2):
                s0 = half * 32 + k * 16
                for nt in range(0, NTO, 2):
                    bx = ldsm_x4(sX, lambda l: (s0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                    mma(acc[nt], af[k], bx[:, 0], bx[:, 1]); mma(acc[nt + 1], af[k], bx[:, 2], bx[:, 3])
        accs[warp] = acc
    Y = np.zeros((kT, PP))
    for warp in range(8):
        strip = warp & 3
        Y[strip * 16:strip * 16 + 16] += acc_to_matrix(accs[warp], NTO)
    check("chunk scan fwd", np.abs(Y - yref).max() / np.abs(yref).max())


def mma_ab(acc, A, row0, Bm, n0, k_begin, k_end, NT):
    """mma_ab / mma_ab_range of the kernels: acc (NT, 32, 4) += A[row0 .. + 16, k_begin ..
    k_end) Bm[k_begin .. k_end, n0 .. n0 + 8 NT), A row-major, Bm row-major read by
    ldmatrix.trans."""
    for k in range(k_begin, k_end, 16):
        a = ldsm_x4(A, lambda l: (row0 + (l & 15), k + (l >> 4) * 8))
        for nt in range(0, NT, 2):
            b = ldsm_x4(Bm, lambda l: (k + (l & 7) + ((l >> 3) & 1) * 8, n0 + nt * 8 + (l >> 4) * 8), trans=True)
            mma(acc[nt], a, b[:, 0], b[:, 1]); mma(acc[nt+1], a, b[:, 2], b[:, 3])


def scale_block(acc, row0, col0, f):
    """A warp's 16 x 32 block (accumulator layout, (4, 32, 4)): each value times f(row, col)."""
    for nt in range(4):
        for t in range(32):
            g, tq = t // 4, t % 4
            for e in range(4):
                acc[nt, t, e] *= f(row0 + g + (e >> 1) * 8, col0 + nt * 8 + tq * 2 + (e & 1))


def put_scores(sW, w, row0, col0):
    """put_scores: a warp's 16 x 32 block of W (accumulator layout) into the bf16 strip tile."""
    for nt in range(4):
        for t in range(32):
            g, tq = t // 4, t % 4; c = col0 + nt * 8 + tq * 2
            sW[row0 + g, c:c+2] = bf16(w[nt, t, 0:2]); sW[row0 + g + 8, c:c+2] = bf16(w[nt, t, 2:4])


def check_backward():
    rng = np.random.default_rng(2)

    kT, NP, PP, Qt = 64, 64, 64, 2
    Q = kT * Qt
    C = bf16(rng.standard_normal((Q, NP))); Bm = bf16(rng.standard_normal((Q, NP)))
    # Two heads of one group (the l-tile and dB kernels take them together): their own x, dy,
    # dt, cs, H_c and G_c; B and C are the group's. The d(dt x) kernel takes head 0.
    NH = 2
    Xh = [bf16(rng.standard_normal((Q, PP))) for _ in range(NH)]
    dYh = [bf16(rng.standard_normal((Q, PP))) for _ in range(NH)]
    dth = [rng.uniform(0.05, 0.5, Q) for _ in range(NH)]
    csh = [np.cumsum(dth[k] * a) for k, a in enumerate((-0.7, -0.3))]
    Hch = [bf16(rng.standard_normal((PP, NP))) for _ in range(NH)]
    Gch = [bf16(rng.standard_normal((PP, NP))) for _ in range(NH)]
    X, dY, dt, cs, Gc = Xh[0], dYh[0], dth[0], csh[0], Gch[0]
    cs_last = cs[-1]
    Wp = lambda k, l, s: np.exp(csh[k][l] - csh[k][s]) * dth[k][s] * (dYh[k][l] @ Xh[k][s])

    # ---- bwd_l, l-tile i = 1, two heads: dC summed over them, row sums per head ----
    i = 1; L0 = i * kT
    dC_ref = np.zeros((kT, NP)); row_ref = np.zeros((NH, kT))
    for k in range(NH):
        for r in range(kT):
            l = L0 + r
            for s in range(l + 1):
                w = Wp(k, l, s); dC_ref[r] += w * Bm[s]; row_ref[k, r] += (C[l] @ Bm[s]) * w
            e = np.exp(csh[k][l])
            dC_ref[r] += e * (Hch[k].T @ dYh[k][l]); row_ref[k, r] += e * dYh[k][l] @ (Hch[k] @ C[l])
    sC = C[L0:L0+kT]
    NTC = NP // 16  # a warp's half of the state columns
    acc = np.zeros((8, NTC, 32, 4)); rs = np.zeros((8, NH, 32, 2))
    for warp in range(8):  # prologue, a head at a time
        strip, half = warp & 3, warp >> 2; row0, n0 = strip * 16, half * (NP // 2)
        for k in range(NH):
            sDy, cs_l = dYh[k][L0:L0+kT], csh[k][L0:L0+kT]
            for nt in range(0, NTC, 2):
                t2 = np.zeros((2, 32, 4)); mma_ab(t2, sDy, row0, Hch[k], n0 + nt * 8, 0, PP, 2)
                for t in range(32):
                    g, tq = t // 4, t % 4; r0, r1 = row0 + g, row0 + g + 8
                    t2[:, t, 0:2] *= np.exp(cs_l[r0]); t2[:, t, 2:4] *= np.exp(cs_l[r1])
                    for u in range(2):
                        n = n0 + (nt + u) * 8 + tq * 2
                        rs[warp, k, t, 0] += sC[r0, n] * t2[u, t, 0] + sC[r0, n+1] * t2[u, t, 1]
                        rs[warp, k, t, 1] += sC[r1, n] * t2[u, t, 2] + sC[r1, n+1] * t2[u, t, 3]
                acc[warp, nt:nt+2] += t2
    for j in range(i + 1):
        sB = Bm[j*kT:(j+1)*kT]
        sW = np.full((kT, kT), np.nan)  # a read of a block no warp wrote shows as NaN
        for warp in range(8):  # W of the two heads, summed, into the strip tile
            strip, half = warp & 3, warp >> 2; row0 = strip * 16
            if not (j < i or half * 32 <= row0 + 15): continue
            s1 = np.zeros((4, 32, 4)); mma_abt(s1, sC, row0, sB, half * 32, 0, NP, 4)
            w = np.zeros((4, 32, 4))
            for k in range(NH):
                sDy, sX = dYh[k][L0:L0+kT], Xh[k][j*kT:(j+1)*kT]
                sw = np.zeros((4, 32, 4)); mma_abt(sw, sDy, row0, sX, half * 32, 0, PP, 4)
                scale_block(sw, row0, half * 32, lambda r, s: pair_decay(True, csh[k], dth[k], i, j, r, s))
                rs[warp, k, :, 0] += (s1[:, :, 0:2] * sw[:, :, 0:2]).sum(axis=(0, 2))
                rs[warp, k, :, 1] += (s1[:, :, 2:4] * sw[:, :, 2:4]).sum(axis=(0, 2))
                w += sw
            put_scores(sW, w, row0, half * 32)
        for warp in range(8):  # after the strip's barrier: its rows of W times B_s, its state columns
            strip, half = warp & 3, warp >> 2; row0, n0 = strip * 16, half * (NP // 2)
            mma_ab(acc[warp], sW, row0, sB, n0, 0, kT if j < i else row0 + 16, NTC)
    dC = np.zeros((kT, NP)); rows = np.zeros((NH, kT))
    for warp in range(8):
        strip, half = warp & 3, warp >> 2; row0, n0 = strip * 16, half * (NP // 2)
        dC[row0:row0+16, n0:n0+NP//2] = acc_to_matrix(acc[warp], NTC)
        for k in range(NH):
            rows[k, row0:row0+8] += quad(rs[warp, k, :, 0]); rows[k, row0+8:row0+16] += quad(rs[warp, k, :, 1])
    assert np.isfinite(dC).all(), "bwd_l read a W block no warp wrote"
    check("bwd_l dC (two heads)", np.abs(dC - dC_ref).max() / np.abs(dC_ref).max())
    check("bwd_l row sums of dcs (two heads)", np.abs(rows - row_ref).max() / np.abs(row_ref).max())

    # ---- bwd_s_x (head 0), s-tile i = 0 ----
    i = 0; S0 = 0
    F_ref = np.zeros((kT, PP)); col_ref = np.zeros(kT); ddt_ref = np.zeros(kT)
    for r in range(kT):
        s = S0 + r; wl = np.exp(cs_last - cs[s])
        csum = 0.0
        for l in range(s, Q):
            dec = np.exp(cs[l] - cs[s]); F_ref[r] += (C[l] @ Bm[s]) * dec * dY[l]
            w = Wp(0, l, s); csum += (C[l] @ Bm[s]) * w
        F_ref[r] += wl * (Gc @ Bm[s])
        v = wl * dt[s] * X[s] @ (Gc @ Bm[s])
        col_ref[r] = -csum - v; ddt_ref[r] = X[s] @ F_ref[r]
    sB, sX, cs_s, dt_s = Bm[:kT], X[:kT], cs[:kT], dt[:kT]
    wlast = np.exp(cs_last - cs_s)
    NTX = PP // 8
    F = np.zeros((kT, PP)); cols = np.zeros(kT); vrow = np.zeros(kT)
    for warp in range(8):
        strip, half = warp & 3, warp >> 2; row0 = strip * 16
        accx = np.zeros((NTX, 32, 4)); mma_abt(accx, sB, row0, Gc, 0, half * (NP // 2), NP // 2, NTX)
        v = np.zeros((32, 2)); cs2 = np.zeros((32, 2))
        for t in range(32):
            g, tq = t // 4, t % 4; r0, r1 = row0 + g, row0 + g + 8
            accx[:, t, 0:2] *= wlast[r0]; accx[:, t, 2:4] *= wlast[r1]
            for nt in range(NTX):
                kk = nt * 8 + tq * 2
                v[t, 0] += sX[r0, kk] * accx[nt, t, 0] + sX[r0, kk+1] * accx[nt, t, 1]
                v[t, 1] += sX[r1, kk] * accx[nt, t, 2] + sX[r1, kk+1] * accx[nt, t, 3]
        for j in range(i, Qt):
            sC, sDy = C[j*kT:(j+1)*kT], dY[j*kT:(j+1)*kT]
            if not (j > i or half * 32 + 31 >= row0): continue
            s1 = np.zeros((4, 32, 4)); mma_abt(s1, sB, row0, sC, half * 32, 0, NP, 4)
            s2 = np.zeros((4, 32, 4)); mma_abt(s2, sX, row0, sDy, half * 32, 0, PP, 4)
            afm = np.zeros((2, 32, 4, 2))
            for nt in range(4):
                for t in range(32):
                    g, tq = t // 4, t % 4; m = np.zeros(4)
                    for e in range(4):
                        r = row0 + g + (e >> 1) * 8; l = half * 32 + nt * 8 + tq * 2 + (e & 1)
                        dec = pair_decay(False, cs, dt, i, j, r, l)
                        m[e] = s1[nt, t, e] * dec
                        cs2[t, e >> 1] += s1[nt, t, e] * s2[nt, t, e] * dec * dt_s[r]
                    m = bf16(m)
                    afm[nt >> 1, t, (nt & 1) * 2 + 0] = m[0:2]; afm[nt >> 1, t, (nt & 1) * 2 + 1] = m[2:4]
            for k in range(2):
                l0 = half * 32 + k * 16
                for nt in range(0, NTX, 2):
                    bd = ldsm_x4(sDy, lambda l: (l0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                    mma(accx[nt], afm[k], bd[:, 0], bd[:, 1]); mma(accx[nt+1], afm[k], bd[:, 2], bd[:, 3])
        F[row0:row0+16] += acc_to_matrix(accx, NTX)
        cols[row0:row0+8] -= quad(cs2[:, 0]); cols[row0+8:row0+16] -= quad(cs2[:, 1])
        vrow[row0:row0+8] += quad(v[:, 0]); vrow[row0+8:row0+16] += quad(v[:, 1])
    cols -= vrow * dt_s
    ddt = np.einsum('rp,rp->r', sX, F)
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    for name, a, b in (("d(dt x)", F, F_ref), ("dcs_col", cols, col_ref), ("ddt_dir", ddt, ddt_ref)):
        check("bwd_s_x " + name, rel(a, b))

    # ---- bwd_s_b, s-tile i = 0, two heads: dB summed over them ----
    dB_ref = np.zeros((kT, NP))
    for k in range(NH):
        for r in range(kT):
            s = S0 + r
            for l in range(s, Q):
                dB_ref[r] += Wp(k, l, s) * C[l]
            dB_ref[r] += np.exp(csh[k][-1] - csh[k][s]) * dth[k][s] * (Gch[k].T @ Xh[k][s])
    NTB = NP // 16
    accb = np.zeros((8, NTB, 32, 4))
    for warp in range(8):  # prologue, a head at a time
        strip, half = warp & 3, warp >> 2; row0, n0 = strip * 16, half * (NP // 2)
        for k in range(NH):
            sXk, wl = Xh[k][:kT], np.exp(csh[k][-1] - csh[k][:kT]) * dth[k][:kT]
            for nt in range(0, NTB, 2):
                t2 = np.zeros((2, 32, 4)); mma_ab(t2, sXk, row0, Gch[k], n0 + nt * 8, 0, PP, 2)
                for t in range(32):
                    g = t // 4
                    t2[:, t, 0:2] *= wl[row0 + g]; t2[:, t, 2:4] *= wl[row0 + g + 8]
                accb[warp, nt:nt+2] += t2
    for j in range(i, Qt):
        sC = C[j*kT:(j+1)*kT]
        sW = np.full((kT, kT), np.nan)
        for warp in range(8):
            strip, half = warp & 3, warp >> 2; row0 = strip * 16
            if not (j > i or half * 32 + 31 >= row0): continue
            w = np.zeros((4, 32, 4))
            for k in range(NH):
                sXk, sDy = Xh[k][:kT], dYh[k][j*kT:(j+1)*kT]
                s2 = np.zeros((4, 32, 4)); mma_abt(s2, sXk, row0, sDy, half * 32, 0, PP, 4)
                scale_block(s2, row0, half * 32, lambda r, l: pair_decay(False, csh[k], dth[k], i, j, r, l) * dth[k][r])
                w += s2
            put_scores(sW, w, row0, half * 32)
        for warp in range(8):
            strip, half = warp & 3, warp >> 2; row0, n0 = strip * 16, half * (NP // 2)
            mma_ab(accb[warp], sW, row0, sC, n0, 0 if j > i else row0, kT, NTB)
    dB = np.zeros((kT, NP))
    for warp in range(8):
        strip, half = warp & 3, warp >> 2; row0, n0 = strip * 16, half * (NP // 2)
        dB[row0:row0+16, n0:n0+NP//2] = acc_to_matrix(accb[warp], NTB)
    assert np.isfinite(dB).all(), "bwd_s_b read a W block no warp wrote"
    check("bwd_s_b dB (two heads)", rel(dB, dB_ref))


def check_chunk_state():
    """chunk_state_mma_kernel: out (PP x NP) = X^T (w o Y) over a chunk of 3 tiles, each warp's
    A = X^T fragments read transposed from the [step][head] tile and scaled by the step
    weights in the registers, B = Y read transposed, for the warp tilings of PP 64 and 128."""
    rng = np.random.default_rng(4)
    for PP, NP in ((64, 128), (128, 64), (64, 64)):
        Qt = 3
        X = bf16(rng.standard_normal((KT * Qt, PP)))
        Y = bf16(rng.standard_normal((KT * Qt, NP)))
        w = rng.uniform(0.0, 1.0, KT * Qt)
        ref = X.T @ (w[:, None] * Y)
        strips = PP // 16
        per_strip = 8 // strips
        cols = NP // per_strip
        NT = cols // 8
        out = np.zeros((PP, NP))
        for warp in range(8):
            row0, col0 = (warp % strips) * 16, (warp // strips) * cols
            acc = np.zeros((NT, 32, 4))
            for j in range(Qt):
                sX, sY, wt = X[j * KT:(j + 1) * KT], Y[j * KT:(j + 1) * KT], w[j * KT:(j + 1) * KT]
                for k in range(0, KT, 16):
                    a = ldsm_x4(sX, lambda l: (k + (l & 7) + ((l >> 4) & 1) * 8, row0 + ((l >> 3) & 1) * 8), trans=True)
                    for t in range(32):
                        tq = t % 4
                        for u in range(4):
                            st = k + 2 * tq + (u >> 1) * 8
                            a[t, u] = bf16(a[t, u] * wt[st:st + 2])
                    for nt in range(0, NT, 2):
                        bv = ldsm_x4(sY, lambda l: (k + (l & 7) + ((l >> 3) & 1) * 8, col0 + nt * 8 + (l >> 4) * 8),
                                     trans=True)
                        mma(acc[nt], a, bv[:, 0], bv[:, 1]); mma(acc[nt + 1], a, bv[:, 2], bv[:, 3])
            out[row0:row0 + 16, col0:col0 + cols] = acc_to_matrix(acc, NT)
        check(f"chunk state PP {PP} NP {NP}", np.abs(out - ref).max() / np.abs(ref).max())


if __name__ == "__main__":
    check_chunk_state()
    check_forward()
    check_backward()
