// Error checks for every CUDA runtime and cuBLAS call of ssmtrain. A failing call is a bug
// or a broken device, not a user mistake, so each macro throws InternalError carrying the
// failing expression, file:line and the library's own error string.
//
// CUDA_CHECK_LAUNCH() goes after every kernel launch: launch errors (bad grid, too much
// shared memory) are only visible through cudaGetLastError. It also counts the launch for
// the profiler (one relaxed load when it is not recording).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "core/profiler.h"

namespace ssmtrain::cuda_detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw InternalError(detail::concat(file, ":", line, ": CUDA error ", cudaGetErrorName(err), " (",
                                     cudaGetErrorString(err), ") in ", expr));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line) {
  throw InternalError(detail::concat(file, ":", line, ": cuBLAS error ", cublasGetStatusName(st), " (",
                                     cublasGetStatusString(st), ") in ", expr));
}

}  // namespace ssmtrain::cuda_detail

#define CUDA_CHECK(expr)                                                                   \
  do {                                                                                     \
    cudaError_t ssmt_err_ = (expr);                                                        \
    if (ssmt_err_ != cudaSuccess)                                                          \
      ::ssmtrain::cuda_detail::throw_cuda_error(ssmt_err_, #expr, __FILE__, __LINE__);     \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                 \
  do {                                                                                     \
    cublasStatus_t ssmt_st_ = (expr);                                                      \
    if (ssmt_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::ssmtrain::cuda_detail::throw_cublas_error(ssmt_st_, #expr, __FILE__, __LINE__);    \
  } while (0)

#define CUDA_CHECK_LAUNCH()                                                                \
  do {                                                                                     \
    ::ssmtrain::profiler::count_launch();                                                  \
    cudaError_t ssmt_err_ = cudaGetLastError();                                            \
    if (ssmt_err_ != cudaSuccess)                                                          \
      ::ssmtrain::cuda_detail::throw_cuda_error(ssmt_err_, "kernel launch", __FILE__, __LINE__); \
  } while (0)
