// The safetensors file format (SPECS section 11), read and written here without the
// Python package: an 8-byte little-endian header length N, N bytes of JSON
//
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"format": "pt"}}
//
// padded with spaces to a multiple of 8, then the raw little-endian tensor bytes, offsets
// counted from the first byte after the header. Tensors are written in name order,
// back to back, so the file is the same bytes for the same tensors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ssmtrain {

struct SafeTensor {
  std::string dtype;           // safetensors' names: "F32", "F16", "BF16", "F64", "I64", "I32", ...
  std::vector<int64_t> shape;  // row-major
  std::vector<uint8_t> bytes;  // numel * element size, little-endian

  int64_t numel() const;
  // The values as f32, converting F16/BF16/F64; UserError naming `what` for other dtypes.
  std::vector<float> to_f32(const std::string& what) const;
  static SafeTensor from_f32(const std::vector<float>& values, std::vector<int64_t> shape);
};

using SafeTensorMap = std::map<std::string, SafeTensor>;

// Bytes per element of a safetensors dtype; UserError for a dtype this reader does not know.
int64_t safetensors_dtype_size(const std::string& dtype);

// Writes the file atomically (temp file, fsync, rename). `metadata` becomes __metadata__.
void write_safetensors(const std::string& path, const SafeTensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Reads and checks the whole file: header length within the file, valid JSON, every entry
// with a known dtype, a shape whose size matches its data_offsets, offsets inside the data
// area and not overlapping. Errors are UserErrors naming the file and the tensor.
SafeTensorMap read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);

// Writes `text` to `path` through a temp file, fsync and rename.
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace ssmtrain
