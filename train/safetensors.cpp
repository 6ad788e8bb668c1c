#include "train/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "core/error.h"
#include "train/json.h"

namespace ssmtrain {

namespace {

// The largest header we accept: the format's own reader caps it at 100 MB.
constexpr uint64_t kMaxHeader = 100'000'000;

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      uint32_t m = mant;
      do {
        ++e;
        m <<= 1;
      } while (!(m & 0x400));
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (m & 0x3FF) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw std::system_error(errno, std::generic_category(), "writing '" + path + "'");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Writes the pieces in order to path.tmp, fsyncs, renames onto path and fsyncs the directory.
void write_pieces_atomically(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SSMT_CHECK(fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
  try {
    for (const auto& [p, n] : pieces) write_all(fd, p, n, tmp);
    if (::fsync(fd) != 0) throw std::system_error(errno, std::generic_category(), "fsync of '" + tmp + "'");
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw std::system_error(err, std::generic_category(), "renaming '" + tmp + "' to '" + path + "'");
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

int64_t safetensors_dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  throw UserError("unsupported safetensors dtype '" + dtype + "'");
}

int64_t SafeTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<float> SafeTensor::to_f32(const std::string& what) const {
  const size_t n = static_cast<size_t>(numel());
  std::vector<float> out(n);
  if (dtype == "F32") {
    if (n) std::memcpy(out.data(), bytes.data(), n * 4);
  } else if (dtype == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, bytes.data() + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  } else if (dtype == "BF16" || dtype == "F16") {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      if (dtype == "BF16") {
        uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, 4);
      } else {
        out[i] = half_to_float(h);
      }
    }
  } else {
    throw UserError(what + ": holds " + dtype + " values, expected a floating-point type (F32, F16, BF16, F64)");
  }
  return out;
}

SafeTensor SafeTensor::from_f32(const std::vector<float>& values, std::vector<int64_t> shape) {
  SafeTensor t{"F32", std::move(shape), {}};
  SSMT_ASSERT(t.numel() == static_cast<int64_t>(values.size()), "SafeTensor::from_f32: shape holds ", t.numel(),
              " elements, values ", values.size());
  t.bytes.resize(values.size() * 4);
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

void write_safetensors(const std::string& path, const SafeTensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  static_assert(std::endian::native == std::endian::little, "safetensors are little-endian; so is this writer");
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    SSMT_ASSERT(static_cast<int64_t>(t.bytes.size()) == t.numel() * safetensors_dtype_size(t.dtype), name);
    const uint64_t end = offset + t.bytes.size();
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", Json::array({offset, end})}};
    offset = end;
  }
  std::string json = header.dump();
  // Padding the header to 8 bytes keeps every tensor 8-byte aligned when the file is mapped.
  json.append((8 - json.size() % 8) % 8, ' ');
  uint8_t len[8];
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  std::vector<std::pair<const void*, size_t>> pieces = {{len, 8}, {json.data(), json.size()}};
  for (const auto& [name, t] : tensors)
    if (!t.bytes.empty()) pieces.emplace_back(t.bytes.data(), t.bytes.size());
  write_pieces_atomically(path, pieces);
}

SafeTensorMap read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  SSMT_CHECK(std::filesystem::exists(path), "safetensors file '", path, "': no such file");
  std::ifstream in(path, std::ios::binary);
  SSMT_CHECK(in.good(), "safetensors file '", path, "': cannot open it");
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  SSMT_CHECK(size >= 8, "safetensors file '", path, "' is too short (", size, " bytes) to hold a header");
  uint8_t len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  SSMT_CHECK(n >= 2 && n <= kMaxHeader && n <= size - 8, "safetensors file '", path, "': header length ", n,
             " does not fit the file of ", size, " bytes (not a safetensors file?)");
  std::string json(n, '\0');
  in.read(json.data(), static_cast<std::streamsize>(n));
  SSMT_CHECK(in.good(), "safetensors file '", path, "': cannot read its header");
  const std::string source = "safetensors header of '" + path + "'";
  const Json header = parse_json(json, source);
  const uint64_t data_size = size - 8 - n;
  SafeTensorMap out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : json_object(header, source).items()) {
    const std::string what = "safetensors file '" + path + "': tensor '" + name + "'";
    if (name == "__metadata__") {
      if (metadata)
        for (const auto& [k, v] : json_object(entry, what).items())
          (*metadata)[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    SSMT_CHECK(json_find(entry, "dtype") && json_find(entry, "shape") && json_find(entry, "data_offsets"), what,
               ": expected {dtype, shape, data_offsets}");
    SafeTensor t;
    t.dtype = json_string(entry["dtype"], what + " dtype");
    int64_t elem;
    try {
      elem = safetensors_dtype_size(t.dtype);
    } catch (const UserError& e) {
      throw UserError(what + ": " + e.what());
    }
    for (const Json& d : json_array(entry["shape"], what + " shape")) {
      t.shape.push_back(json_int(d, what + " shape"));
      SSMT_CHECK(t.shape.back() >= 0, what, ": negative dimension in its shape");
    }
    const Json& off = json_array(entry["data_offsets"], what + " data_offsets");
    SSMT_CHECK(off.size() == 2, what, ": data_offsets must hold [begin, end]");
    const int64_t b = json_int(off[0], what + " data_offsets"), e = json_int(off[1], what + " data_offsets");
    SSMT_CHECK(b >= 0 && e >= b && static_cast<uint64_t>(e) <= data_size, what, ": data_offsets [", b, ", ", e,
               "] lie outside the data area of ", data_size, " bytes (truncated file?)");
    SSMT_CHECK(e - b == t.numel() * elem, what, ": shape and dtype need ", t.numel() * elem,
               " bytes, data_offsets give ", e - b);
    ranges.emplace_back(b, e);
    t.bytes.resize(static_cast<size_t>(e - b));
    in.seekg(static_cast<std::streamoff>(8 + n + static_cast<uint64_t>(b)));
    in.read(reinterpret_cast<char*>(t.bytes.data()), e - b);
    SSMT_CHECK(in.good() || e == b, what, ": cannot read its bytes");
    out.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    SSMT_CHECK(ranges[i].first >= ranges[i - 1].second, "safetensors file '", path, "': tensors overlap in the data");
  return out;
}

void write_file_atomically(const std::string& path, const std::string& text) {
  write_pieces_atomically(path, {{text.data(), text.size()}});
}

}  // namespace ssmtrain
