// TensorBoard event files (SPECS section 11), written without TensorFlow or libprotobuf:
// `events.out.tfevents.<unix time>.<host>` in the run directory, a sequence of TFRecords
//
//   uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
//
// each holding one serialized `Event` protobuf. Only a handful of fields are ever written
// (Event.wall_time, step, file_version, summary, session_log; Summary.value; Value.tag,
// simple_value; SessionLog.status), so the encoder is the protobuf wire format for those by
// hand (docs/training.md says why not libprotobuf). Fields are written in field-number order and
// proto3 defaults (step 0) left out, so each record is the byte string protobuf's own
// serializer produces for the same Event; tools/tb_check.py checks exactly that.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace ssmtrain {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc`.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
// TFRecord's masking: ((c >> 15) | (c << 17)) + 0xa282ead8 of the CRC-32C.
uint32_t masked_crc32c(const void* data, size_t n);

// The Event of the first record: wall_time and file_version "brain.Event:2".
std::string encode_file_version_event(double wall_time);
// An Event with one Summary holding one Value {tag, simple_value} per scalar.
std::string encode_scalars_event(double wall_time, int64_t step,
                                 const std::vector<std::pair<std::string, float>>& scalars);
// An Event with session_log {status: START} at `step`: a run resumed from that step.
// TensorBoard then drops the points at and after it from the earlier files (written by the
// run that went on past its last checkpoint), as metrics.jsonl drops those records.
std::string encode_session_start_event(double wall_time, int64_t step);
// One TFRecord around `data`.
std::string tfrecord(const std::string& data);

// Appends events to a new file in `dir`; each record is flushed as it is written so a
// running TensorBoard sees it. A write that fails is reported once on stderr and the run
// goes on (the metrics file and checkpoints do not depend on it).
class TensorBoardWriter {
 public:
  // Creates dir/events.out.tfevents.<seconds>.<hostname> and writes the file_version event.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values);
  void session_start(int64_t step);
  const std::string& path() const { return path_; }

 private:
  void write(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
  bool failed_ = false;
};

}  // namespace ssmtrain
