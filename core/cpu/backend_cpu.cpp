// The CPU backend singleton and the helpers shared by its kernel files.
#include "core/cpu/backend_cpu.h"

#include "core/cpu/kernel_util.h"

namespace ssmtrain::cpu {

Backend& cpu_backend() {
  static CpuBackend instance;
  return instance;
}

Tensor contiguous_input(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), Device::cpu());
  cpu_backend().copy(t, c);
  return c;
}

}  // namespace ssmtrain::cpu
