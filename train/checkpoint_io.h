// The checkpoint file layer: named host arrays, strings and attributes in one HDF5 file,
// written atomically and checked on the way back in (layout: docs/checkpoint.md).
//
// It knows nothing of tensors, models or optimizers: the trainer copies parameters,
// optimizer state and its own counters into host arrays and attributes under slash paths
// such as "model/layers.0.mixer.A_log", and reads them back by the same names. Keeping this
// layer ignorant of the tensor library lets its guarantees (no partial file ever replaces a
// good one; a damaged file is reported, never half-loaded) be tested on their own.
//
// HDF5 built without thread safety (the Debian/Ubuntu serial build) must be used by one
// thread at a time; the trainer writes and reads checkpoints from one thread only.
#pragma once

#include <concepts>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace ssmtrain {

// Our element types and their C++ carriers. bf16 values travel as their raw 16-bit patterns
// (uint16_t) because this layer does not use the tensor library's bf16 type.
template <typename T>
constexpr const char* host_dtype_name() {
  if constexpr (std::is_same_v<T, float>)
    return "f32";
  else if constexpr (std::is_same_v<T, double>)
    return "f64";
  else if constexpr (std::is_same_v<T, int32_t>)
    return "i32";
  else if constexpr (std::is_same_v<T, int64_t>)
    return "i64";
  else if constexpr (std::is_same_v<T, uint16_t>)
    return "bf16";
  else if constexpr (std::is_same_v<T, uint8_t>)
    return "u8";
  else
    static_assert(sizeof(T) == 0, "no checkpoint dtype for this C++ type");
}
bool is_host_dtype(const std::string& dtype);
int64_t host_dtype_size(const std::string& dtype);  // bytes per element; UserError if unknown

// A dense row-major array in host memory. An empty shape is a 0-d scalar (one element); a
// zero anywhere in the shape means no elements.
struct HostArray {
  std::string dtype;           // "f32", "f64", "i32", "i64", "bf16", "u8"
  std::vector<int64_t> shape;  // e.g. (n_layer, d_inner, d_state)
  std::vector<uint8_t> bytes;  // (numel * host_dtype_size(dtype)) little-endian element bytes

  int64_t numel() const;

  template <typename T>
  static HostArray from_vector(const std::vector<T>& values, std::vector<int64_t> shape) {
    HostArray a{host_dtype_name<T>(), std::move(shape), {}};
    SSMT_ASSERT(a.numel() == static_cast<int64_t>(values.size()), "HostArray::from_vector: shape holds ", a.numel(),
                " elements, values hold ", values.size());
    a.bytes.resize(values.size() * sizeof(T));
    if (!values.empty()) std::memcpy(a.bytes.data(), values.data(), a.bytes.size());
    return a;
  }
  template <typename T>
  static HostArray from_vector(const std::vector<T>& values) {  // 1-d
    return from_vector(values, {static_cast<int64_t>(values.size())});
  }

  // The elements as T; UserError when T is not this array's dtype (a checkpoint written with
  // other settings), so callers that know the dataset path should check dtype first.
  template <typename T>
  std::vector<T> as() const {
    SSMT_CHECK(dtype == host_dtype_name<T>(), "array holds ", dtype, " values, expected ", host_dtype_name<T>());
    std::vector<T> out(bytes.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  }
};

// Writes `<final_path>.tmp`; commit() makes it `final_path` atomically. Until then a crash,
// an exception or destruction leaves any existing `final_path` as it was and removes the
// temp file. A temp file that cannot be created (missing or read-only directory) throws
// UserError naming it; a failure while writing it (disk full, file size limit, I/O error)
// throws std::system_error naming the file and the reason, which the CLI reports with exit
// code 1; misuse (a path written twice, an unknown dtype) throws InternalError.
//
// The file is assembled in memory (HDF5's core driver, about the checkpoint's size in host
// memory) and written to the temp file with write(2) at commit. HDF5 itself never touches
// the disk, so a full disk is an error of ours and never a failed H5Fclose: HDF5 1.10 frees
// a file whose close fails but keeps its id, and its exit-time cleanup then crashes.
//
// Paths are slash-separated ("model/layers.0.mixer.A_log"); groups along the way are
// created on demand. Dots in names are ordinary characters.
class CheckpointWriter {
 public:
  explicit CheckpointWriter(std::string final_path);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // data: (shape...) contiguous row-major elements of dtype; may be null when numel is 0.
  void write_array(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
                   const void* data);
  void write_array(const std::string& path, const HostArray& array);
  // A scalar string dataset (e.g. "config", the resolved YAML). Text must not contain NUL.
  void write_string(const std::string& path, const std::string& text);

  // Attributes on the root ("" or "/"), a group or a dataset; a missing path is created as a
  // group. Rewriting a name replaces the value. Integers keep their signedness, so a
  // uint64 RNG seed round-trips exactly through attr_uint.
  template <std::integral T>
  requires(!std::same_as<T, bool>) void write_attr(const std::string& path, const std::string& name, T value) {
    if constexpr (std::is_signed_v<T>)
      write_attr_signed(path, name, static_cast<int64_t>(value));
    else
      write_attr_unsigned(path, name, static_cast<uint64_t>(value));
  }
  void write_attr(const std::string& path, const std::string& name, double value);
  void write_attr(const std::string& path, const std::string& name, const std::string& value);
  void write_attr(const std::string& path, const std::string& name, const char* value) {
    write_attr(path, name, std::string(value));
  }

  // Stores num_datasets, closes the in-memory file, writes its bytes to the temp file,
  // fsyncs it, renames it onto final_path and fsyncs the directory.
  void commit();

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void write_attr_signed(const std::string& path, const std::string& name, int64_t value);
  void write_attr_unsigned(const std::string& path, const std::string& name, uint64_t value);
  // file_type / mem_type are HDF5 type ids (hid_t), kept out of this header.
  void write_attr_value(const std::string& path, const std::string& name, int64_t file_type, int64_t mem_type,
                        const void* value);
  // std::system_error naming the file with strerror(os_error) when given; else a
  // std::runtime_error with HDF5's own reason.
  [[noreturn]] void fail(const std::string& what, int os_error = 0) const;

  struct MemoryImage;  // the in-memory file's bytes (train/checkpoint_io.cpp)

  std::string final_path_;
  std::string temp_path_;
  std::unique_ptr<MemoryImage> image_;
  int64_t file_ = -1;  // hid_t of the in-memory HDF5 file; -1 once closed
  int fd_ = -1;        // the temp file, open from construction until commit
  int64_t num_datasets_ = 0;
  bool committed_ = false;
};

// Opens a checkpoint read-only and checks that it is one: a missing file, a file HDF5 cannot
// read (truncated, overwritten), a foreign format or a newer format_version each throw a
// UserError naming the file. Data damage inside a readable file is found by verify().
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(CheckpointReader&& other) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) = delete;
  CheckpointReader(const CheckpointReader&) = delete;

  const std::string& path() const { return path_; }

  bool has(const std::string& path) const;  // a dataset or group exists there
  // Dataset paths under a group ("" or "/" for the whole file), recursively, relative to the
  // group and sorted: list("optim") -> {"exp_avg/layers.0.mixer.A_log", ...}.
  std::vector<std::string> list(const std::string& group) const;
  HostArray read_array(const std::string& path) const;
  std::string read_string(const std::string& path) const;

  bool has_attr(const std::string& path, const std::string& name) const;
  int64_t attr_int(const std::string& path, const std::string& name) const;
  uint64_t attr_uint(const std::string& path, const std::string& name) const;
  double attr_double(const std::string& path, const std::string& name) const;
  std::string attr_string(const std::string& path, const std::string& name) const;

  // Re-reads every dataset and checks it against its crc32 attribute, and the dataset count
  // against num_datasets; throws UserError naming the first bad dataset.
  void verify() const;

 private:
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  int64_t file_ = -1;  // hid_t
};

// ---- Run directories: <dir>/ckpt_<step, 8 digits>.h5 -------------------------------------

std::string checkpoint_path(const std::string& dir, int64_t step);
// The step of a checkpoint file name, or nullopt if the name is not ckpt_<digits>.h5.
std::optional<int64_t> checkpoint_step(const std::string& path);
// Checkpoint files in dir, oldest step first; empty when dir does not exist.
std::vector<std::string> list_checkpoints(const std::string& dir);
// Deletes all checkpoints but the newest keep_last (keep_last <= 0 keeps them all); other
// files, temp files included, are never touched. Returns the paths it deleted.
std::vector<std::string> prune_checkpoints(const std::string& dir, int64_t keep_last);
// The newest checkpoint that opens and verifies. Each newer one that fails is skipped and
// its error message (which names the file) appended to skipped_messages when given.
std::optional<std::string> newest_valid_checkpoint(const std::string& dir,
                                                   std::vector<std::string>* skipped_messages = nullptr);

}  // namespace ssmtrain
