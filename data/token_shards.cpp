#include "data/token_shards.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "core/error.h"

namespace ssmtrain {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian; add byte swapping");

namespace fs = std::filesystem;

namespace {

std::string quoted(const std::string& path) { return "'" + path + "'"; }

std::string errno_text(int err) { return std::strerror(err); }

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reading

TokenShard::TokenShard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SSMT_CHECK(fd >= 0, path, ": cannot open token shard: ", errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw UserError(path + ": cannot stat token shard: " + errno_text(err));
  }
  int64_t file_bytes = st.st_size;
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    throw UserError(detail::concat(path, ": file is ", file_bytes, " bytes, shorter than the ", kShardHeaderBytes,
                                   "-byte header of a token shard"));
  }
  map_ = ::mmap(nullptr, static_cast<size_t>(file_bytes), PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  SSMT_CHECK(map_ != MAP_FAILED, path, ": cannot mmap token shard: ", errno_text(map_err));
  map_bytes_ = file_bytes;

  int32_t header[256];
  std::memcpy(header, map_, sizeof(header));
  int32_t magic = header[0], version = header[1];
  int32_t expected_version;
  if (magic == kShardMagicU16) {
    token_bytes_ = 2, expected_version = kShardVersionU16;
  } else if (magic == kShardMagicU32) {
    token_bytes_ = 4, expected_version = kShardVersionU32;
  } else {
    release();
    throw UserError(detail::concat(path, ": not a token shard: header word 0 (magic) is ", magic, ", expected ",
                                   kShardMagicU16, " (uint16 tokens) or ", kShardMagicU32, " (uint32 tokens)"));
  }
  if (version != expected_version) {
    release();
    throw UserError(detail::concat(path, ": token shard version is ", version, ", expected ", expected_version,
                                   " for magic ", magic));
  }
  num_tokens_ = header[2];
  int64_t expected_bytes = kShardHeaderBytes + num_tokens_ * token_bytes_;
  if (num_tokens_ < 0 || file_bytes != expected_bytes) {
    release();
    throw UserError(detail::concat(path, ": file is ", file_bytes, " bytes but its header promises ", num_tokens_,
                                   " tokens (", expected_bytes, " bytes)"));
  }
  if (header[3] < 0 || (header[4] != 0 && header[4] != 1)) {
    release();
    throw UserError(detail::concat(path, ": header words 3 (vocabulary size) and 4 (byte-level flag) are ", header[3],
                                   " and ", header[4], "; expected a size >= 0 and a flag of 0 or 1"));
  }
  if (header[5] < 0 || (header[3] > 0 && header[5] > header[3])) {
    release();
    throw UserError(detail::concat(path, ": header word 5 (end-of-text token + 1) is ", header[5],
                                   "; expected 0 (none recorded) or a token + 1 within the vocabulary of ", header[3]));
  }
  vocab_size_ = header[3];
  byte_level_ = header[4] == 1;
  eot_token_ = static_cast<int64_t>(header[5]) - 1;
  tokens_ = static_cast<const unsigned char*>(map_) + kShardHeaderBytes;
}

TokenShard::~TokenShard() { release(); }

void TokenShard::release() {
  if (map_ != nullptr && map_ != MAP_FAILED) ::munmap(map_, static_cast<size_t>(map_bytes_));
  map_ = nullptr;
}

uint32_t TokenShard::token(int64_t index) const {
  SSMT_ASSERT(index >= 0 && index < num_tokens_, "token ", index, " of ", num_tokens_, " in ", path_);
  if (token_bytes_ == 2) {
    uint16_t t;
    std::memcpy(&t, tokens_ + 2 * index, 2);
    return t;
  }
  uint32_t t;
  std::memcpy(&t, tokens_ + 4 * index, 4);
  return t;
}

void TokenShard::copy_tokens(int64_t start, int64_t count, int32_t* out) const {
  SSMT_ASSERT(start >= 0 && count >= 0 && start + count <= num_tokens_, "tokens [", start, ", ", start + count,
              ") of ", num_tokens_, " in ", path_);
  if (token_bytes_ == 2) {
    const unsigned char* p = tokens_ + 2 * start;
    for (int64_t i = 0; i < count; ++i) {
      uint16_t t;
      std::memcpy(&t, p + 2 * i, 2);
      out[i] = t;
    }
  } else {
    const unsigned char* p = tokens_ + 4 * start;
    for (int64_t i = 0; i < count; ++i) {
      uint32_t t;
      std::memcpy(&t, p + 4 * i, 4);
      out[i] = static_cast<int32_t>(t);  // ids >= 2^31 turn negative and fail the vocabulary check
    }
  }
}

std::vector<int32_t> read_token_shard(const std::string& path) {
  TokenShard shard(path);
  std::vector<int32_t> tokens(shard.num_tokens());
  shard.copy_tokens(0, shard.num_tokens(), tokens.data());
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Writing

TokenShardWriter::TokenShardWriter(std::string path, int64_t vocab_size, bool byte_level, int64_t eot_token)
    : path_(std::move(path)),
      temp_path_(path_ + ".tmp"),
      vocab_size_(vocab_size),
      byte_level_(byte_level),
      eot_token_(eot_token) {
  SSMT_CHECK(vocab_size >= 1 && vocab_size <= (int64_t{1} << 31), path_, ": vocabulary size ", vocab_size,
             " is outside [1, 2^31]");
  SSMT_CHECK(eot_token >= -1 && eot_token < std::min<int64_t>(vocab_size, INT32_MAX), path_, ": end-of-text token ",
             eot_token, " is outside the vocabulary [0, ", vocab_size, ")");
  token_bytes_ = vocab_size <= 65536 ? 2 : 4;
  file_ = std::fopen(temp_path_.c_str(), "wb");
  SSMT_CHECK(file_ != nullptr, temp_path_, ": cannot create: ", errno_text(errno));
  // A zero header for now; close() writes the real one once the token count is known.
  char zeros[kShardHeaderBytes] = {};
  write_raw(zeros, sizeof(zeros));
}

TokenShardWriter::~TokenShardWriter() {
  if (file_ != nullptr) std::fclose(file_);
  if (!committed_) std::remove(temp_path_.c_str());
}

void TokenShardWriter::write_raw(const void* data, size_t bytes) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, file_) != bytes)
    throw UserError(temp_path_ + ": write failed: " + errno_text(errno));
}

template <typename Source>
void TokenShardWriter::append_any(const Source* tokens, int64_t count) {
  SSMT_ASSERT(!closed_, "append to a closed shard ", path_);
  SSMT_CHECK(num_tokens_ + count <= INT32_MAX, path_, ": a shard holds at most 2^31 - 1 tokens (header word 2 is int32)");
  constexpr int64_t kChunk = 1 << 16;
  std::vector<unsigned char> buffer(kChunk * token_bytes_);
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    int64_t n = std::min(kChunk, count - begin);
    for (int64_t i = 0; i < n; ++i) {
      int64_t t = static_cast<int64_t>(tokens[begin + i]);
      SSMT_CHECK(t >= 0 && t < vocab_size_, path_, ": token ", t, " at position ", num_tokens_ + begin + i,
                 " is outside the vocabulary [0, ", vocab_size_, ")");
      if (token_bytes_ == 2) {
        uint16_t v = static_cast<uint16_t>(t);
        std::memcpy(&buffer[2 * i], &v, 2);
      } else {
        uint32_t v = static_cast<uint32_t>(t);
        std::memcpy(&buffer[4 * i], &v, 4);
      }
    }
    write_raw(buffer.data(), static_cast<size_t>(n * token_bytes_));
  }
  num_tokens_ += count;
}

void TokenShardWriter::append(const int32_t* tokens, int64_t count) { append_any(tokens, count); }
void TokenShardWriter::append_bytes(const unsigned char* bytes, int64_t count) { append_any(bytes, count); }

void TokenShardWriter::close() {
  if (closed_) return;
  int32_t header[256] = {};
  header[0] = token_bytes_ == 2 ? kShardMagicU16 : kShardMagicU32;
  header[1] = token_bytes_ == 2 ? kShardVersionU16 : kShardVersionU32;
  header[2] = static_cast<int32_t>(num_tokens_);
  header[3] = static_cast<int32_t>(std::min<int64_t>(vocab_size_, INT32_MAX));
  header[4] = byte_level_ ? 1 : 0;
  header[5] = static_cast<int32_t>(eot_token_ + 1);
  if (std::fseek(file_, 0, SEEK_SET) != 0) throw UserError(temp_path_ + ": seek failed: " + errno_text(errno));
  write_raw(header, sizeof(header));
  if (std::fflush(file_) != 0) throw UserError(temp_path_ + ": flush failed: " + errno_text(errno));
  if (::fsync(::fileno(file_)) != 0) throw UserError(temp_path_ + ": fsync failed: " + errno_text(errno));
  int rc = std::fclose(file_);
  file_ = nullptr;
  SSMT_CHECK(rc == 0, temp_path_, ": close failed: ", errno_text(errno));
  closed_ = true;
}

void TokenShardWriter::commit() {
  close();
  if (committed_) return;
  SSMT_CHECK(::rename(temp_path_.c_str(), path_.c_str()) == 0, temp_path_, ": cannot rename to ", path_, ": ",
             errno_text(errno));
  committed_ = true;
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size,
                       bool byte_level, int64_t eot_token) {
  TokenShardWriter writer(path, vocab_size, byte_level, eot_token);
  writer.append(tokens.data(), static_cast<int64_t>(tokens.size()));
  writer.commit();
}

// ---------------------------------------------------------------------------------------------
// Finding shards

namespace {

// `word` occurs in `name` delimited by the ends or by characters other than letters and digits
// ("val" is in "fineweb_val_000000.bin" but not in "interval_train.bin").
bool has_word(const std::string& name, const std::string& word) {
  auto boundary = [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); };
  for (size_t at = name.find(word); at != std::string::npos; at = name.find(word, at + 1)) {
    bool left = at == 0 || boundary(name[at - 1]);
    bool right = at + word.size() == name.size() || boundary(name[at + word.size()]);
    if (left && right) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> shards_in_directory(const std::string& dir, const std::string& split) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && entry.path().extension() == ".bin" && has_word(name, split))
      files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> list_token_shards(const std::string& spec, const std::string& split, const std::string& what) {
  SSMT_CHECK(!spec.empty(), what, ": is empty; expected a shard directory, file or glob pattern");
  std::vector<std::string> files;
  if (has_glob_chars(spec)) {
    glob_t g{};
    int rc = ::glob(spec.c_str(), 0, nullptr, &g);
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    SSMT_CHECK(rc == 0 || rc == GLOB_NOMATCH, what, ": cannot expand the pattern ", quoted(spec));
    SSMT_CHECK(!files.empty(), what, ": the pattern ", quoted(spec), " matches no file");
  } else {
    std::error_code ec;
    auto status = fs::status(spec, ec);
    SSMT_CHECK(fs::exists(status), what, ": ", quoted(spec), " does not exist");
    if (fs::is_directory(status)) {
      files = shards_in_directory(spec, split);
      SSMT_CHECK(!files.empty(), what, ": the directory ", quoted(spec), " holds no *.bin file with the word '", split,
                 "' in its name");
    } else {
      files.push_back(spec);
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// ---------------------------------------------------------------------------------------------
// Dataset

namespace {

std::vector<std::unique_ptr<TokenShard>> open_shards(const std::vector<std::string>& files) {
  SSMT_CHECK(!files.empty(), "data: no token shard files given");
  std::vector<std::unique_ptr<TokenShard>> shards;
  for (const auto& f : files) shards.push_back(std::make_unique<TokenShard>(f));
  return shards;
}

std::vector<int64_t> shard_sizes(const std::vector<std::unique_ptr<TokenShard>>& shards, const HoldOut& holdout) {
  std::vector<int64_t> sizes;
  for (const auto& s : shards) sizes.push_back(holdout.size(s->num_tokens()));
  return sizes;
}

std::vector<int64_t> shard_begins(const std::vector<std::unique_ptr<TokenShard>>& shards, const HoldOut& holdout) {
  std::vector<int64_t> begins;
  for (const auto& s : shards) begins.push_back(holdout.begin(s->num_tokens()));
  return begins;
}

std::string describe_files(const std::vector<std::unique_ptr<TokenShard>>& shards) {
  std::string s = quoted(shards.front()->path());
  if (shards.size() > 1) s += detail::concat(" and ", shards.size() - 1, " more shard(s)");
  return s;
}

}  // namespace

TokenShardDataset::TokenShardDataset(const std::vector<std::string>& files, int64_t vocab_size, WindowOrder order,
                                     uint64_t seed, int rank, int world_size, HoldOut holdout)
    : shards_(open_shards(files)),
      holdout_(holdout),
      first_token_(shard_begins(shards_, holdout_)),
      sampler_(shard_sizes(shards_, holdout_), order, seed, rank, world_size),
      what_("token shards " + describe_files(shards_)) {
  if (holdout_.part != HoldOut::Part::whole) what_ += " (" + holdout_.describe() + ")";
  int64_t recorded = 0;
  const TokenShard* largest = nullptr;
  const TokenShard* eot_source = nullptr;
  for (const auto& s : shards_) {
    if (s->vocab_size() > recorded) recorded = s->vocab_size(), largest = s.get();
    byte_level_ = byte_level_ && s->byte_level();
    if (s->eot_token() < 0) continue;
    SSMT_CHECK(!eot_source || eot_source->eot_token() == s->eot_token(), what_, ": the shards record different "
               "end-of-text tokens (", eot_source->eot_token(), " in ", quoted(eot_source->path()), ", ",
               s->eot_token(), " in ", quoted(s->path()), ")");
    eot_source = s.get();
  }
  eot_token_ = eot_source ? eot_source->eot_token() : byte_level_ ? -1 : kGpt2EndOfText;
  if (vocab_size == 0) {
    SSMT_CHECK(recorded > 0, "model.vocab_size: must be set for ", what_,
               ": their headers do not record a vocabulary size (llm.c leaves header word 3 at 0)");
    vocab_size_ = recorded;
  } else {
    SSMT_CHECK(vocab_size >= recorded, "model.vocab_size: ", vocab_size, " is smaller than the vocabulary size ",
               recorded, " recorded in ", largest ? largest->path() : std::string());
    vocab_size_ = vocab_size;
  }
}

Batch TokenShardDataset::next(int64_t batch, int64_t seq_len) {
  std::vector<WindowRef> windows = sampler_.next_batch(batch, seq_len, what_);
  Batch b;
  b.batch = batch, b.seq_len = seq_len;
  b.inputs.resize(batch * seq_len);
  b.targets.resize(batch * seq_len);
  std::vector<int32_t> window(seq_len + 1);
  for (int64_t j = 0; j < batch; ++j) {
    const TokenShard& shard = *shards_[windows[j].segment];
    int64_t start = first_token_[windows[j].segment] + windows[j].start;
    shard.copy_tokens(start, seq_len + 1, window.data());
    for (int64_t i = 0; i <= seq_len; ++i)
      SSMT_CHECK(window[i] >= 0 && window[i] < vocab_size_, shard.path(), ": token ",
                 static_cast<uint32_t>(window[i]), " at position ", start + i,
                 " is outside the vocabulary [0, ", vocab_size_, ")");
    std::copy(window.begin(), window.end() - 1, b.inputs.begin() + j * seq_len);
    std::copy(window.begin() + 1, window.end(), b.targets.begin() + j * seq_len);
  }
  b.num_target_bytes = byte_level_ ? batch * seq_len : 0;
  return b;
}

DataCursor TokenShardDataset::cursor() const { return DataCursor{"shards", sampler_.cursor_values()}; }

void TokenShardDataset::restore(const DataCursor& cursor) {
  SSMT_CHECK(cursor.kind == "shards", what_, ": the data cursor was written by a '", cursor.kind,
             "' dataset, not by token shards");
  sampler_.restore(cursor.values, what_);
}

std::string TokenShardDataset::describe() const {
  std::ostringstream os;
  os << what_ << ": " << shards_.size() << " shard(s), " << sampler_.total_tokens() << " tokens, vocab " << vocab_size_
     << (byte_level_ ? " (bytes)" : "") << ", "
     << (sampler_.order() == WindowOrder::shuffled ? "shuffled" : "sequential") << " windows";
  if (sampler_.world_size() > 1) os << ", rank " << sampler_.rank() << " of " << sampler_.world_size();
  return os.str();
}

}  // namespace ssmtrain
