#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "data/pretokenize.h"

namespace ssmtrain {

struct BpeWordCache {
  // Words repeat (Zipf): most of a text's words are found here. Bounded, since a stream of
  // distinct words (numbers, hashes) would otherwise grow it without end.
  static constexpr size_t kMaxEntries = 1 << 18, kMaxWordBytes = 64;
  std::unordered_map<std::string, std::vector<int32_t>> words;
  std::string key;  // reused, so a hit allocates nothing
};

namespace {

using json = nlohmann::json;

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
// for U+0100.. in byte order, so every byte is a visible character in the vocabulary.
struct ByteLevelAlphabet {
  std::string utf8[256];                      // byte -> its character, UTF-8
  std::unordered_map<char32_t, int> byte_of;  // character -> byte
  ByteLevelAlphabet() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      byte_of[cp] = b;
      if (cp < 0x80) {
        utf8[b] = std::string(1, static_cast<char>(cp));
      } else {
        utf8[b] = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      }
    }
  }
};

const ByteLevelAlphabet& alphabet() {
  static const ByteLevelAlphabet a;
  return a;
}

uint64_t hash_bytes(std::string_view s) {  // FNV-1a
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

size_t table_size(size_t n) {
  size_t s = 16;
  while (s < 2 * n) s *= 2;
  return s;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

constexpr uint64_t kEmptyKey = ~0ull;

// Reading tokenizer.json: each failure names the file and the field.
struct Reader {
  const std::string& source;

  [[noreturn]] void fail(const std::string& what) const { throw UserError("tokenizer '" + source + "': " + what); }
  void unsupported(const std::string& field, const json& value, const std::string& supported) const {
    fail(field + " = " + value.dump() + " is not supported (" + supported + ")");
  }
  const json& member(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object() || !obj.contains(key)) fail("missing " + where + "." + key);
    return obj.at(key);
  }
  bool flag(const json& obj, const char* key, bool fallback, const std::string& where) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_boolean()) fail(where + "." + key + " must be true or false");
    return obj.at(key).get<bool>();
  }
  // Null, absent, or the empty string.
  bool empty_string(const json& obj, const char* key) const {
    return !obj.contains(key) || obj.at(key).is_null() ||
           (obj.at(key).is_string() && obj.at(key).get<std::string>().empty());
  }
};

}  // namespace

int32_t BpeTokenizer::find_vocab(std::string_view key) const {
  const size_t mask = vocab_slots_.size() - 1;
  for (size_t i = hash_bytes(key) & mask;; i = (i + 1) & mask) {
    const int32_t slot = vocab_slots_[i];
    if (slot < 0) return -1;
    if (vocab_keys_[slot] == key) return vocab_ids_[slot];
  }
}

int64_t BpeTokenizer::merge_slot(uint64_t key) const {
  const size_t mask = merge_keys_.size() - 1;
  for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
    if (merge_keys_[i] == key) return static_cast<int64_t>(i);
    if (merge_keys_[i] == kEmptyKey) return -1;
  }
}

int32_t BpeTokenizer::token_id(const std::string& token) const {
  for (const auto& a : added_)
    if (a.content == token) return a.id;
  return find_vocab(token);
}

BpeTokenizer BpeTokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SSMT_CHECK(in.good(), "tokenizer '", path, "': cannot open the file");
  std::ostringstream text;
  text << in.rdbuf();
  return from_json(text.str(), path);
}

BpeTokenizer BpeTokenizer::from_json(const std::string& json_text, const std::string& source) {
  Reader r{source};
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    r.fail(std::string("not valid JSON: ") + e.what());
  }
  if (!root.is_object()) r.fail("expected a JSON object (a Hugging Face tokenizer.json)");
  BpeTokenizer t;
  t.source_ = source;
  try {
    const json& model = r.member(root, "model", "");
    if (model.contains("type") && model["type"] != "BPE") r.unsupported("model.type", model["type"], "only BPE");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0)
      r.unsupported("model.dropout", model["dropout"], "BPE dropout is for training; use null");
    if (!r.empty_string(model, "continuing_subword_prefix"))
      r.unsupported("model.continuing_subword_prefix", model["continuing_subword_prefix"], "byte-level BPE has none");
    if (!r.empty_string(model, "end_of_word_suffix"))
      r.unsupported("model.end_of_word_suffix", model["end_of_word_suffix"], "byte-level BPE has none");
    if (r.flag(model, "byte_fallback", false, "model"))
      r.unsupported("model.byte_fallback", true, "byte-level BPE needs no fallback");
    t.ignore_merges_ = r.flag(model, "ignore_merges", false, "model");

    // The vocabulary.
    const json& vocab = r.member(model, "vocab", "model");
    if (!vocab.is_object() || vocab.empty()) r.fail("model.vocab must be a non-empty object of token: id");
    int64_t max_id = -1;
    t.vocab_slots_.assign(table_size(vocab.size()), -1);
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        r.fail("model.vocab[\"" + token + "\"] = " + id.dump() + " is not a token id");
      const int32_t i = id.get<int32_t>();
      max_id = std::max<int64_t>(max_id, i);
      const size_t mask = t.vocab_slots_.size() - 1;
      size_t s = hash_bytes(token) & mask;
      while (t.vocab_slots_[s] >= 0) s = (s + 1) & mask;
      t.vocab_slots_[s] = static_cast<int32_t>(t.vocab_keys_.size());
      t.vocab_keys_.push_back(token);
      t.vocab_ids_.push_back(i);
    }
    const auto& abc = alphabet();
    for (int b = 0; b < 256; ++b) t.byte_ids_[b] = t.find_vocab(abc.utf8[b]);
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      if (!model["unk_token"].is_string()) r.fail("model.unk_token must be a string or null");
      t.unk_id_ = t.find_vocab(model["unk_token"].get<std::string>());
      if (t.unk_id_ < 0) r.fail("model.unk_token " + model["unk_token"].dump() + " is not in model.vocab");
    }

    // The merges, in rank order.
    const json& merges = r.member(model, "merges", "model");
    if (!merges.is_array()) r.fail("model.merges must be an array");
    t.merge_keys_.assign(table_size(merges.size()), kEmptyKey);
    t.merge_values_.resize(t.merge_keys_.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const json& m = merges[rank];
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          r.fail("model.merges[" + std::to_string(rank) + "] = " + m.dump() + " is not \"left right\"");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>(), b = m[1].get<std::string>();
      } else {
        r.fail("model.merges[" + std::to_string(rank) + "] = " + m.dump() + " is not a pair of tokens");
      }
      const int32_t ia = t.find_vocab(a), ib = t.find_vocab(b), ic = t.find_vocab(a + b);
      if (ia < 0 || ib < 0 || ic < 0)
        r.fail("model.merges[" + std::to_string(rank) + "] = " + m.dump() + ": '" +
               (ia < 0   ? a
                : ib < 0 ? b
                         : a + b) +
               "' is not in model.vocab");
      // A pair listed twice keeps its last rank, as Hugging Face's map does.
      const uint64_t key = pair_key(ia, ib);
      const size_t mask = t.merge_keys_.size() - 1;
      size_t s = mix(key) & mask;
      while (t.merge_keys_[s] != kEmptyKey && t.merge_keys_[s] != key) s = (s + 1) & mask;
      t.merge_keys_[s] = key;
      t.merge_values_[s] = {static_cast<int32_t>(rank), ic};
    }
    t.num_merges_ = static_cast<int64_t>(merges.size());

    // Added tokens.
    if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
      const json& added = root["added_tokens"];
      if (!added.is_array()) r.fail("added_tokens must be an array");
      int64_t max_added = -1;
      for (size_t i = 0; i < added.size(); ++i) {
        const std::string where = "added_tokens[" + std::to_string(i) + "]";
        const json& a = added[i];
        AddedToken tok;
        const json& id = r.member(a, "id", where);
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
          r.fail(where + ".id = " + id.dump() + " is not a token id");
        const json& content = r.member(a, "content", where);
        if (!content.is_string() || content.get<std::string>().empty())
          r.fail(where + ".content must be a non-empty string");
        tok.content = content.get<std::string>();
        tok.special = r.flag(a, "special", false, where);
        // Hugging Face's default: special tokens match the text as written, others after normalization.
        tok.normalized = r.flag(a, "normalized", !tok.special, where);
        tok.lstrip = r.flag(a, "lstrip", false, where);
        tok.rstrip = r.flag(a, "rstrip", false, where);
        if (r.flag(a, "single_word", false, where)) r.unsupported(where + ".single_word", true, "use false");
        // Ids as Hugging Face assigns them when it loads the file (its `id` is not read
        // back): a token of the vocabulary keeps the vocabulary's id, the others follow the
        // vocabulary and each other in file order. Files the package wrote agree with this.
        if (std::any_of(t.added_.begin(), t.added_.end(),
                        [&](const AddedToken& o) { return o.content == tok.content; }))
          continue;
        tok.id = t.find_vocab(tok.content);
        if (tok.id < 0) {
          const auto model_size = static_cast<int64_t>(vocab.size());
          tok.id = static_cast<int32_t>(max_added >= model_size ? max_added + 1 : model_size);
        }
        max_added = std::max<int64_t>(max_added, tok.id);
        max_id = std::max<int64_t>(max_id, tok.id);
        t.added_.push_back(std::move(tok));
      }
    }
    for (auto& table : t.added_by_first_byte_) table.assign(256, {});
    for (size_t i = 0; i < t.added_.size(); ++i) {
      const AddedToken& a = t.added_[i];
      t.added_by_first_byte_[a.normalized ? 1 : 0][static_cast<unsigned char>(a.content[0])].push_back(
          static_cast<int>(i));
    }
    for (auto& table : t.added_by_first_byte_)
      for (auto& list : table)
        std::stable_sort(list.begin(), list.end(),
                         [&](int x, int y) { return t.added_[x].content.size() > t.added_[y].content.size(); });

    // The pipeline around the model.
    if (root.contains("normalizer") && !root["normalizer"].is_null()) {
      const json& n = root["normalizer"];
      if (!(n.is_object() && n.value("type", "") == "NFC")) r.unsupported("normalizer", n, "null or NFC");
      t.normalizer_ = "NFC";
    }
    const json& pre = r.member(root, "pre_tokenizer", "");
    if (!pre.is_object() || pre.value("type", "") != "ByteLevel")
      r.unsupported("pre_tokenizer", pre, "only ByteLevel, the GPT-2 split");
    t.add_prefix_space_ = r.flag(pre, "add_prefix_space", false, "pre_tokenizer");
    t.use_regex_ = r.flag(pre, "use_regex", true, "pre_tokenizer");
    if (root.contains("decoder") && !root["decoder"].is_null()) {
      const json& d = root["decoder"];
      if (!d.is_object() || d.value("type", "") != "ByteLevel") r.unsupported("decoder", d, "null or ByteLevel");
    }

    // Decoding: a token's characters back to bytes; a token with a character outside the
    // byte-level alphabet (an added token such as "<|endoftext|>" keeps it anyway, a run
    // of spaces does not) decodes to its text, as Hugging Face's ByteLevel decoder does.
    t.id_bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
    auto to_bytes = [&](const std::string& token) {
      std::string out;
      for (size_t p = 0; p < token.size();) {
        size_t len;
        const char32_t cp = decode_utf8(token, p, len);
        auto it = abc.byte_of.find(cp);
        if (it == abc.byte_of.end()) return token;
        out.push_back(static_cast<char>(it->second));
        p += len;
      }
      return out;
    };
    for (size_t i = 0; i < t.vocab_keys_.size(); ++i) t.id_bytes_[t.vocab_ids_[i]] = to_bytes(t.vocab_keys_[i]);
    for (const auto& a : t.added_) t.id_bytes_[a.id] = to_bytes(a.content);
  } catch (const json::exception& e) {
    r.fail(std::string("unexpected structure: ") + e.what());
  }
  return t;
}

void BpeTokenizer::split_added(std::string_view text, std::vector<Piece>& pieces) const {
  // Pass 0 finds the tokens matched as written, pass 1 those matched after normalization in
  // the text between (the same text here: no normalization is applied).
  std::vector<Piece> in{{text, -1}}, out;
  for (int pass = 0; pass < 2; ++pass) {
    const auto& table = added_by_first_byte_[pass];
    bool any = false;
    for (const auto& list : table) any = any || !list.empty();
    if (!any) continue;
    out.clear();
    for (const Piece& piece : in) {
      if (piece.id >= 0) {
        out.push_back(piece);
        continue;
      }
      const std::string_view s = piece.text;
      size_t done = 0;  // s[0, done) is already in out
      for (size_t p = 0; p < s.size();) {
        const auto& candidates = table[static_cast<unsigned char>(s[p])];
        const AddedToken* hit = nullptr;
        for (int c : candidates) {
          const std::string& content = added_[c].content;
          if (s.compare(p, content.size(), content) == 0) {
            hit = &added_[c];
            break;  // longest first
          }
        }
        if (!hit) {
          ++p;
          continue;
        }
        size_t begin = p, end = p + hit->content.size();
        const auto space_at = [&](size_t q, size_t& len) {
          return char_class(decode_utf8(s, q, len)) == CharClass::space;
        };
        if (hit->lstrip) {
          // Back over the whitespace before the match, not into what is already taken.
          while (begin > done) {
            size_t q = begin - 1;
            while (q > done && (static_cast<unsigned char>(s[q]) & 0xC0) == 0x80) --q;
            size_t len;
            if (!space_at(q, len)) break;
            begin = q;
          }
        }
        if (hit->rstrip) {
          size_t len;
          while (end < s.size() && space_at(end, len)) end += len;
        }
        if (begin > done) out.push_back({s.substr(done, begin - done), -1});
        out.push_back({{}, hit->id});
        done = p = end;
      }
      if (done < s.size()) out.push_back({s.substr(done), -1});
    }
    in.swap(out);
  }
  pieces.insert(pieces.end(), in.begin(), in.end());
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string key;
    for (unsigned char c : word) key += alphabet().utf8[c];
    const int32_t id = find_vocab(key);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  // Hugging Face's Word::merge_all: symbols in a linked list, candidate merges in a heap
  // ordered by (rank, position); an entry whose pair has changed since it was pushed is
  // stale and skipped. Merging the lowest rank first, leftmost among equals, gives GPT-2's
  // result, since a merge that uses a symbol always ranks after the merge that made it.
  struct Symbol {
    int32_t id, prev, next;
    bool alive;
  };
  struct Merge {
    int32_t rank, pos, id;
    bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  bool prev_unk = false;
  for (unsigned char c : word) {
    int32_t id = byte_ids_[c];
    if (id < 0) {
      // A byte missing from the vocabulary: the unknown token, or nothing, as in Hugging Face.
      if (unk_id_ < 0 || prev_unk) continue;
      id = unk_id_;
      prev_unk = true;
    } else {
      prev_unk = false;
    }
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  std::priority_queue<Merge, std::vector<Merge>, std::greater<Merge>> heap;
  auto push_pair = [&](int32_t pos) {
    const int32_t next = sym[pos].next;
    if (next < 0) return;
    const int64_t slot = merge_slot(pair_key(sym[pos].id, sym[next].id));
    if (slot >= 0) heap.push({merge_values_[slot].first, pos, merge_values_[slot].second});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) push_pair(i);
  while (!heap.empty()) {
    const Merge top = heap.top();
    heap.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right = left.next;
    const int64_t slot = merge_slot(pair_key(left.id, sym[right].id));
    if (slot < 0 || merge_values_[slot].second != top.id) continue;  // stale
    left.id = top.id;
    left.next = sym[right].next;
    sym[right].alive = false;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

void BpeTokenizer::encode_piece(std::string_view text, bool prefix, BpeWordCache& cache,
                                std::vector<int32_t>& out) const {
  std::string prefixed;
  if (prefix && add_prefix_space_ && !text.empty() && text[0] != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  std::vector<std::string_view> words;
  if (use_regex_) {
    gpt2_split(text, words);
  } else if (!text.empty()) {
    words.push_back(text);
  }
  for (std::string_view w : words) {
    if (w.size() > BpeWordCache::kMaxWordBytes) {
      encode_word(w, out);
      continue;
    }
    cache.key.assign(w);
    auto it = cache.words.find(cache.key);
    if (it == cache.words.end()) {
      std::vector<int32_t> ids;
      encode_word(w, ids);
      if (cache.words.size() >= BpeWordCache::kMaxEntries) cache.words.clear();
      it = cache.words.emplace(cache.key, std::move(ids)).first;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  BpeWordCache cache;
  std::vector<Piece> pieces;
  split_added(text, pieces);
  std::vector<int32_t> out;
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      out.push_back(p.id);
    } else {
      encode_piece(p.text, true, cache, out);
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> BpeTokenizer::encode_documents(const std::vector<std::string_view>& documents,
                                                                 int threads) const {
  // Work items: added tokens, and text pieces cut into chunks of about kChunk bytes at safe
  // split points, so one long document keeps every thread busy too.
  constexpr size_t kChunk = 1 << 18;
  struct Item {
    size_t doc;
    Piece piece;
    bool prefix;  // the start of a piece: add_prefix_space applies
  };
  std::vector<Item> items;
  std::vector<Piece> pieces;
  for (size_t d = 0; d < documents.size(); ++d) {
    pieces.clear();
    split_added(documents[d], pieces);
    for (const Piece& p : pieces) {
      if (p.id >= 0 || !use_regex_) {
        items.push_back({d, p, true});
        continue;
      }
      std::string_view rest = p.text;
      bool first = true;
      while (rest.size() > kChunk) {
        // The first newline at or after kChunk that is a safe split point.
        size_t nl = rest.find('\n', kChunk - 1);
        while (nl != std::string_view::npos && !is_safe_split_point(rest, nl + 1)) nl = rest.find('\n', nl + 1);
        if (nl == std::string_view::npos) break;
        items.push_back({d, {rest.substr(0, nl + 1), -1}, first});
        rest = rest.substr(nl + 1);
        first = false;
      }
      items.push_back({d, {rest, -1}, first});
    }
  }
  std::vector<std::vector<int32_t>> item_ids(items.size());
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(1, items.size())));
  std::atomic<size_t> next{0};
  auto work = [&] {
    BpeWordCache cache;
    for (size_t i; (i = next.fetch_add(1)) < items.size();) {
      const Item& it = items[i];
      if (it.piece.id >= 0) {
        item_ids[i].push_back(it.piece.id);
      } else {
        encode_piece(it.piece.text, it.prefix, cache, item_ids[i]);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  std::vector<std::vector<int32_t>> out(documents.size());
  for (size_t i = 0; i < items.size(); ++i) {
    auto& dst = out[items[i].doc];
    dst.insert(dst.end(), item_ids[i].begin(), item_ids[i].end());
    std::vector<int32_t>().swap(item_ids[i]);
  }
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids)
    if (id >= 0 && static_cast<size_t>(id) < id_bytes_.size()) out += id_bytes_[id];
  return out;
}

std::string BpeTokenizer::describe() const {
  std::ostringstream os;
  os << "byte-level BPE '" << source_ << "': vocabulary " << vocab_size() << ", " << num_merges_ << " merges, "
     << added_.size() << " added token(s)";
  if (add_prefix_space_) os << ", add_prefix_space";
  if (!use_regex_) os << ", no GPT-2 split";
  if (ignore_merges_) os << ", ignore_merges";
  if (!normalizer_.empty())
    os << ", " << normalizer_ << " normalizer not applied (text taken as " << normalizer_ << ")";
  return os.str();
}

}  // namespace ssmtrain
