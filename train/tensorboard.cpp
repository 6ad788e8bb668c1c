#include "train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>

#include "core/error.h"

namespace ssmtrain {

namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// The protobuf wire format for the few field kinds used: tag = field << 3 | wire type;
// varint (0), 64-bit little-endian (1), length-delimited (2), 32-bit little-endian (5).
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_tag(std::string& out, int field, int wire) { put_varint(out, static_cast<uint64_t>(field) << 3 | wire); }
template <typename T>
void put_fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian hosts (static_assert in write_safetensors' file too)
  out.append(b, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event fields: 1 wall_time (double), 2 step (int64), 3 file_version (string),
// 5 summary (Summary), 7 session_log (SessionLog; 6 is the deprecated log_message).
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  put_tag(e, 1, 1);
  put_fixed(e, wall_time);
  if (step != 0) {  // proto3 leaves a default out; a negative step would take 10 bytes, as protobuf's
    put_tag(e, 2, 0);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = kCrc32cTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string encode_file_version_event(double wall_time) {
  std::string e = event_head(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string encode_scalars_event(double wall_time, int64_t step,
                                 const std::vector<std::pair<std::string, float>>& scalars) {
  // Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
  std::string summary;
  for (const auto& [tag, v] : scalars) {
    std::string value;
    put_bytes(value, 1, tag);
    put_tag(value, 2, 5);
    put_fixed(value, v);
    put_bytes(summary, 1, value);
  }
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::string encode_session_start_event(double wall_time, int64_t step) {
  std::string log;  // SessionLog { SessionStatus status = 1; }  START = 1
  put_tag(log, 1, 0);
  put_varint(log, 1);
  std::string e = event_head(wall_time, step);
  put_bytes(e, 7, log);
  return e;
}

std::string tfrecord(const std::string& data) {
  std::string r;
  const uint64_t n = data.size();
  char len[8];
  std::memcpy(len, &n, 8);
  r.append(len, 8);
  put_fixed(r, masked_crc32c(len, 8));
  r += data;
  put_fixed(r, masked_crc32c(data.data(), data.size()));
  return r;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  char host[256] = "localhost";
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  const double t = now_seconds();
  // TensorBoard orders a directory's files by name: seconds, then host, as TensorFlow names them.
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(t)) + "." + host;
  file_ = std::fopen(path_.c_str(), "ab");
  SSMT_CHECK(file_ != nullptr, "train.tensorboard: cannot create '", path_, "': ", std::strerror(errno));
  write(encode_file_version_event(t));
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values) {
  if (!values.empty()) write(encode_scalars_event(now_seconds(), step, values));
}

void TensorBoardWriter::session_start(int64_t step) { write(encode_session_start_event(now_seconds(), step)); }

void TensorBoardWriter::write(const std::string& event) {
  if (failed_) return;
  const std::string r = tfrecord(event);
  if (std::fwrite(r.data(), 1, r.size(), file_) != r.size() || std::fflush(file_) != 0) {
    failed_ = true;
    std::cerr << "warning: cannot write '" << path_ << "' (" << std::strerror(errno)
              << "); training goes on without TensorBoard events" << std::endl;
  }
}

}  // namespace ssmtrain
