// AsyncRead: the dtype bookkeeping and the CPU case; the pinned copy is core/cuda/device.cu's.
#include "core/async_read.h"

#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"

namespace ssmtrain {

struct AsyncRead::Impl {
  DType dtype = DType::f64;
  int64_t numel = 0;
  std::vector<unsigned char> host;     // a CPU source, copied at once
  cuda::PinnedRead* pinned = nullptr;  // a CUDA source
  ~Impl() {
#if defined(SSMTRAIN_WITH_CUDA)
    if (pinned) cuda::read_release(pinned);
#endif
  }
  const unsigned char* bytes() const {
#if defined(SSMTRAIN_WITH_CUDA)
    if (pinned) return static_cast<const unsigned char*>(cuda::read_wait(pinned));
#endif
    return host.data();
  }
};

AsyncRead::AsyncRead(const Tensor& t) {
  SSMT_CHECK(t.defined(), "AsyncRead: the tensor is undefined");
  const DType dt = t.dtype();
  SSMT_CHECK(dt == DType::f32 || dt == DType::f64 || dt == DType::i32 || dt == DType::i64, "AsyncRead: ", t.describe(),
             ": expected f32, f64, i32 or i64");
  SSMT_CHECK(t.nbytes() <= kMaxBytes, "AsyncRead: ", t.describe(), " is larger than ", kMaxBytes, " bytes");
  NoGradGuard no_grad;
  Tensor c = t.contiguous();
  auto impl = std::make_shared<Impl>();
  impl->dtype = dt;
  impl->numel = c.numel();
  if (c.device().is_cpu()) {
    impl->host.resize(c.nbytes());
    if (c.nbytes() > 0) std::memcpy(impl->host.data(), c.data_ptr(), c.nbytes());
  } else {
#if defined(SSMTRAIN_WITH_CUDA)
    impl->pinned = cuda::read_async(c.data_ptr(), c.nbytes(), c.device().index);
#else
    SSMT_CHECK(false, "AsyncRead: ", t.describe(), " is on a CUDA device but ssmtrain was built without CUDA");
#endif
  }
  impl_ = std::move(impl);
}

int64_t AsyncRead::numel() const { return impl_ ? impl_->numel : 0; }

bool AsyncRead::ready() const {
  SSMT_ASSERT(impl_, "AsyncRead::ready on an empty read");
#if defined(SSMTRAIN_WITH_CUDA)
  if (impl_->pinned) return cuda::read_done(impl_->pinned);
#endif
  return true;
}

void AsyncRead::wait() const {
  SSMT_ASSERT(impl_, "AsyncRead::wait on an empty read");
  impl_->bytes();
}

double AsyncRead::value(int64_t i) const {
  SSMT_ASSERT(impl_, "AsyncRead::value on an empty read");
  SSMT_ASSERT(i >= 0 && i < impl_->numel, "AsyncRead::value: index ", i, " of ", impl_->numel);
  const unsigned char* p = impl_->bytes() + static_cast<size_t>(i) * dtype_size(impl_->dtype);
  switch (impl_->dtype) {
    case DType::f32: {
      float v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case DType::f64: {
      double v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case DType::i32: {
      int32_t v;
      std::memcpy(&v, p, sizeof v);
      return static_cast<double>(v);
    }
    case DType::i64: {
      int64_t v;
      std::memcpy(&v, p, sizeof v);
      return static_cast<double>(v);
    }
    default:
      break;
  }
  SSMT_ASSERT(false, "AsyncRead: unexpected dtype");
  return 0;
}

}  // namespace ssmtrain
