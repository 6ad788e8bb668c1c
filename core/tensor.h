// Tensor: shared storage + shape + strides + offset + dtype + device, plus the autograd
// fields of a tape participant (requires_grad, grad, leaf or not).
//
// Copies of a Tensor share everything (like a shared_ptr). Views (reshape of contiguous
// data, narrow, transpose, permute, expand, split) share storage and cost nothing;
// kernels that need contiguous input call contiguous() and say so in their header.
// Shapes and strides are in elements and kept inline (rank <= kMaxDims).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/random.h"
#include "core/storage.h"

namespace ssmtrain {

constexpr int kMaxDims = 6;

// A small inline vector of int64 (shapes, strides, axis lists).
class Dims {
 public:
  Dims() = default;
  Dims(std::initializer_list<int64_t> v) { assign(v.begin(), v.end()); }
  Dims(const std::vector<int64_t>& v) { assign(v.begin(), v.end()); }
  template <typename It> Dims(It b, It e) { assign(b, e); }
  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t& operator[](int i) { return d_[i]; }
  int64_t operator[](int i) const { return d_[i]; }
  const int64_t* begin() const { return d_; }
  const int64_t* end() const { return d_ + n_; }
  int64_t* begin() { return d_; }
  int64_t* end() { return d_ + n_; }
  int64_t back() const { return d_[n_ - 1]; }
  void push_back(int64_t v);
  void insert(int pos, int64_t v);
  void erase(int pos);
  int64_t numel() const {
    int64_t p = 1;
    for (int i = 0; i < n_; ++i) p *= d_[i];
    return p;
  }
  bool operator==(const Dims& o) const;
  bool operator!=(const Dims& o) const { return !(*this == o); }
  std::vector<int64_t> vec() const { return {d_, d_ + n_}; }
  std::string str() const;  // "(2, 3, 4)"

 private:
  template <typename It> void assign(It b, It e) {
    n_ = 0;
    for (; b != e; ++b) push_back(static_cast<int64_t>(*b));
  }
  int64_t d_[kMaxDims] = {};
  int n_ = 0;
};

struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation ----
  static Tensor empty(const Dims& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Dims& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Dims& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Dims& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  // [start, end) with step; dtype i64 unless given.
  static Tensor arange(double start, double end, double step = 1, DType dtype = DType::i64, Device device = Device::cpu());
  // Copies host data (of C++ type T) into a new tensor of dtype_of<T> on `device`.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Dims& shape, Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu());
  // Random tensors from a counter-based generator: element i uses counter gen.offset() + i,
  // identical on CPU and CUDA; the generator advances by numel.
  static Tensor rand(const Dims& shape, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu(),
                     double low = 0, double high = 1);
  static Tensor randn(const Dims& shape, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu(),
                      double mean = 0, double std = 1);
  static Tensor randint(const Dims& shape, Generator& gen, int64_t low, int64_t high, DType dtype = DType::i64,
                        Device device = Device::cpu());

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Dims& shape() const;
  const Dims& strides() const;
  int dim() const { return shape().size(); }
  int64_t size(int axis) const;  // negative axis counts from the end
  int64_t numel() const { return shape().numel(); }
  int64_t offset() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  size_t nbytes() const { return static_cast<size_t>(numel() * dtype_size(dtype())); }
  const std::shared_ptr<Storage>& storage() const;
  // Pointer to element 0 of this view.
  void* data_ptr() const;
  template <typename T> T* data() const;  // checks dtype_of<T> == dtype()
  // A name used in error messages (parameters get their dotted names).
  const std::string& name() const;
  Tensor& set_name(std::string name);
  std::string describe() const;  // "tensor 'name' (2, 3) f32 cpu" for messages

  // ---- autograd ----
  bool requires_grad() const;
  // Mark a leaf as trainable (errors on a non-leaf).
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const;
  Tensor grad() const;        // undefined until a backward reaches it
  void set_grad(Tensor g);    // shape and dtype checked, naming both
  void zero_grad();           // drops the gradient
  Tensor detach() const;      // same data, no autograd history or grad

  // ---- views (recorded on the tape) ----
  Tensor reshape(const Dims& shape) const;  // one -1 allowed; copies if not viewable
  // The same elements in a new shape without a copy whenever the strides allow it (a column
  // slice reshaped along its last axis stays a strided view), else a contiguous copy as
  // reshape makes. Unlike reshape, the result need not be contiguous.
  Tensor view(const Dims& shape) const;
  Tensor flatten(int start = 0, int end = -1) const;
  Tensor narrow(int axis, int64_t start, int64_t length) const;
  Tensor select(int axis, int64_t index) const;  // narrow + drop the axis
  Tensor transpose(int a, int b) const;
  Tensor permute(const Dims& order) const;
  Tensor unsqueeze(int axis) const;
  Tensor squeeze(int axis) const;
  Tensor expand(const Dims& shape) const;  // broadcast view (stride 0)
  std::vector<Tensor> split(const std::vector<int64_t>& sizes, int axis) const;
  std::vector<Tensor> chunk(int n, int axis) const;
  Tensor contiguous() const;  // this if already contiguous
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor clone() const;  // contiguous copy, on the tape

  // ---- host access ----
  template <typename T> T item() const;                 // single element, any dtype -> T
  template <typename T> std::vector<T> to_vector() const;  // copy to host, converting
  std::string str(int max_per_dim = 6) const;           // shape, dtype, device and values

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// What a tape node needs of a tensor that takes part in autodiff.
struct AutogradMeta {
  bool requires_grad = false;
  bool is_leaf = true;
  std::shared_ptr<TensorImpl> grad;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Dims shape;    // in elements
  Dims strides;  // in elements
  int64_t offset = 0;
  DType dtype = DType::f32;
  std::string name;
  std::shared_ptr<AutogradMeta> autograd;  // null until needed
};

// Contiguous row-major strides for a shape.
Dims contiguous_strides(const Dims& shape);
// Normalise a possibly negative axis against rank, naming `what` on error.
int normalize_axis(int axis, int rank, const char* what);
// Broadcast two shapes (NumPy rules); UserError names both shapes on mismatch.
Dims broadcast_shapes(const Dims& a, const Dims& b, const char* what);

std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace ssmtrain
