// The ops of the linear time-invariant SSMs S4 and S4D (SPECS section 4): convolution-kernel
// generation from the continuous parameters, and the long causal convolution by FFT. Each
// op records one tape node with a hand-written backward.
//
// Complex numbers live in real tensors with a trailing axis of 2 (re, im). Every SSM keeps
// one mode of each conjugate pair (N2 = N / 2 complex modes per channel), so real outputs
// are sums over the full, conjugate-symmetric state.
//
//  - s4d_vandermonde_kernel: diagonal A. K[h, l] = 2 Re sum_n C_n Bbar_n Abar_n^l, with
//    ZOH (Abar = exp(dt A), Bbar = (Abar - 1) / A * B) or bilinear
//    (Abar = (1 + dt/2 A) / (1 - dt/2 A), Bbar = dt B / (1 - dt/2 A)).
//  - s4_dplr_kernel: A = Lambda - P P^* (diagonal plus rank one, conjugate pairs expanded),
//    bilinear discretization. The truncated generating function
//    Khat(w) = sum_{l<L} K_l w^l = Ct (I - w Abar)^{-1} Bbar, with Ct = C (I - Abar^L), is
//    evaluated at the L roots of unity w_k = exp(-2 pi i k / L) as
//      Khat(w) = dt * Ct [(1 - w) I - (1 + w) dt/2 A]^{-1} B
//    (a Cauchy kernel sum_n v_n / (a - b Lambda_n) for the diagonal part and the Woodbury
//    identity for the rank-one term), then K = inverse FFT of Khat. This resolvent form has
//    no pole at w = -1, unlike the g(w) = 2/dt (1 - w)/(1 + w) form. Only k <= L/2 is
//    evaluated: K is real, so Khat(w_{L-k}) = conj(Khat(w_k)).
//  - fft_conv: y[b, l, h] = sum_{j<=l} K[h, j] u[b, l-j, h], by FFTs of length
//    fft_conv_size(L) >= 2L - 1 (no wrap-around). Backward: du is the correlation of dy with
//    K, dK the batch-summed correlation of dy with u, both by the same FFTs.
//
// Kernel generation computes in double whatever the parameter dtype (its cost, O(H N L),
// is small next to the layer's projections); fft_conv computes in f32 (f64 for f64 inputs).
// CPU FFTs use Eigen's FFT module. CUDA tensors run the kernels of s4_kernel_cuda.cu on the
// compute stream of their device (cuFFT for the transforms, double-precision CUDA kernels
// for kernel generation), with no host round trip and no synchronization; every dtype
// (f32, bf16, f64) is supported there too. On CUDA the dt > 0 check is skipped (it would
// need the values on the host).
#pragma once

#include <complex>

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace ssmtrain {

enum class S4Discretization { zoh, bilinear };

// "zoh" | "bilinear"; UserError naming `key` otherwise.
S4Discretization parse_s4_discretization(const std::string& name, const char* key);

// One diagonal mode discretised: Abar = z, Bbar = E * B (ZOH with its series near dt A = 0,
// or bilinear). The kernel generators and the recurrent step share it.
void s4_discretize_mode(std::complex<double> A, double dt, S4Discretization disc, std::complex<double>& z,
                        std::complex<double>& E);
const char* s4_discretization_name(S4Discretization d);

// dt (H) > 0, A, B, C (H, N2, 2) of one float dtype -> K (H, L) in that dtype.
Tensor s4d_vandermonde_kernel(const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, int64_t L,
                              S4Discretization disc);

// dt (H) > 0, Lambda, P, B, Ct (H, N2, 2) of one float dtype -> K (H, L) in that dtype
// (bilinear discretization of A = Lambda - P P^*; Ct is C (I - Abar^L)).
Tensor s4_dplr_kernel(const Tensor& dt, const Tensor& Lambda, const Tensor& P, const Tensor& B, const Tensor& Ct,
                      int64_t L);

// u (B, L, H), K (H, L) of one float dtype -> y (B, L, H): the causal convolution of each
// channel of u with its kernel. u may have any strides; K is read contiguous.
Tensor fft_conv(const Tensor& u, const Tensor& K);

// The FFT length used for a length-L causal convolution: the smallest 2^a 3^b 5^c >= 2L - 1.
int64_t fft_conv_size(int64_t L);

// ---- kernel interface (contiguous operands of `dtype`) ----

struct FftConvParams {
  DType dtype = DType::f32;
  int64_t B = 0, L = 0, H = 0;
  const void* u = nullptr;   // (B, L, H)
  const void* K = nullptr;   // (H, L)
  const void* dy = nullptr;  // (B, L, H), backward
  void* y = nullptr;         // (B, L, H), forward
  void* du = nullptr;        // (B, L, H) or null, backward
  void* dK = nullptr;        // (H, L) or null, backward
};

void fft_conv_fwd_cpu(const FftConvParams& p);
void fft_conv_bwd_cpu(const FftConvParams& p);

// Kernel generation, as the kernels see it (contiguous operands of `dtype`).
struct S4KernelParams {
  DType dtype = DType::f32;
  int64_t H = 0, N2 = 0, L = 0;
  S4Discretization disc = S4Discretization::zoh;  // s4d_vandermonde_kernel only
  const void* dt = nullptr;                        // (H)
  // (H, N2, 2) each: A, B, C for the Vandermonde kernel; Lambda, P, B, Ct for DPLR.
  const void* modes[4] = {nullptr, nullptr, nullptr, nullptr};
  void* K = nullptr;          // (H, L), forward output
  const void* dK = nullptr;   // (H, L), backward input
  void* ddt = nullptr;        // (H) or null, backward
  void* dmodes[4] = {nullptr, nullptr, nullptr, nullptr};  // gradients of `modes`, or null
};

// Kernel generation on the CPU, in double whatever the dtype (the formulas in the .cpp).
void s4d_vandermonde_fwd_cpu(const S4KernelParams& p);
void s4d_vandermonde_bwd_cpu(const S4KernelParams& p);
void s4_dplr_fwd_cpu(const S4KernelParams& p);
void s4_dplr_bwd_cpu(const S4KernelParams& p);

// ---- CUDA kernels (s4_kernel_cuda.cu, CUDA builds only), on the compute stream of `device` ----

// fft_conv by cuFFT: R2C / C2R transforms of length max(fft_conv_size(L), 2) batched over
// (B, H), f32 compute for f32 and bf16, f64 for f64 (D2Z / Z2D). Plans are cached per
// (device, type, length, batch, layout) and destroyed at exit. dK is a fixed-order batch sum.
void fft_conv_fwd_cuda(const FftConvParams& p, int device);
void fft_conv_bwd_cuda(const FftConvParams& p, int device);

// Kernel generation in double: the Vandermonde sum one thread per (h, 4 taps); its backward
// one block per mode reducing over l. DPLR: one thread per (h, frequency) for the Cauchy
// sums and Woodbury, a Z2D inverse FFT per channel; the backward a D2Z FFT of dK then one
// block per channel (fixed-order reductions, deterministic). DPLR needs N2 <= 1024.
void s4d_vandermonde_fwd_cuda(const S4KernelParams& p, int device);
void s4d_vandermonde_bwd_cuda(const S4KernelParams& p, int device);
void s4_dplr_fwd_cuda(const S4KernelParams& p, int device);
void s4_dplr_bwd_cuda(const S4KernelParams& p, int device);

}  // namespace ssmtrain
