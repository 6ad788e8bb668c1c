#include "data/text.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "core/error.h"

namespace ssmtrain {

namespace {

std::string quoted(const std::string& path) { return "'" + path + "'"; }

std::vector<unsigned char> read_file_bytes(const std::string& path, const std::string& key) {
  // Regular files only: a directory reads as a size of 2^63 - 1 and /dev/zero or a FIFO never
  // ends, each of which used to end in bad_alloc or a hang.
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  SSMT_CHECK(!std::filesystem::is_directory(status), key, ": ", quoted(path),
             " is a directory; list the text files in it (data.path takes a list of files)");
  SSMT_CHECK(!std::filesystem::exists(status) || std::filesystem::is_regular_file(status), key, ": ", quoted(path),
             " is not a regular file (a device, FIFO or socket cannot be training text)");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  SSMT_CHECK(f != nullptr, key, ": cannot open ", quoted(path), ": ", std::strerror(errno));
  std::vector<unsigned char> bytes;
  // The first read asks for one byte more than the size, so a file that does not change
  // while it is read takes one read and a buffer of its own size (not a chunk per file:
  // thousands of small files would each hold 4 MB).
  constexpr size_t kChunk = size_t{1} << 22;
  size_t chunk = kChunk;
  if (std::fseek(f, 0, SEEK_END) == 0) {
    long size = std::ftell(f);
    if (size > 0) chunk = static_cast<size_t>(size) + 1;
    std::rewind(f);
  }
  for (;;) {
    size_t used = bytes.size();
    bytes.resize(used + chunk);
    size_t got = std::fread(bytes.data() + used, 1, chunk, f);
    bytes.resize(used + got);
    if (got < chunk) break;
    chunk = kChunk;
  }
  bool failed = std::ferror(f) != 0;
  int err = errno;
  std::fclose(f);
  SSMT_CHECK(!failed, key, ": cannot read ", quoted(path), ": ", std::strerror(err));
  return bytes;
}

// Inflates every gzip member of `in` (concatenated members decompress to the concatenation of
// their contents, as gzip -d does); bytes after the last member that do not start another
// one (the zero padding some tools append) are ignored.
std::vector<unsigned char> gunzip(const std::vector<unsigned char>& in, const std::string& path,
                                  const std::string& key) {
  std::vector<unsigned char> out;
  // The trailer's ISIZE is the size mod 2^32 of the last member: a good first guess.
  if (in.size() >= 18) {
    uint32_t isize;
    std::memcpy(&isize, in.data() + in.size() - 4, 4);
    out.reserve(std::max<size_t>(isize, in.size()));
  }
  z_stream zs{};
  SSMT_ASSERT(inflateInit2(&zs, 15 + 16) == Z_OK, "inflateInit2 failed");
  constexpr size_t kMaxPiece = size_t{1} << 30;  // z_stream counts are 32-bit
  size_t consumed = 0, produced = 0;
  for (;;) {
    if (produced == out.size()) out.resize(std::max<size_t>(out.size() * 2, size_t{1} << 20));
    size_t in_piece = std::min(in.size() - consumed, kMaxPiece);
    size_t out_piece = std::min(out.size() - produced, kMaxPiece);
    zs.next_in = const_cast<unsigned char*>(in.data() + consumed);
    zs.avail_in = static_cast<uInt>(in_piece);
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(out_piece);
    int rc = inflate(&zs, Z_NO_FLUSH);
    consumed += in_piece - zs.avail_in;
    produced += out_piece - zs.avail_out;
    if (rc == Z_STREAM_END) {
      bool another = in.size() - consumed >= 2 && in[consumed] == 0x1f && in[consumed + 1] == 0x8b;
      if (!another) break;
      inflateReset(&zs);
      continue;
    }
    bool progressed = in_piece != zs.avail_in || out_piece != zs.avail_out;
    if (rc == Z_OK || (rc == Z_BUF_ERROR && progressed)) continue;
    std::string why = rc == Z_BUF_ERROR ? std::string("the file ends in the middle of a gzip stream (truncated?)")
                                        : std::string("corrupt gzip data: ") + (zs.msg ? zs.msg : "zlib error");
    inflateEnd(&zs);
    throw UserError(detail::concat(key, ": cannot decompress ", quoted(path), ": ", why));
  }
  inflateEnd(&zs);
  out.resize(produced);
  out.shrink_to_fit();
  return out;
}

std::vector<std::vector<unsigned char>> read_texts(const std::vector<std::string>& files, const std::string& key) {
  SSMT_CHECK(!files.empty(), key, ": is empty; expected one or more text files (plain or .gz)");
  std::vector<std::vector<unsigned char>> texts;
  for (const auto& f : files) texts.push_back(read_text_file(f, key));
  return texts;
}

std::vector<int64_t> part_sizes(const std::vector<std::vector<unsigned char>>& texts, const HoldOut& holdout) {
  std::vector<int64_t> sizes;
  for (const auto& t : texts) sizes.push_back(holdout.size(static_cast<int64_t>(t.size())));
  return sizes;
}

std::vector<int64_t> part_begins(const std::vector<std::vector<unsigned char>>& texts, const HoldOut& holdout) {
  std::vector<int64_t> begins;
  for (const auto& t : texts) begins.push_back(holdout.begin(static_cast<int64_t>(t.size())));
  return begins;
}

std::string describe_files(const std::string& key, const std::vector<std::string>& files, const HoldOut& holdout) {
  std::string s = key + " " + quoted(files.front());
  if (files.size() > 1) s += detail::concat(" and ", files.size() - 1, " more file(s)");
  if (holdout.part != HoldOut::Part::whole) s += " (" + holdout.describe() + ")";
  return s;
}

}  // namespace

bool is_gzip(const unsigned char* bytes, int64_t size) { return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b; }

std::vector<unsigned char> read_text_file(const std::string& path, const std::string& key) {
  std::vector<unsigned char> bytes = read_file_bytes(path, key);
  SSMT_CHECK(!bytes.empty(), key, ": ", quoted(path), " is empty");
  if (is_gzip(bytes.data(), static_cast<int64_t>(bytes.size()))) {
    bytes = gunzip(bytes, path, key);
    SSMT_CHECK(!bytes.empty(), key, ": ", quoted(path), " decompresses to nothing");
  }
  return bytes;
}

TextDataset::TextDataset(const std::vector<std::string>& files, WindowOrder order, uint64_t seed, int rank,
                         int world_size, HoldOut holdout, const std::string& key)
    : files_(files),
      texts_(read_texts(files, key)),
      holdout_(holdout),
      first_byte_(part_begins(texts_, holdout_)),
      sampler_(part_sizes(texts_, holdout_), order, seed, rank, world_size),
      what_(describe_files(key, files_, holdout_)) {}

Batch TextDataset::next(int64_t batch, int64_t seq_len) {
  std::vector<WindowRef> windows = sampler_.next_batch(batch, seq_len, what_);
  Batch b;
  b.batch = batch, b.seq_len = seq_len;
  b.inputs.resize(batch * seq_len);
  b.targets.resize(batch * seq_len);
  for (int64_t j = 0; j < batch; ++j) {
    const unsigned char* w = texts_[windows[j].segment].data() + first_byte_[windows[j].segment] + windows[j].start;
    std::copy(w, w + seq_len, b.inputs.begin() + j * seq_len);
    std::copy(w + 1, w + seq_len + 1, b.targets.begin() + j * seq_len);
  }
  b.num_target_bytes = batch * seq_len;
  return b;
}

DataCursor TextDataset::cursor() const { return DataCursor{"text", sampler_.cursor_values()}; }

void TextDataset::restore(const DataCursor& cursor) {
  SSMT_CHECK(cursor.kind == "text", what_, ": the data cursor was written by a '", cursor.kind,
             "' dataset, not by byte-level text");
  sampler_.restore(cursor.values, what_);
}

std::string TextDataset::describe() const {
  std::ostringstream os;
  os << what_ << ": " << texts_.size() << " file(s), " << sampler_.total_tokens() << " bytes, vocab 256 (bytes), "
     << (sampler_.order() == WindowOrder::shuffled ? "shuffled" : "sequential") << " windows";
  if (sampler_.world_size() > 1) os << ", rank " << sampler_.rank() << " of " << sampler_.world_size();
  return os.str();
}

}  // namespace ssmtrain
