#include "train/checkpoint_io.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace ssmtrain {

namespace fs = std::filesystem;

static_assert(std::is_same_v<hid_t, int64_t>, "the header stores HDF5 ids as int64_t (hid_t since HDF5 1.10)");
// Element bytes, and the crc32 over them, are defined little-endian; a big-endian host
// would need to swap before hashing.
static_assert(std::endian::native == std::endian::little);

namespace {

constexpr const char* kFormat = "ssmtrain-checkpoint";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kStringDtype = "str";  // the dtype attribute of string datasets

// Owns one HDF5 id and releases it with the matching H5*close.
class H5Handle {
 public:
  H5Handle() = default;
  H5Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Handle(H5Handle&& other) noexcept : id_(std::exchange(other.id_, -1)), close_(other.close_) {}
  H5Handle& operator=(H5Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, -1);
      close_ = other.close_;
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  ~H5Handle() { reset(); }
  void reset() {
    if (id_ >= 0) close_(id_);
    id_ = -1;
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Users see our messages, not HDF5's stack dump; the library's own reason is appended to
// write failures through hdf5_error_detail().
void silence_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The most specific entry of HDF5's error stack (e.g. "No space left on device"), then clears it.
std::string hdf5_error_detail() {
  std::string detail;
  auto take_innermost = [](unsigned, const H5E_error2_t* err, void* out) -> herr_t {
    auto* text = static_cast<std::string*>(out);
    if (text->empty() && err->desc) *text = err->desc;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, take_innermost, &detail);
  H5Eclear2(H5E_DEFAULT);
  return detail;
}

struct DtypeInfo {
  int64_t size;
  hid_t file_type;  // little-endian standard type stored in the file
  hid_t mem_type;   // native type handed to H5Dread/H5Dwrite
  H5T_class_t type_class;
  H5T_sign_t sign;  // H5T_SGN_ERROR for floats (not compared)
};

// bf16 has no HDF5 type: its bit patterns are stored as uint16 and the dtype attribute says
// what they mean.
DtypeInfo dtype_info(const std::string& dtype) {
  if (dtype == "f32") return {4, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, H5T_FLOAT, H5T_SGN_ERROR};
  if (dtype == "f64") return {8, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, H5T_FLOAT, H5T_SGN_ERROR};
  if (dtype == "i32") return {4, H5T_STD_I32LE, H5T_NATIVE_INT32, H5T_INTEGER, H5T_SGN_2};
  if (dtype == "i64") return {8, H5T_STD_I64LE, H5T_NATIVE_INT64, H5T_INTEGER, H5T_SGN_2};
  if (dtype == "bf16") return {2, H5T_STD_U16LE, H5T_NATIVE_UINT16, H5T_INTEGER, H5T_SGN_NONE};
  if (dtype == "u8") return {1, H5T_STD_U8LE, H5T_NATIVE_UINT8, H5T_INTEGER, H5T_SGN_NONE};
  throw UserError("unknown checkpoint dtype '" + dtype + "' (expected f32, f64, i32, i64, bf16 or u8)");
}

uint32_t crc32_of(const void* data, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {  // zlib takes uInt lengths
    uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

// "a/b/c" or "/a/b/c" -> "/a/b/c"; "" and "/" -> "/". Names come from code (parameter
// names), so a malformed one is a bug, not a user mistake.
std::string absolute_path(const std::string& path) {
  std::string rel = (!path.empty() && path[0] == '/') ? path.substr(1) : path;
  if (rel.empty()) return "/";
  size_t start = 0;
  while (true) {
    size_t slash = rel.find('/', start);
    std::string part = rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    SSMT_ASSERT(!part.empty() && part != "." && part != "..", "checkpoint path '", path,
                "' has an empty, '.' or '..' component");
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return "/" + rel;
}

std::string display_path(const std::string& abs) { return abs == "/" ? "/" : abs.substr(1); }

// H5Lexists fails rather than answering false when a parent group is missing, so each
// prefix is checked in turn.
bool path_exists(hid_t file, const std::string& abs) {
  if (abs == "/") return true;
  for (size_t slash = abs.find('/', 1);; slash = abs.find('/', slash + 1)) {
    std::string prefix = abs.substr(0, slash);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) return true;
  }
}

H5Handle link_create_plist() {
  H5Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Pset_char_encoding(lcpl.get(), H5T_CSET_UTF8);
  return lcpl;
}

// Strings are fixed-length (not variable-length) so their bytes sit in the dataset's data
// or the object header, both covered by a checksum, instead of an unchecked global heap.
H5Handle fixed_string_type(size_t length) {
  H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(length, 1));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  return type;
}

H5Handle file_access_plist() {
  H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // The 1.8 object formats checksum the superblock and object headers; data is covered by
  // our crc32 attributes. Fixing both bounds keeps the files readable by HDF5 1.8 and later.
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18);
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
  // Lock where the file system supports it, and carry on where it does not (NFS, Lustre).
  H5Pset_file_locking(fapl.get(), true, true);
#endif
  return fapl;
}

// HDF5 1.8 formats put a version 2 superblock at offset 0: signature (8 bytes), version,
// sizes of offsets and lengths, consistency flags (1 byte each), then the base address, the
// extension address and the end-of-file address (8 bytes each, little-endian). The last is
// the file's length; HDF5 refuses a file shorter than it as truncated.
std::optional<size_t> superblock_file_length(const unsigned char* image, size_t capacity) {
  static constexpr unsigned char kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  constexpr size_t kEndOfFileAt = 28;
  if (image == nullptr || capacity < kEndOfFileAt + 8 || std::memcmp(image, kSignature, 8) != 0 || image[8] != 2 ||
      image[9] != 8)
    return std::nullopt;
  uint64_t base = 0, end = 0;
  std::memcpy(&base, image + 12, 8);
  std::memcpy(&end, image + kEndOfFileAt, 8);
  if (base != 0 || end < kEndOfFileAt + 8 || end > capacity) return std::nullopt;
  return static_cast<size_t>(end);
}

// Replaces attribute `name` on obj with a scalar of file_type, written from value.
bool set_attr(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type, const void* value) {
  if (H5Aexists(obj, name.c_str()) > 0 && H5Adelete(obj, name.c_str()) < 0) return false;
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle attr(H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  return attr.ok() && H5Awrite(attr.get(), mem_type, value) >= 0;
}

bool set_attr_string(hid_t obj, const std::string& name, const std::string& value) {
  H5Handle type = fixed_string_type(value.size());
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  return set_attr(obj, name, type.get(), type.get(), padded.data());
}

bool is_reserved_attr(const std::string& abs, const std::string& name) {
  if (name == "dtype" || name == "crc32") return true;
  return abs == "/" && (name == "format" || name == "format_version" || name == "num_datasets");
}

const char* describe_type_class(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER:
      return "an integer";
    case H5T_FLOAT:
      return "a floating-point number";
    case H5T_STRING:
      return "a string";
    default:
      return "of another HDF5 type";
  }
}

}  // namespace

bool is_host_dtype(const std::string& dtype) {
  return dtype == "f32" || dtype == "f64" || dtype == "i32" || dtype == "i64" || dtype == "bf16" || dtype == "u8";
}

int64_t host_dtype_size(const std::string& dtype) { return dtype_info(dtype).size; }

int64_t HostArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- CheckpointWriter ----------------------------------------------------------------------

// The buffer of the core driver's in-memory file. HDF5 grows it through these callbacks and
// hands it over at close (H5FD_FILE_IMAGE_OP_FILE_CLOSE) instead of freeing it, so commit()
// writes the bytes without a second copy.
struct CheckpointWriter::MemoryImage {
  void* data = nullptr;
  size_t capacity = 0;    // bytes allocated, at least the file's length
  bool released = false;  // HDF5 closed the file and left the buffer to us

  MemoryImage() = default;
  MemoryImage(const MemoryImage&) = delete;
  MemoryImage& operator=(const MemoryImage&) = delete;
  ~MemoryImage() { reset(); }

  void reset() {
    std::free(data);
    data = nullptr;
    capacity = 0;
  }

  // The callbacks HDF5 calls with this object as udata; property lists share it rather
  // than copying it.
  H5FD_file_image_callbacks_t callbacks() {
    H5FD_file_image_callbacks_t c{};
    c.image_malloc = [](size_t size, H5FD_file_image_op_t, void* self) -> void* {
      return static_cast<MemoryImage*>(self)->grow(nullptr, size);
    };
    c.image_memcpy = [](void* dest, const void* src, size_t size, H5FD_file_image_op_t, void*) -> void* {
      return std::memcpy(dest, src, size);
    };
    c.image_realloc = [](void* ptr, size_t size, H5FD_file_image_op_t, void* self) -> void* {
      return static_cast<MemoryImage*>(self)->grow(ptr, size);
    };
    c.image_free = [](void* ptr, H5FD_file_image_op_t op, void* udata) -> herr_t {
      auto* self = static_cast<MemoryImage*>(udata);
      if (ptr == self->data && op == H5FD_FILE_IMAGE_OP_FILE_CLOSE) {
        self->released = true;  // kept for commit(); freed by reset()
        return 0;
      }
      if (ptr == self->data) {
        self->data = nullptr;
        self->capacity = 0;
      }
      std::free(ptr);
      return 0;
    };
    c.udata_copy = [](void* self) -> void* { return self; };
    c.udata_free = [](void*) -> herr_t { return 0; };
    c.udata = this;
    return c;
  }

 private:
  void* grow(void* ptr, size_t size) {
    void* grown = std::realloc(ptr, std::max<size_t>(size, 1));
    if (grown == nullptr) return nullptr;
    data = grown;
    capacity = size;
    return grown;
  }
};

namespace {
// A core-driver (in-memory) file whose buffer grows through `callbacks`; nothing is
// written to disk by HDF5.
H5Handle memory_file_access_plist(const H5FD_file_image_callbacks_t& callbacks) {
  H5Handle fapl = file_access_plist();
  constexpr size_t kGrowBy = size_t{1} << 20;
  if (H5Pset_fapl_core(fapl.get(), kGrowBy, /*backing_store=*/false) < 0) return {};
  H5FD_file_image_callbacks_t c = callbacks;
  if (H5Pset_file_image_callbacks(fapl.get(), &c) < 0) return {};
  return fapl;
}

// write(2) until every byte is out; 0 on success, else errno.
int write_all(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}
}  // namespace

CheckpointWriter::CheckpointWriter(std::string final_path)
    : final_path_(std::move(final_path)), temp_path_(final_path_ + ".tmp"), image_(std::make_unique<MemoryImage>()) {
  silence_hdf5_errors();
  SSMT_ASSERT(!final_path_.empty(), "CheckpointWriter: empty path");
  fs::path dir = fs::path(final_path_).parent_path();
  std::error_code ec;
  SSMT_CHECK(dir.empty() || fs::is_directory(dir, ec), "checkpoint '", final_path_, "': directory '", dir.string(),
             "' does not exist");
  // The temp file is created now, so an unwritable directory is reported before any work.
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw UserError("writing checkpoint '" + final_path_ + "': could not create the temp file '" + temp_path_ +
                    "': " + std::strerror(errno));
  try {
    H5Handle fapl = memory_file_access_plist(image_->callbacks());
    if (!fapl.ok()) fail("could not set up the in-memory file");
    file_ = H5Fcreate(temp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
    if (file_ < 0) fail("could not create the in-memory file");
    int64_t version = kFormatVersion;
    if (!set_attr_string(file_, "format", kFormat) ||
        !set_attr(file_, "format_version", H5T_STD_I64LE, H5T_NATIVE_INT64, &version))
      fail("could not write the root attributes");
  } catch (...) {
    if (file_ >= 0) H5Fclose(file_);
    file_ = -1;
    ::close(fd_);
    fd_ = -1;
    fs::remove(temp_path_, ec);
    throw;
  }
}

CheckpointWriter::~CheckpointWriter() {
  if (file_ >= 0) H5Fclose(file_);  // in memory: closing cannot fail for lack of disk space
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    fs::remove(temp_path_, ec);  // best effort: a destructor must not throw
  }
}

void CheckpointWriter::fail(const std::string& what, int os_error) const {
  std::string where = "writing checkpoint '" + final_path_ + "' (temp file '" + temp_path_ + "'): " + what;
  if (os_error) throw std::system_error(os_error, std::generic_category(), where);
  std::string detail = hdf5_error_detail();
  throw std::runtime_error(where + (detail.empty() ? "" : ": " + detail));
}

void CheckpointWriter::write_array(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
                                   const void* data) {
  SSMT_ASSERT(file_ >= 0 && !committed_, "CheckpointWriter: write of '", path, "' after commit");
  SSMT_ASSERT(is_host_dtype(dtype), "checkpoint dataset '", path, "': unknown dtype '", dtype, "'");
  SSMT_ASSERT(shape.size() <= H5S_MAX_RANK, "checkpoint dataset '", path, "': rank ", shape.size(), " is too high");
  std::string abs = absolute_path(path);
  SSMT_ASSERT(abs != "/" && !path_exists(file_, abs), "checkpoint dataset '", path,
              "' is written twice (or names a group)");
  int64_t numel = 1;
  std::vector<hsize_t> dims;
  for (int64_t d : shape) {
    SSMT_ASSERT(d >= 0, "checkpoint dataset '", path, "': negative dimension ", d);
    numel *= d;
    dims.push_back(static_cast<hsize_t>(d));
  }
  SSMT_ASSERT(numel == 0 || data != nullptr, "checkpoint dataset '", path, "': null data");
  DtypeInfo info = dtype_info(dtype);

  H5Handle space(
      shape.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
      H5Sclose);
  H5Handle lcpl = link_create_plist();
  H5Handle ds(H5Dcreate2(file_, abs.c_str(), info.file_type, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
  if (!ds.ok()) fail("could not create dataset '" + path + "'");
  if (numel > 0 && H5Dwrite(ds.get(), info.mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail("could not write dataset '" + path + "'");
  uint32_t crc = crc32_of(data, static_cast<size_t>(numel * info.size));
  if (!set_attr_string(ds.get(), "dtype", dtype) ||
      !set_attr(ds.get(), "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, &crc))
    fail("could not write the attributes of dataset '" + path + "'");
  ++num_datasets_;
}

void CheckpointWriter::write_array(const std::string& path, const HostArray& array) {
  SSMT_ASSERT(static_cast<int64_t>(array.bytes.size()) == array.numel() * host_dtype_size(array.dtype),
              "checkpoint dataset '", path, "': HostArray holds ", array.bytes.size(), " bytes for ", array.numel(),
              " elements of ", array.dtype);
  write_array(path, array.dtype, array.shape, array.bytes.data());
}

void CheckpointWriter::write_string(const std::string& path, const std::string& text) {
  SSMT_ASSERT(file_ >= 0 && !committed_, "CheckpointWriter: write of '", path, "' after commit");
  std::string abs = absolute_path(path);
  SSMT_ASSERT(abs != "/" && !path_exists(file_, abs), "checkpoint dataset '", path, "' is written twice");
  // Fixed-length strings lose trailing NULs on the way back; no text we store has any.
  SSMT_CHECK(text.find('\0') == std::string::npos, "checkpoint string '", path, "' contains a NUL byte");

  H5Handle type = fixed_string_type(text.size());
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle lcpl = link_create_plist();
  H5Handle ds(H5Dcreate2(file_, abs.c_str(), type.get(), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) fail("could not create string dataset '" + path + "'");
  std::string padded = text.empty() ? std::string(1, '\0') : text;
  if (H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data()) < 0)
    fail("could not write string dataset '" + path + "'");
  uint32_t crc = crc32_of(text.data(), text.size());
  if (!set_attr_string(ds.get(), "dtype", kStringDtype) ||
      !set_attr(ds.get(), "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, &crc))
    fail("could not write the attributes of dataset '" + path + "'");
  ++num_datasets_;
}

namespace {
// Opens the object at abs for attribute writing, creating it as a group when missing.
H5Handle open_or_create_object(hid_t file, const std::string& abs) {
  if (!path_exists(file, abs)) {
    H5Handle lcpl = link_create_plist();
    H5Handle group(H5Gcreate2(file, abs.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    if (!group.ok()) return {};
  }
  return H5Handle(H5Oopen(file, abs.c_str(), H5P_DEFAULT), H5Oclose);
}
}  // namespace

void CheckpointWriter::write_attr_value(const std::string& path, const std::string& name, int64_t file_type,
                                        int64_t mem_type, const void* value) {
  SSMT_ASSERT(file_ >= 0 && !committed_, "CheckpointWriter: attribute '", name, "' written after commit");
  std::string abs = absolute_path(path);
  SSMT_ASSERT(!is_reserved_attr(abs, name), "checkpoint attribute '", name, "' is reserved for the file layer");
  H5Handle obj = open_or_create_object(file_, abs);
  if (!obj.ok() || !set_attr(obj.get(), name, file_type, mem_type, value))
    fail("could not write attribute '" + name + "' of '" + display_path(abs) + "'");
}

void CheckpointWriter::write_attr_signed(const std::string& path, const std::string& name, int64_t value) {
  write_attr_value(path, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void CheckpointWriter::write_attr_unsigned(const std::string& path, const std::string& name, uint64_t value) {
  write_attr_value(path, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

void CheckpointWriter::write_attr(const std::string& path, const std::string& name, double value) {
  write_attr_value(path, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

void CheckpointWriter::write_attr(const std::string& path, const std::string& name, const std::string& value) {
  SSMT_CHECK(value.find('\0') == std::string::npos, "checkpoint attribute '", name, "' contains a NUL byte");
  H5Handle type = fixed_string_type(value.size());
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  write_attr_value(path, name, type.get(), type.get(), padded.data());
}

namespace {
// 0 on success, else errno. Directories that cannot be fsynced (EINVAL on some file
// systems) count as success: there is nothing more we can do for them.
int fsync_directory(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return (err == EINVAL || err == ENOTSUP) ? 0 : err;
}
}  // namespace

void CheckpointWriter::commit() {
  SSMT_ASSERT(file_ >= 0 && fd_ >= 0 && !committed_, "CheckpointWriter::commit called twice");
  // num_datasets is written last, so a file cut short before commit cannot pass verify().
  if (!set_attr(file_, "num_datasets", H5T_STD_I64LE, H5T_NATIVE_INT64, &num_datasets_))
    fail("could not write the root attribute num_datasets");
  herr_t closed = H5Fclose(file_);
  file_ = -1;
  if (closed < 0 || !image_->released) fail("could not close the in-memory file");
  std::optional<size_t> length =
      superblock_file_length(static_cast<const unsigned char*>(image_->data), image_->capacity);
  SSMT_ASSERT(length.has_value(), "CheckpointWriter: the in-memory file of '", final_path_,
              "' has no version 2 superblock giving its length");
  if (int err = write_all(fd_, image_->data, *length)) fail("could not write the file", err);
  image_->reset();
  if (::fsync(fd_) != 0) fail("could not fsync the file", errno);
  int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) fail("could not close the file", errno);
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) fail("could not rename it to the final name", errno);
  committed_ = true;
  std::string dir = fs::path(final_path_).parent_path().string();
  if (int err = fsync_directory(dir.empty() ? "." : dir))
    throw std::system_error(err, std::generic_category(),
                            "checkpoint '" + final_path_ + "' was written, but its directory could not be fsynced");
}

// ---- CheckpointReader ----------------------------------------------------------------------

namespace {

// The open file and its name, so helpers can report problems as the reader does.
struct ReaderFile {
  hid_t file;
  const std::string& path;

  [[noreturn]] void fail(const std::string& what) const {
    H5Eclear2(H5E_DEFAULT);
    throw UserError("checkpoint '" + path + "': " + what);
  }
  uint64_t size() const {
    hsize_t bytes = 0;
    H5Fget_filesize(file, &bytes);
    return bytes;
  }

  // The dataset at abs (not a group), or a UserError naming it.
  H5Handle open_dataset(const std::string& abs) const {
    if (abs == "/" || !path_exists(file, abs)) fail("has no dataset '" + display_path(abs) + "'");
    H5Handle obj(H5Oopen(file, abs.c_str(), H5P_DEFAULT), H5Oclose);
    if (!obj.ok()) fail("dataset '" + display_path(abs) + "' could not be opened (the file is corrupt)");
    if (H5Iget_type(obj.get()) != H5I_DATASET) fail("'" + display_path(abs) + "' is a group, expected a dataset");
    return obj;
  }

  struct Attr {
    H5Handle attr;
    H5Handle type;
    H5T_class_t type_class;
    std::string where;  // for messages: "root attribute 'step'", "attribute 'crc32' of 'model/w'"
  };
  Attr open_attr(const std::string& abs, const std::string& name) const {
    std::string where =
        abs == "/" ? "root attribute '" + name + "'" : "attribute '" + name + "' of '" + display_path(abs) + "'";
    if (!path_exists(file, abs)) fail("has no group or dataset '" + display_path(abs) + "'");
    H5Handle attr(H5Aopen_by_name(file, abs.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!attr.ok()) fail("has no " + where);
    H5Handle type(H5Aget_type(attr.get()), H5Tclose);
    H5Handle space(H5Aget_space(attr.get()), H5Sclose);
    if (!type.ok() || !space.ok() || H5Sget_simple_extent_npoints(space.get()) != 1)
      fail(where + " is not a single value");
    H5T_class_t type_class = H5Tget_class(type.get());
    return {std::move(attr), std::move(type), type_class, where};
  }
  void read_attr(const Attr& a, hid_t mem_type, void* out) const {
    if (H5Aread(a.attr.get(), mem_type, out) < 0) fail(a.where + " could not be read (the file is corrupt)");
  }
  std::string read_string_attr(const Attr& a) const {
    if (a.type_class != H5T_STRING || H5Tis_variable_str(a.type.get()) != 0)
      fail(a.where + " is " + describe_type_class(a.type_class) + ", expected a fixed-length string");
    std::string text(H5Tget_size(a.type.get()), '\0');
    read_attr(a, a.type.get(), text.data());
    text.resize(std::min(text.find('\0'), text.size()));
    return text;
  }
  // Integer attributes of either signedness, range-checked into T.
  template <typename T>
  T read_integer_attr(const Attr& a, const char* expected) const {
    if (a.type_class != H5T_INTEGER)
      fail(a.where + " is " + describe_type_class(a.type_class) + ", expected " + expected);
    if (H5Tget_sign(a.type.get()) == H5T_SGN_NONE) {
      uint64_t v = 0;
      read_attr(a, H5T_NATIVE_UINT64, &v);
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        fail(a.where + " is " + std::to_string(v) + ", out of range for " + expected);
      return static_cast<T>(v);
    }
    int64_t v = 0;
    read_attr(a, H5T_NATIVE_INT64, &v);
    if (v < 0 && std::is_unsigned_v<T>) fail(a.where + " is " + std::to_string(v) + ", expected " + expected);
    return static_cast<T>(v);
  }
};

herr_t collect_dataset(hid_t group, const char* name, const H5L_info_t* info, void* names) {
  if (info->type != H5L_TYPE_HARD) return 0;
  H5Handle obj(H5Oopen(group, name, H5P_DEFAULT), H5Oclose);
  if (!obj.ok()) return -1;
  if (H5Iget_type(obj.get()) == H5I_DATASET) static_cast<std::vector<std::string>*>(names)->push_back(name);
  return 0;
}

}  // namespace

CheckpointReader::CheckpointReader(const std::string& path) : path_(path) {
  silence_hdf5_errors();
  std::error_code ec;
  SSMT_CHECK(fs::exists(path, ec), "checkpoint '", path, "': no such file");
  SSMT_CHECK(fs::is_regular_file(path, ec), "checkpoint '", path, "' is not a regular file");
  H5Handle fapl = file_access_plist();
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file_ < 0) {
    H5Eclear2(H5E_DEFAULT);
    throw UserError("checkpoint '" + path + "' is truncated or corrupt (not a readable HDF5 file)");
  }
  try {
    SSMT_CHECK(has_attr("/", "format"), "checkpoint '", path,
               "' is not an ssmtrain checkpoint (it has no root attribute 'format')");
    std::string format = attr_string("/", "format");
    SSMT_CHECK(format == kFormat, "checkpoint '", path, "' is not an ssmtrain checkpoint (root attribute format is '",
               format, "', expected '", kFormat, "')");
    SSMT_CHECK(has_attr("/", "format_version"), "checkpoint '", path, "' has no root attribute 'format_version'");
    int64_t version = attr_int("/", "format_version");
    SSMT_CHECK(version == kFormatVersion, "checkpoint '", path, "' has format_version ", version,
               ", but this build reads only format_version ", kFormatVersion);
  } catch (...) {
    H5Fclose(file_);
    file_ = -1;
    throw;
  }
}

CheckpointReader::CheckpointReader(CheckpointReader&& other) noexcept
    : path_(std::move(other.path_)), file_(std::exchange(other.file_, -1)) {}

CheckpointReader::~CheckpointReader() {
  if (file_ >= 0) H5Fclose(file_);
}

bool CheckpointReader::has(const std::string& path) const { return path_exists(file_, absolute_path(path)); }

std::vector<std::string> CheckpointReader::list(const std::string& group) const {
  ReaderFile f{file_, path_};
  std::string abs = absolute_path(group);
  if (!path_exists(file_, abs)) f.fail("has no group '" + display_path(abs) + "'");
  H5Handle grp(H5Oopen(file_, abs.c_str(), H5P_DEFAULT), H5Oclose);
  if (!grp.ok() || H5Iget_type(grp.get()) != H5I_GROUP) f.fail("'" + display_path(abs) + "' is not a group");
  std::vector<std::string> names;
  if (H5Lvisit(grp.get(), H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &names) < 0)
    f.fail("group '" + display_path(abs) + "' could not be listed (the file is corrupt)");
  std::sort(names.begin(), names.end());
  return names;
}

HostArray CheckpointReader::read_array(const std::string& path) const {
  ReaderFile f{file_, path_};
  std::string abs = absolute_path(path);
  std::string name = display_path(abs);
  H5Handle ds = f.open_dataset(abs);
  H5Handle type(H5Dget_type(ds.get()), H5Tclose);
  if (!type.ok()) f.fail("dataset '" + name + "' could not be read (the file is corrupt)");
  H5T_class_t type_class = H5Tget_class(type.get());
  if (type_class == H5T_STRING) f.fail("dataset '" + name + "' holds a string, expected an array");

  std::string dtype = f.read_string_attr(f.open_attr(abs, "dtype"));
  if (!is_host_dtype(dtype))
    f.fail("dataset '" + name + "' has dtype '" + dtype + "', expected f32, f64, i32, i64, bf16 or u8");
  DtypeInfo info = dtype_info(dtype);
  if (type_class != info.type_class || static_cast<int64_t>(H5Tget_size(type.get())) != info.size ||
      (type_class == H5T_INTEGER && H5Tget_sign(type.get()) != info.sign))
    f.fail("dataset '" + name + "' is stored as " + describe_type_class(type_class) + " of " +
           std::to_string(H5Tget_size(type.get())) + " bytes, which does not match its dtype '" + dtype + "'");

  HostArray array{dtype, {}, {}};
  H5Handle space(H5Dget_space(ds.get()), H5Sclose);
  H5S_class_t space_class = space.ok() ? H5Sget_simple_extent_type(space.get()) : H5S_NO_CLASS;
  if (space_class == H5S_SIMPLE) {
    std::vector<hsize_t> dims(H5S_MAX_RANK);
    int rank = H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    if (rank < 0) f.fail("dataset '" + name + "' could not be read (the file is corrupt)");
    for (int i = 0; i < rank; ++i) array.shape.push_back(static_cast<int64_t>(dims[i]));
  } else if (space_class != H5S_SCALAR) {
    f.fail("dataset '" + name + "' has no shape (the file is corrupt)");
  }

  // Bound the size before allocating, so a damaged shape cannot become a huge allocation.
  uint64_t file_size = f.size();
  uint64_t bytes = static_cast<uint64_t>(info.size);
  for (int64_t d : array.shape) {
    uint64_t dim = static_cast<uint64_t>(d);
    bytes = (dim != 0 && bytes > file_size / dim) ? std::numeric_limits<uint64_t>::max() : bytes * dim;
  }
  H5Handle dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
  bool contiguous = dcpl.ok() && H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS;
  if (bytes > file_size || (contiguous && H5Dget_storage_size(ds.get()) != bytes))
    f.fail("dataset '" + name + "' is truncated or corrupt (its shape does not match its stored bytes)");

  array.bytes.resize(bytes);
  if (bytes > 0 && H5Dread(ds.get(), info.mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, array.bytes.data()) < 0)
    f.fail("dataset '" + name + "' could not be read (the file is truncated or corrupt)");
  return array;
}

std::string CheckpointReader::read_string(const std::string& path) const {
  ReaderFile f{file_, path_};
  std::string abs = absolute_path(path);
  std::string name = display_path(abs);
  H5Handle ds = f.open_dataset(abs);
  H5Handle type(H5Dget_type(ds.get()), H5Tclose);
  if (!type.ok() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) != 0)
    f.fail("dataset '" + name + "' does not hold a fixed-length string");
  H5Handle space(H5Dget_space(ds.get()), H5Sclose);
  if (!space.ok() || H5Sget_simple_extent_npoints(space.get()) != 1)
    f.fail("dataset '" + name + "' does not hold a single string");
  size_t size = H5Tget_size(type.get());
  if (size > f.size()) f.fail("dataset '" + name + "' is truncated or corrupt");
  std::string text(size, '\0');
  if (H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()) < 0)
    f.fail("dataset '" + name + "' could not be read (the file is truncated or corrupt)");
  text.resize(std::min(text.find('\0'), text.size()));
  return text;
}

bool CheckpointReader::has_attr(const std::string& path, const std::string& name) const {
  std::string abs = absolute_path(path);
  return path_exists(file_, abs) && H5Aexists_by_name(file_, abs.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

int64_t CheckpointReader::attr_int(const std::string& path, const std::string& name) const {
  ReaderFile f{file_, path_};
  return f.read_integer_attr<int64_t>(f.open_attr(absolute_path(path), name), "a signed 64-bit integer");
}

uint64_t CheckpointReader::attr_uint(const std::string& path, const std::string& name) const {
  ReaderFile f{file_, path_};
  return f.read_integer_attr<uint64_t>(f.open_attr(absolute_path(path), name), "an unsigned integer");
}

double CheckpointReader::attr_double(const std::string& path, const std::string& name) const {
  ReaderFile f{file_, path_};
  ReaderFile::Attr a = f.open_attr(absolute_path(path), name);
  if (a.type_class != H5T_FLOAT)
    f.fail(a.where + " is " + describe_type_class(a.type_class) + ", expected a floating-point number");
  double value = 0;
  f.read_attr(a, H5T_NATIVE_DOUBLE, &value);
  return value;
}

std::string CheckpointReader::attr_string(const std::string& path, const std::string& name) const {
  ReaderFile f{file_, path_};
  return f.read_string_attr(f.open_attr(absolute_path(path), name));
}

void CheckpointReader::verify() const {
  ReaderFile f{file_, path_};
  if (!has_attr("/", "num_datasets"))
    f.fail("has no root attribute 'num_datasets' (it is written at commit, so the file is incomplete)");
  int64_t expected = attr_int("/", "num_datasets");
  std::vector<std::string> names = list("/");
  if (static_cast<int64_t>(names.size()) != expected)
    f.fail("holds " + std::to_string(names.size()) + " datasets, but its root attribute num_datasets says " +
           std::to_string(expected) + " (the file is incomplete or corrupt)");
  for (const std::string& name : names) {
    if (!has_attr(name, "crc32")) f.fail("dataset '" + name + "' has no crc32 attribute");
    uint64_t stored = attr_uint(name, "crc32");
    H5Handle ds = f.open_dataset(absolute_path(name));
    H5Handle type(H5Dget_type(ds.get()), H5Tclose);
    uint32_t actual = 0;
    if (type.ok() && H5Tget_class(type.get()) == H5T_STRING) {
      std::string text = read_string(name);
      actual = crc32_of(text.data(), text.size());
    } else {
      HostArray array = read_array(name);
      actual = crc32_of(array.bytes.data(), array.bytes.size());
    }
    if (actual != stored) {
      char message[128];
      std::snprintf(message, sizeof message, "' is corrupt (crc32 of its bytes is 0x%08x, stored crc32 is 0x%08llx)",
                    actual, static_cast<unsigned long long>(stored));
      f.fail("dataset '" + name + message);
    }
  }
}

// ---- Run directories -----------------------------------------------------------------------

std::string checkpoint_path(const std::string& dir, int64_t step) {
  SSMT_ASSERT(step >= 0, "checkpoint_path: negative step ", step);
  char name[40];
  std::snprintf(name, sizeof name, "ckpt_%08lld.h5", static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

std::optional<int64_t> checkpoint_step(const std::string& path) {
  std::string name = fs::path(path).filename().string();
  const std::string prefix = "ckpt_", suffix = ".h5";
  if (name.size() < prefix.size() + 8 + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix))
    return std::nullopt;
  std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::error_code ec;
  std::vector<std::pair<int64_t, std::string>> found;
  if (!fs::is_directory(dir, ec)) return {};
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    std::optional<int64_t> step = checkpoint_step(entry.path().string());
    if (step && entry.is_regular_file(ec)) found.emplace_back(*step, entry.path().string());
  }
  SSMT_CHECK(!ec, "could not list checkpoint directory '", dir, "': ", ec.message());
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, path] : found) paths.push_back(std::move(path));
  return paths;
}

std::vector<std::string> prune_checkpoints(const std::string& dir, int64_t keep_last) {
  std::vector<std::string> paths = list_checkpoints(dir);
  if (keep_last <= 0 || static_cast<int64_t>(paths.size()) <= keep_last) return {};
  paths.resize(paths.size() - static_cast<size_t>(keep_last));
  for (const std::string& path : paths) {
    std::error_code ec;
    fs::remove(path, ec);
    SSMT_CHECK(!ec, "could not delete old checkpoint '", path, "': ", ec.message());
  }
  return paths;
}

std::optional<std::string> newest_valid_checkpoint(const std::string& dir, std::vector<std::string>* skipped_messages) {
  std::vector<std::string> paths = list_checkpoints(dir);
  for (auto it = paths.rbegin(); it != paths.rend(); ++it) {
    try {
      CheckpointReader reader(*it);
      reader.verify();
      return *it;
    } catch (const UserError& e) {
      if (skipped_messages) skipped_messages->push_back(e.what());
    }
  }
  return std::nullopt;
}

}  // namespace ssmtrain
