#!/usr/bin/env python3
"""Block-level numpy emulation of the mma.sync SSD tile kernels (ssm/kernels/ssd_cuda.cu:
chunk_scan_fwd_mma_kernel, bwd_l_mma_kernel, bwd_s_x/b_mma_kernel) against the chunk
formulas of SPECS section 3, one chunk without documents: each warp's fragments, masks,
diagonal skips and the two halves' sums as the kernels compute them, with the bf16
roundings of their operands; and chunk_state_mma_kernel's fragments. Relative errors near
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


def check_backward():
    rng = np.random.default_rng(2)

    kT, NP, PP, Qt = 64, 64, 64, 2
    Q = kT * Qt
    C = bf16(rng.standard_normal((Q, NP))); Bm = bf16(rng.standard_normal((Q, NP)))
    X = bf16(rng.standard_normal((Q, PP))); dY = bf16(rng.standard_normal((Q, PP)))
    dt = rng.uniform(0.05, 0.5, Q); cs = np.cumsum(dt * -0.7)
    Hc = bf16(rng.standard_normal((PP, NP))); Gc = bf16(rng.standard_normal((PP, NP)))
    cs_last = cs[-1]
    Wp = lambda l, s: np.exp(cs[l] - cs[s]) * dt[s] * (dY[l] @ X[s])

    # ---- bwd_l, l-tile i = 1 ----
    i = 1; L0 = i * kT
    dC_ref = np.zeros((kT, NP)); row_ref = np.zeros(kT)
    for r in range(kT):
        l = L0 + r
        for s in range(l + 1):
            w = Wp(l, s); dC_ref[r] += w * Bm[s]; row_ref[r] += (C[l] @ Bm[s]) * w
        dC_ref[r] += np.exp(cs[l]) * (Hc.T @ dY[l]); row_ref[r] += np.exp(cs[l]) * dY[l] @ (Hc @ C[l])
    sC, sDy, cs_l = C[L0:L0+kT], dY[L0:L0+kT], cs[L0:L0+kT]
    NTC = NP // 8
    dC = np.zeros((kT, NP)); rows = np.zeros(kT)
    for warp in range(8):
        strip, half = warp & 3, warp >> 2; row0 = strip * 16
        acc = np.zeros((NTC, 32, 4)); rs = np.zeros((32, 2))
        for k in range(0, PP // 2, 16):
            k0 = half * (PP // 2) + k
            a = ldsm_x4(sDy, lambda l: (row0 + (l & 15), k0 + (l >> 4) * 8))
            for nt in range(0, NTC, 2):
                bh = ldsm_x4(Hc, lambda l: (k0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                mma(acc[nt], a, bh[:, 0], bh[:, 1]); mma(acc[nt+1], a, bh[:, 2], bh[:, 3])
        for t in range(32):
            g, tq = t // 4, t % 4; r0, r1 = row0 + g, row0 + g + 8
            acc[:, t, 0:2] *= np.exp(cs_l[r0]); acc[:, t, 2:4] *= np.exp(cs_l[r1])
            for nt in range(NTC):
                n = nt * 8 + tq * 2
                rs[t, 0] += sC[r0, n] * acc[nt, t, 0] + sC[r0, n+1] * acc[nt, t, 1]
                rs[t, 1] += sC[r1, n] * acc[nt, t, 2] + sC[r1, n+1] * acc[nt, t, 3]
        for j in range(i + 1):
            sB, sX = Bm[j*kT:(j+1)*kT], X[j*kT:(j+1)*kT]; cs_s, dt_s = cs[j*kT:(j+1)*kT], dt[j*kT:(j+1)*kT]
            if not (j < i or half * 32 <= row0 + 15): continue
            sw = np.zeros((4, 32, 4)); mma_abt(sw, sDy, row0, sX, half * 32, 0, PP, 4)
            s1 = np.zeros((4, 32, 4)); mma_abt(s1, sC, row0, sB, half * 32, 0, NP, 4)
            af = np.zeros((2, 32, 4, 2))
            for nt in range(4):
                for t in range(32):
                    g, tq = t // 4, t % 4
                    for e in range(4):
                        r = row0 + g + (e >> 1) * 8; s = half * 32 + nt * 8 + tq * 2 + (e & 1)
                        sw[nt, t, e] = sw[nt, t, e] * pair_decay(True, cs, dt, i, j, r, s)
                    af[nt >> 1, t, (nt & 1) * 2 + 0] = bf16(sw[nt, t, 0:2]); af[nt >> 1, t, (nt & 1) * 2 + 1] = bf16(sw[nt, t, 2:4])
                    rs[t, 0] += s1[nt, t, 0] * sw[nt, t, 0] + s1[nt, t, 1] * sw[nt, t, 1]
                    rs[t, 1] += s1[nt, t, 2] * sw[nt, t, 2] + s1[nt, t, 3] * sw[nt, t, 3]
            for k in range(2):
                s0 = half * 32 + k * 16
                for nt in range(0, NTC, 2):
                    bb = ldsm_x4(sB, lambda l: (s0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                    mma(acc[nt], af[k], bb[:, 0], bb[:, 1]); mma(acc[nt+1], af[k], bb[:, 2], bb[:, 3])
        dC[row0:row0+16] += acc_to_matrix(acc, NTC)
        q0, q1 = quad(rs[:, 0]), quad(rs[:, 1])
        rows[row0:row0+8] += q0; rows[row0+8:row0+16] += q1
    check("bwd_l dC", np.abs(dC - dC_ref).max() / np.abs(dC_ref).max())
    check("bwd_l row sums of dcs", np.abs(rows - row_ref).max() / np.abs(row_ref).max())

    # ---- bwd_s (x and b kernels), s-tile i = 0 ----
    i = 0; S0 = 0
    F_ref = np.zeros((kT, PP)); dB_ref = np.zeros((kT, NP)); col_ref = np.zeros(kT); ddt_ref = np.zeros(kT)
    for r in range(kT):
        s = S0 + r; wl = np.exp(cs_last - cs[s])
        csum = 0.0
        for l in range(s, Q):
            dec = np.exp(cs[l] - cs[s]); F_ref[r] += (C[l] @ Bm[s]) * dec * dY[l]
            w = Wp(l, s); dB_ref[r] += w * C[l]; csum += (C[l] @ Bm[s]) * w
        F_ref[r] += wl * (Gc @ Bm[s]); dB_ref[r] += wl * dt[s] * (Gc.T @ X[s])
        v = wl * dt[s] * X[s] @ (Gc @ Bm[s])
        col_ref[r] = -csum - v; ddt_ref[r] = X[s] @ F_ref[r]
    sB, sX, cs_s, dt_s = Bm[:kT], X[:kT], cs[:kT], dt[:kT]
    wlast = np.exp(cs_last - cs_s)
    NTX, NTB = PP // 8, NP // 8
    F = np.zeros((kT, PP)); dB = np.zeros((kT, NP)); cols = np.zeros(kT); vrow = np.zeros(kT)
    for warp in range(8):
        strip, half = warp & 3, warp >> 2; row0 = strip * 16
        accx = np.zeros((NTX, 32, 4)); mma_abt(accx, sB, row0, Gc, 0, half * (NP // 2), NP // 2, NTX)
        accb = np.zeros((NTB, 32, 4))
        for k in range(0, PP // 2, 16):
            k0 = half * (PP // 2) + k
            a = ldsm_x4(sX, lambda l: (row0 + (l & 15), k0 + (l >> 4) * 8))
            for nt in range(0, NTB, 2):
                bg = ldsm_x4(Gc, lambda l: (k0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                mma(accb[nt], a, bg[:, 0], bg[:, 1]); mma(accb[nt+1], a, bg[:, 2], bg[:, 3])
        v = np.zeros((32, 2)); cs2 = np.zeros((32, 2))
        for t in range(32):
            g, tq = t // 4, t % 4; r0, r1 = row0 + g, row0 + g + 8
            accx[:, t, 0:2] *= wlast[r0]; accx[:, t, 2:4] *= wlast[r1]
            accb[:, t, 0:2] *= wlast[r0] * dt_s[r0]; accb[:, t, 2:4] *= wlast[r1] * dt_s[r1]
            for nt in range(NTX):
                kk = nt * 8 + tq * 2
                v[t, 0] += sX[r0, kk] * accx[nt, t, 0] + sX[r0, kk+1] * accx[nt, t, 1]
                v[t, 1] += sX[r1, kk] * accx[nt, t, 2] + sX[r1, kk+1] * accx[nt, t, 3]
        for j in range(i, Qt):
            sC, sDy, cs_l = C[j*kT:(j+1)*kT], dY[j*kT:(j+1)*kT], cs[j*kT:(j+1)*kT]
            if not (j > i or half * 32 + 31 >= row0): continue
            s1 = np.zeros((4, 32, 4)); mma_abt(s1, sB, row0, sC, half * 32, 0, NP, 4)
            s2 = np.zeros((4, 32, 4)); mma_abt(s2, sX, row0, sDy, half * 32, 0, PP, 4)
            afm = np.zeros((2, 32, 4, 2)); afw = np.zeros((2, 32, 4, 2))
            for nt in range(4):
                for t in range(32):
                    g, tq = t // 4, t % 4; m = np.zeros(4); ww = np.zeros(4)
                    for e in range(4):
                        r = row0 + g + (e >> 1) * 8; l = half * 32 + nt * 8 + tq * 2 + (e & 1)
                        dec = pair_decay(False, cs, dt, i, j, r, l)
                        m[e] = s1[nt, t, e] * dec; ww[e] = s2[nt, t, e] * dec * dt_s[r]
                        cs2[t, e >> 1] += s1[nt, t, e] * ww[e]
                    m, ww = bf16(m), bf16(ww)
                    afm[nt >> 1, t, (nt & 1) * 2 + 0] = m[0:2]; afm[nt >> 1, t, (nt & 1) * 2 + 1] = m[2:4]
                    afw[nt >> 1, t, (nt & 1) * 2 + 0] = ww[0:2]; afw[nt >> 1, t, (nt & 1) * 2 + 1] = ww[2:4]
            for k in range(2):
                l0 = half * 32 + k * 16
                for nt in range(0, NTX, 2):
                    bd = ldsm_x4(sDy, lambda l: (l0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                    mma(accx[nt], afm[k], bd[:, 0], bd[:, 1]); mma(accx[nt+1], afm[k], bd[:, 2], bd[:, 3])
                for nt in range(0, NTB, 2):
                    bc = ldsm_x4(sC, lambda l: (l0 + (l & 7) + ((l >> 3) & 1) * 8, nt * 8 + (l >> 4) * 8), trans=True)
                    mma(accb[nt], afw[k], bc[:, 0], bc[:, 1]); mma(accb[nt+1], afw[k], bc[:, 2], bc[:, 3])
        F[row0:row0+16] += acc_to_matrix(accx, NTX); dB[row0:row0+16] += acc_to_matrix(accb, NTB)
        cols[row0:row0+8] -= quad(cs2[:, 0]); cols[row0+8:row0+16] -= quad(cs2[:, 1])
        vrow[row0:row0+8] += quad(v[:, 0]); vrow[row0+8:row0+16] += quad(v[:, 1])
    cols -= vrow * dt_s
    ddt = np.einsum('rp,rp->r', sX, F)
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    for name, a, b in (("d(dt x)", F, F_ref), ("dB", dB, dB_ref), ("dcs_col", cols, col_ref), ("ddt_dir", ddt, ddt_ref)):
        check("bwd_s " + name, rel(a, b))


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
