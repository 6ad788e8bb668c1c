#!/usr/bin/env python3
"""Numpy emulation of the warp-level fragment logic of the mma.sync SSD kernels
(ssm/kernels/ssd_cuda.cu): ldmatrix addressing (plain and transposed), the m16n8k16 operand
and accumulator layouts, and the packing of accumulators into A fragments. It runs the
kernels' exact address formulas on random matrices and prints the largest difference from
the numpy products (about 1e-14 when the formulas are right: float64 sums of up to 128
products of O(1) values; a wrong index gives O(1)). Exits 1 above TOL, 77 (skipped)
without numpy. No GPU needed; a CTest case:

    python3 tools/check_mma_fragments.py
"""
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not installed: skipped")
    sys.exit(77)

TOL = 1e-9


def check(name, err):
    print(f"{name}: max abs diff {err:.1e}")
    assert err < TOL, (name, err)


def ldsm_x4(mem, addr_of_lane, trans=False):
    # mem: 2D array; addr_of_lane(l) -> (row, col) of the 8-element row segment lane l supplies
    mats = []
    for i in range(4):
        M = np.zeros((8, 8))
        for j in range(8):
            r, c = addr_of_lane(8 * i + j)
            M[j, :] = mem[r, c:c + 8]
        mats.append(M)
    regs = np.zeros((32, 4, 2))
    for t in range(32):
        g, q = t // 4, t % 4
        for i in range(4):
            M = mats[i]
            if not trans:
                regs[t, i] = (M[g, 2 * q], M[g, 2 * q + 1])
            else:
                regs[t, i] = (M[2 * q, g], M[2 * q + 1, g])
    return regs

def mma(c, a, b0, b1):
    # c: (32,4), a: (32,4,2) regs a0..a3 each two halves, b0,b1: (32,2)
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for t in range(32):
        g, q = t // 4, t % 4
        A[g, 2*q:2*q+2] = a[t, 0]; A[g+8, 2*q:2*q+2] = a[t, 1]
        A[g, 2*q+8:2*q+10] = a[t, 2]; A[g+8, 2*q+8:2*q+10] = a[t, 3]
        B[2*q:2*q+2, g] = b0[t]; B[2*q+8:2*q+10, g] = b1[t]
    C = A @ B
    for t in range(32):
        g, q = t // 4, t % 4
        c[t, 0] += C[g, 2*q]; c[t, 1] += C[g, 2*q+1]; c[t, 2] += C[g+8, 2*q]; c[t, 3] += C[g+8, 2*q+1]

def mma_abt(acc, A, row0, Bt, col0, k0, K, NT):
    # acc: (NT, 32, 4)
    for k in range(0, K, 16):
        a = ldsm_x4(A, lambda l: (row0 + (l & 15), k0 + k + (l >> 4) * 8))
        for nt in range(0, NT, 2):
            b = ldsm_x4(Bt, lambda l: (col0 + nt*8 + (l & 7) + ((l >> 4) << 3), k0 + k + ((l >> 3) & 1) * 8))
            mma(acc[nt], a, b[:, 0], b[:, 1]); mma(acc[nt+1], a, b[:, 2], b[:, 3])

def acc_to_matrix(acc, NT):
    M = np.zeros((16, NT * 8))
    for nt in range(NT):
        for t in range(32):
            g, q = t // 4, t % 4
            M[g, nt*8+2*q:nt*8+2*q+2] = acc[nt, t, 0:2]; M[g+8, nt*8+2*q:nt*8+2*q+2] = acc[nt, t, 2:4]
    return M

def main():
    rng = np.random.default_rng(0)
    # 1) mma_abt: A (64 x K) rows row0.., Bt (cols x K): result = A[row0:row0+16, k0:k0+K] @ Bt[col0:col0+8NT, k0:k0+K].T
    A = rng.standard_normal((64, 128)); Bt = rng.standard_normal((64, 128))
    for row0, col0, k0, K, NT in [(16, 32, 0, 128, 4), (48, 0, 64, 64, 8)]:
        acc = np.zeros((NT, 32, 4)); mma_abt(acc, A, row0, Bt, col0, k0, K, NT)
        ref = A[row0:row0+16, k0:k0+K] @ Bt[col0:col0+8*NT, k0:k0+K].T
        check("mma_abt", np.abs(acc_to_matrix(acc, NT) - ref).max())

    # 2) pack S (16 x 32 in 4 n8 tiles) into A fragments, times X[s0 .. s0+32][0..P) via trans ldmatrix
    P = 64
    X = rng.standard_normal((64, P)); S = rng.standard_normal((16, 64)); half = 1
    sc = np.zeros((4, 32, 4))
    for nt in range(4):
        for t in range(32):
            g, q = t // 4, t % 4
            c0 = half*32 + nt*8 + 2*q
            sc[nt, t] = (S[g, c0], S[g, c0+1], S[g+8, c0], S[g+8, c0+1])
    af = np.zeros((2, 32, 4, 2))
    for nt in range(4):
        for t in range(32):
            af[nt >> 1, t, (nt & 1)*2 + 0] = sc[nt, t, 0:2]
            af[nt >> 1, t, (nt & 1)*2 + 1] = sc[nt, t, 2:4]
    NTO = P // 8
    acc = np.zeros((NTO, 32, 4))
    for k in range(2):
        s0 = half*32 + k*16
        for nt in range(0, NTO, 2):
            bx = ldsm_x4(X, lambda l: (s0 + (l & 7) + ((l >> 3) & 1)*8, nt*8 + (l >> 4)*8), trans=True)
            mma(acc[nt], af[k], bx[:, 0], bx[:, 1]); mma(acc[nt+1], af[k], bx[:, 2], bx[:, 3])
    ref = S[:, half*32:half*32+32] @ X[half*32:half*32+32, :]
    check("pack + trans product", np.abs(acc_to_matrix(acc, NTO) - ref).max())

    # 3) prologue of bwd_l / bwd_s_b: A = Dy (rows, k over half of PP), B = H [p][n] transposed load
    PP, NP = 64, 128
    Dy = rng.standard_normal((64, PP)); H = rng.standard_normal((PP, NP)); row0 = 32
    NTC = NP // 8
    acc = np.zeros((NTC, 32, 4))
    for half in range(2):
        for k in range(0, PP // 2, 16):
            k0 = half*(PP//2) + k
            a = ldsm_x4(Dy, lambda l: (row0 + (l & 15), k0 + (l >> 4)*8))
            for nt in range(0, NTC, 2):
                bh = ldsm_x4(H, lambda l: (k0 + (l & 7) + ((l >> 3) & 1)*8, nt*8 + (l >> 4)*8), trans=True)
                mma(acc[nt], a, bh[:, 0], bh[:, 1]); mma(acc[nt+1], a, bh[:, 2], bh[:, 3])
    check("prologue dy H", np.abs(acc_to_matrix(acc, NTC) - Dy[row0:row0+16] @ H).max())


if __name__ == "__main__":
    main()
