// Tensor metadata, creation, views (each recorded on the tape), and host access.
#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <numeric>
#include <sstream>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/profiler.h"

namespace ssmtrain {

// ---------------------------------------------------------------------------------------
// Dims

void Dims::push_back(int64_t v) {
  SSMT_CHECK(n_ < kMaxDims, "tensors have at most ", kMaxDims, " dimensions");
  d_[n_++] = v;
}

void Dims::insert(int pos, int64_t v) {
  SSMT_CHECK(n_ < kMaxDims, "tensors have at most ", kMaxDims, " dimensions");
  SSMT_ASSERT(pos >= 0 && pos <= n_);
  for (int i = n_; i > pos; --i) d_[i] = d_[i - 1];
  d_[pos] = v;
  ++n_;
}

void Dims::erase(int pos) {
  SSMT_ASSERT(pos >= 0 && pos < n_);
  for (int i = pos; i + 1 < n_; ++i) d_[i] = d_[i + 1];
  --n_;
}

bool Dims::operator==(const Dims& o) const {
  if (n_ != o.n_) return false;
  for (int i = 0; i < n_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

std::string Dims::str() const {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < n_; ++i) os << (i ? ", " : "") << d_[i];
  if (n_ == 1) os << ",";
  os << ")";
  return os.str();
}

Dims contiguous_strides(const Dims& shape) {
  Dims s = shape;
  int64_t acc = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return s;
}

int normalize_axis(int axis, int rank, const char* what) {
  int a = axis < 0 ? axis + rank : axis;
  SSMT_CHECK(a >= 0 && a < rank, what, ": axis ", axis, " is out of range for a tensor of rank ", rank);
  return a;
}

Dims broadcast_shapes(const Dims& a, const Dims& b, const char* what) {
  int n = std::max(a.size(), b.size());
  Dims out;
  for (int i = 0; i < n; ++i) {
    int ia = i - (n - a.size()), ib = i - (n - b.size());
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    SSMT_CHECK(da == db || da == 1 || db == 1, what, ": shapes ", a.str(), " and ", b.str(),
               " cannot be broadcast together (axis ", i, ": ", da, " vs ", db, ")");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Construction helpers

namespace {

Tensor make_view(const Tensor& base, Dims shape, Dims strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  impl->name = base.name();
  return Tensor(impl);
}

// Records a view's node when the base requires grad.
template <typename Fn>
void record_view(const char* name, const Tensor& base, const Tensor& out, Fn backward_of_grad) {
  if (!any_requires_grad({base})) return;
  record(name, {base}, {out}, [backward_of_grad](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    return {backward_of_grad(g[0])};
  });
}

}  // namespace

Tensor Tensor::empty(const Dims& shape, DType dtype, Device device) {
  for (int64_t d : shape) SSMT_CHECK(d >= 0, "cannot create a tensor of shape ", shape.str(), ": negative size");
  auto impl = std::make_shared<TensorImpl>();
  size_t nbytes = static_cast<size_t>(shape.numel() * dtype_size(dtype));
  impl->storage = std::make_shared<Storage>(nbytes, device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor Tensor::zeros(const Dims& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Dims& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Dims& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t.numel() > 0) backend(device).fill(t, value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full(Dims{}, value, dtype, device); }

Tensor Tensor::arange(double start, double end, double step, DType dtype, Device device) {
  SSMT_CHECK(step != 0, "arange: step must be non-zero");
  int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((end - start) / step)));
  Tensor t = empty({n}, dtype, device);
  if (n > 0) backend(device).arange(t, start, step);
  return t;
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Dims& shape, Device device) {
  SSMT_CHECK(static_cast<int64_t>(values.size()) == shape.numel(), "from_vector: ", values.size(),
             " values do not fill shape ", shape.str());
  Tensor host = empty(shape, dtype_of<T>::value, Device::cpu());
  std::copy(values.begin(), values.end(), host.data<T>());
  return device.is_cpu() ? host : host.to(device);
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Dims&, Device);
template Tensor Tensor::from_vector(const std::vector<double>&, const Dims&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Dims&, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Dims&, Device);
template Tensor Tensor::from_vector(const std::vector<bf16>&, const Dims&, Device);

Tensor Tensor::rand(const Dims& shape, Generator& gen, DType dtype, Device device, double low, double high) {
  Tensor t = empty(shape, dtype, device);
  uint64_t off = gen.advance(static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend(device).fill_uniform(t, gen.seed(), off, low, high);
  return t;
}

Tensor Tensor::randn(const Dims& shape, Generator& gen, DType dtype, Device device, double mean, double std) {
  Tensor t = empty(shape, dtype, device);
  uint64_t off = gen.advance(static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend(device).fill_normal(t, gen.seed(), off, mean, std);
  return t;
}

Tensor Tensor::randint(const Dims& shape, Generator& gen, int64_t low, int64_t high, DType dtype, Device device) {
  SSMT_CHECK(high > low, "randint: empty range [", low, ", ", high, ")");
  Tensor t = empty(shape, dtype, device);
  uint64_t off = gen.advance(static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend(device).fill_randint(t, gen.seed(), off, low, high);
  return t;
}

// ---------------------------------------------------------------------------------------
// Metadata

#define SSMT_REQUIRE_DEFINED(what) SSMT_CHECK(impl_, what, ": the tensor is undefined")

const Dims& Tensor::shape() const {
  SSMT_REQUIRE_DEFINED("shape");
  return impl_->shape;
}
const Dims& Tensor::strides() const {
  SSMT_REQUIRE_DEFINED("strides");
  return impl_->strides;
}
int64_t Tensor::size(int axis) const { return shape()[normalize_axis(axis, dim(), "size")]; }
int64_t Tensor::offset() const { return impl_->offset; }
DType Tensor::dtype() const {
  SSMT_REQUIRE_DEFINED("dtype");
  return impl_->dtype;
}
Device Tensor::device() const {
  SSMT_REQUIRE_DEFINED("device");
  return impl_->storage->device();
}
const std::shared_ptr<Storage>& Tensor::storage() const { return impl_->storage; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to address: any strides will do
  int64_t expect = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expect) return false;
    expect *= impl_->shape[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  SSMT_REQUIRE_DEFINED("data_ptr");
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * dtype_size(impl_->dtype);
}

template <typename T>
T* Tensor::data() const {
  SSMT_CHECK(dtype() == dtype_of<T>::value, describe(), ": accessed as ", dtype_name(dtype_of<T>::value));
  return static_cast<T*>(data_ptr());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int32_t* Tensor::data<int32_t>() const;
template int64_t* Tensor::data<int64_t>() const;
template bf16* Tensor::data<bf16>() const;

const std::string& Tensor::name() const {
  static const std::string none;
  return impl_ ? impl_->name : none;
}

Tensor& Tensor::set_name(std::string name) {
  impl_->name = std::move(name);
  return *this;
}

std::string Tensor::describe() const {
  if (!impl_) return "undefined tensor";
  std::string s = "tensor";
  if (!impl_->name.empty()) s += " '" + impl_->name + "'";
  return s + " " + shape().str() + " " + dtype_name(dtype()) + " " + device().str();
}

// ---------------------------------------------------------------------------------------
// Autograd fields

bool Tensor::requires_grad() const { return impl_ && impl_->autograd && impl_->autograd->requires_grad; }

Tensor& Tensor::requires_grad_(bool on) {
  SSMT_REQUIRE_DEFINED("requires_grad_");
  if (!impl_->autograd) impl_->autograd = std::make_shared<AutogradMeta>();
  SSMT_CHECK(impl_->autograd->is_leaf, describe(), ": requires_grad_ applies to leaves only");
  SSMT_CHECK(!on || is_floating(dtype()), describe(), ": only floating tensors can require grad");
  impl_->autograd->requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const { return !impl_ || !impl_->autograd || impl_->autograd->is_leaf; }

Tensor Tensor::grad() const {
  if (!impl_ || !impl_->autograd || !impl_->autograd->grad) return Tensor();
  return Tensor(impl_->autograd->grad);
}

void Tensor::set_grad(Tensor g) {
  SSMT_REQUIRE_DEFINED("set_grad");
  if (!impl_->autograd) impl_->autograd = std::make_shared<AutogradMeta>();
  if (g.defined()) {
    SSMT_CHECK(g.shape() == shape() && g.dtype() == dtype() && g.device() == device(), "gradient ",
               g.describe(), " does not match ", describe());
  }
  impl_->autograd->grad = g.impl_ptr();
}

void Tensor::zero_grad() {
  if (impl_ && impl_->autograd) impl_->autograd->grad.reset();
}

Tensor Tensor::detach() const {
  SSMT_REQUIRE_DEFINED("detach");
  return make_view(*this, impl_->shape, impl_->strides, impl_->offset);
}

// ---------------------------------------------------------------------------------------
// Views

Tensor Tensor::reshape(const Dims& new_shape_in) const {
  Dims new_shape = new_shape_in;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < new_shape.size(); ++i) {
    if (new_shape[i] == -1) {
      SSMT_CHECK(infer < 0, "reshape of ", describe(), " to ", new_shape_in.str(), ": only one -1 allowed");
      infer = i;
    } else {
      known *= new_shape[i];
    }
  }
  if (infer >= 0) {
    SSMT_CHECK(known > 0 && numel() % known == 0, "reshape of ", describe(), " to ", new_shape_in.str(),
               ": size is not divisible");
    new_shape[infer] = numel() / known;
  }
  SSMT_CHECK(new_shape.numel() == numel(), "reshape of ", describe(), " to ", new_shape_in.str(),
             ": element counts differ (", numel(), " vs ", new_shape.numel(), ")");
  Tensor src = is_contiguous() ? *this : contiguous();
  Tensor out = make_view(src, new_shape, contiguous_strides(new_shape), src.offset());
  Dims old_shape = shape();
  record_view("reshape", src, out, [old_shape](const Tensor& g) { return g.reshape(old_shape); });
  return out;
}

Tensor Tensor::flatten(int start, int end) const {
  if (dim() == 0) return reshape({1});
  int s = normalize_axis(start, dim(), "flatten"), e = normalize_axis(end, dim(), "flatten");
  Dims ns;
  for (int i = 0; i < s; ++i) ns.push_back(size(i));
  int64_t p = 1;
  for (int i = s; i <= e; ++i) p *= size(i);
  ns.push_back(p);
  for (int i = e + 1; i < dim(); ++i) ns.push_back(size(i));
  return reshape(ns);
}

Tensor Tensor::narrow(int axis, int64_t start, int64_t length) const {
  int a = normalize_axis(axis, dim(), "narrow");
  SSMT_CHECK(start >= 0 && length >= 0 && start + length <= size(a), "narrow of ", describe(), " on axis ", a,
             ": range [", start, ", ", start + length, ") is out of bounds");
  Dims ns = shape();
  ns[a] = length;
  Tensor out = make_view(*this, ns, strides(), offset() + start * strides()[a]);
  Dims full_shape = shape();
  DType dt = dtype();
  Device dev = device();
  record_view("narrow", *this, out, [=](const Tensor& g) {
    Tensor gx = Tensor::zeros(full_shape, dt, dev);
    backend(dev).copy(g, gx.narrow(a, start, length));
    return gx;
  });
  return out;
}

Tensor Tensor::select(int axis, int64_t index) const {
  int a = normalize_axis(axis, dim(), "select");
  if (index < 0) index += size(a);
  return narrow(a, index, 1).squeeze(a);
}

Tensor Tensor::permute(const Dims& order) const {
  SSMT_CHECK(order.size() == dim(), "permute of ", describe(), ": order ", order.str(), " has the wrong length");
  Dims ns, st, inverse = order;
  std::vector<bool> seen(dim(), false);
  for (int i = 0; i < dim(); ++i) {
    int a = normalize_axis(static_cast<int>(order[i]), dim(), "permute");
    SSMT_CHECK(!seen[a], "permute of ", describe(), ": axis ", a, " repeated in ", order.str());
    seen[a] = true;
    ns.push_back(size(a));
    st.push_back(strides()[a]);
    inverse[a] = i;
  }
  Tensor out = make_view(*this, ns, st, offset());
  record_view("permute", *this, out, [inverse](const Tensor& g) { return g.permute(inverse); });
  return out;
}

Tensor Tensor::transpose(int a, int b) const {
  Dims order;
  for (int i = 0; i < dim(); ++i) order.push_back(i);
  a = normalize_axis(a, dim(), "transpose");
  b = normalize_axis(b, dim(), "transpose");
  std::swap(order[a], order[b]);
  return permute(order);
}

Tensor Tensor::unsqueeze(int axis) const {
  int a = normalize_axis(axis, dim() + 1, "unsqueeze");
  Dims ns = shape(), st = strides();
  ns.insert(a, 1);
  st.insert(a, a < dim() ? strides()[a] * size(a) : 1);
  Tensor out = make_view(*this, ns, st, offset());
  record_view("unsqueeze", *this, out, [a](const Tensor& g) { return g.squeeze(a); });
  return out;
}

Tensor Tensor::squeeze(int axis) const {
  int a = normalize_axis(axis, dim(), "squeeze");
  SSMT_CHECK(size(a) == 1, "squeeze of ", describe(), ": axis ", a, " has size ", size(a), ", not 1");
  Dims ns = shape(), st = strides();
  ns.erase(a);
  st.erase(a);
  Tensor out = make_view(*this, ns, st, offset());
  record_view("squeeze", *this, out, [a](const Tensor& g) { return g.unsqueeze(a); });
  return out;
}

Tensor Tensor::expand(const Dims& target) const {
  SSMT_CHECK(target.size() >= dim(), "expand of ", describe(), " to ", target.str(), ": fewer dimensions");
  int lead = target.size() - dim();
  Dims st;
  for (int i = 0; i < target.size(); ++i) {
    if (i < lead) {
      st.push_back(0);
      continue;
    }
    int64_t d = size(i - lead);
    SSMT_CHECK(d == target[i] || d == 1, "expand of ", describe(), " to ", target.str(), ": axis ", i,
               " has size ", d);
    st.push_back(d == target[i] ? strides()[i - lead] : 0);
  }
  if (target == shape()) return *this;
  Tensor out = make_view(*this, target, st, offset());
  Dims old_shape = shape();
  record_view("expand", *this, out, [old_shape](const Tensor& g) { return sum_to_shape(g, old_shape); });
  return out;
}

namespace {

// Strides that give `shape` over the elements of a tensor of `old_shape`/`old_strides`
// without moving them, or false when there are none: runs of old axes that are contiguous
// with each other are re-cut into the new axes, which must fall inside one run each.
bool view_strides(const Dims& old_shape, const Dims& old_strides, const Dims& shape, Dims& strides) {
  strides = contiguous_strides(shape);
  if (old_shape.size() == 0 || old_shape.numel() == 0) return true;
  int vd = static_cast<int>(shape.size()) - 1;
  int64_t base = old_strides[old_shape.size() - 1], tensor_n = 1, view_n = 1;
  for (int td = static_cast<int>(old_shape.size()) - 1; td >= 0; --td) {
    tensor_n *= old_shape[td];
    if (td == 0 || (old_shape[td - 1] != 1 && old_strides[td - 1] != tensor_n * base)) {
      while (vd >= 0 && (view_n < tensor_n || shape[vd] == 1)) {
        strides[vd] = view_n * base;
        view_n *= shape[vd];
        --vd;
      }
      if (view_n != tensor_n) return false;
      if (td > 0) {
        base = old_strides[td - 1];
        tensor_n = view_n = 1;
      }
    }
  }
  return vd == -1;
}

}  // namespace

Tensor Tensor::view(const Dims& shape_in) const {
  if (is_contiguous()) return reshape(shape_in);
  Dims shape = shape_in;
  int64_t known = 1;
  int infer = -1;
  for (int i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1 && infer < 0) infer = i;
    else known *= shape[i];
  }
  if (infer >= 0) {
    if (known <= 0 || numel() % known != 0) return reshape(shape_in);  // reshape says what is wrong
    shape[infer] = numel() / known;
  }
  Dims st;
  if (shape.numel() != numel() || !view_strides(this->shape(), strides(), shape, st)) return reshape(shape_in);
  Tensor out = make_view(*this, shape, st, offset());
  Dims old_shape = this->shape();
  record_view("view", *this, out, [old_shape](const Tensor& g) { return g.reshape(old_shape); });
  return out;
}

std::vector<Tensor> Tensor::split(const std::vector<int64_t>& sizes, int axis) const {
  int a = normalize_axis(axis, dim(), "split");
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  SSMT_CHECK(total == size(a), "split of ", describe(), " on axis ", a, ": sizes add up to ", total, ", not ",
             size(a));
  // One tape node for all the parts (not one narrow each): the backward writes every
  // part's gradient into a single buffer, where separate narrows would each make a
  // zero-filled full-size gradient and then add them up.
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    Dims ns = shape();
    ns[a] = s;
    out.push_back(make_view(*this, ns, strides(), offset() + start * strides()[a]));
    start += s;
  }
  if (any_requires_grad({*this}) && !out.empty()) {
    const Dims full_shape = shape();
    const DType dt = dtype();
    const Device dev = device();
    record("split", {*this}, out, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gx = Tensor::empty(full_shape, dt, dev);
      int64_t at = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        // A part that no gradient reached arrives as zeros from the tape: copied like any other.
        if (sizes[i] > 0) backend(dev).copy(g[i], gx.narrow(a, at, sizes[i]));
        at += sizes[i];
      }
      return {gx};
    });
  }
  return out;
}

std::vector<Tensor> Tensor::chunk(int n, int axis) const {
  int a = normalize_axis(axis, dim(), "chunk");
  SSMT_CHECK(n > 0 && size(a) % n == 0, "chunk of ", describe(), ": axis ", a, " (", size(a),
             ") is not divisible into ", n, " chunks");
  return split(std::vector<int64_t>(n, size(a) / n), a);
}

// ---------------------------------------------------------------------------------------
// Copies

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  if (numel() > 0) backend(device()).copy(*this, out);
  record_view("clone", *this, out, [](const Tensor& g) { return g; });
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = empty(shape(), dt, device());
  if (numel() > 0) backend(device()).copy(*this, out);
  DType src = dtype();
  if (is_floating(dt) && is_floating(src))
    record_view("cast", *this, out, [src](const Tensor& g) { return g.to(src); });
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), dev);
  size_t n = nbytes();
  if (n > 0) {
    profiler::count_host_copy();
#if defined(SSMTRAIN_WITH_CUDA)
    if (src.device().is_cpu() && dev.is_cuda()) {
      backend(dev);
      cuda::memcpy_h2d(out.data_ptr(), src.data_ptr(), n, dev.index);
    } else if (src.device().is_cuda() && dev.is_cpu()) {
      cuda::memcpy_d2h(out.data_ptr(), src.data_ptr(), n, src.device().index);
    } else {
      Tensor host = src.to(Device::cpu());
      cuda::memcpy_h2d(out.data_ptr(), host.data_ptr(), n, dev.index);
    }
#else
    backend(dev);  // throws: no CUDA in this build
#endif
  }
  Device from = device();
  record_view("to_device", src, out, [from](const Tensor& g) { return g.to(from); });
  return out;
}

// ---------------------------------------------------------------------------------------
// Host access

template <typename T>
std::vector<T> Tensor::to_vector() const {
  NoGradGuard ng;
  Tensor host = to(Device::cpu());
  Tensor conv = Tensor::empty(shape(), dtype_of<T>::value, Device::cpu());
  if (numel() > 0) backend(Device::cpu()).copy(host, conv);
  const T* p = conv.data<T>();
  return std::vector<T>(p, p + numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<bf16> Tensor::to_vector<bf16>() const;

template <typename T>
T Tensor::item() const {
  SSMT_CHECK(numel() == 1, "item() of ", describe(), ": the tensor has ", numel(), " elements, not 1");
  return to_vector<T>()[0];
}
template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int32_t Tensor::item<int32_t>() const;
template int64_t Tensor::item<int64_t>() const;

namespace {
void print_rec(std::ostream& os, const std::vector<double>& v, const Dims& shape, int axis, int64_t base,
               int64_t stride, int max_per_dim, bool integral) {
  if (axis == shape.size()) {
    if (integral)
      os << static_cast<int64_t>(v[base]);
    else
      os << std::setprecision(5) << v[base];
    return;
  }
  int64_t n = shape[axis], inner = stride / std::max<int64_t>(n, 1);
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (n > max_per_dim && i == max_per_dim / 2) {
      os << "..., ";
      i = n - max_per_dim / 2;
    }
    print_rec(os, v, shape, axis + 1, base + i * inner, inner, max_per_dim, integral);
    if (i + 1 < n) os << ", ";
  }
  os << "]";
}
}  // namespace

std::string Tensor::str(int max_per_dim) const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(shape=" << shape().str() << ", dtype=" << dtype_name(dtype()) << ", device=" << device().str();
  if (!name().empty()) os << ", name=" << name();
  os << ")\n";
  std::vector<double> v = to_vector<double>();
  print_rec(os, v, shape(), 0, 0, numel(), max_per_dim, !is_floating(dtype()));
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace ssmtrain
