#include "data/pretokenize.h"

#include <algorithm>
#include <array>

namespace ssmtrain {

namespace {

struct CodePointRange {
  char32_t first, last;
};

#include "data/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], char32_t cp) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](char32_t c, const CodePointRange& r) { return c < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

// ASCII, which most text is made of, without a table search.
constexpr std::array<CharClass, 128> kAsciiClass = [] {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    t[c] = CharClass::other;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) t[c] = CharClass::letter;
    if (c >= '0' && c <= '9') t[c] = CharClass::number;
    if ((c >= 0x09 && c <= 0x0D) || c == ' ') t[c] = CharClass::space;
  }
  return t;
}();

constexpr char32_t kInvalid = 0xFFFFFFFF;

// A cursor over code points with their classes.
struct Cursor {
  std::string_view text;
  size_t pos = 0;

  bool done() const { return pos >= text.size(); }
  // The class and byte length of the character at p.
  CharClass at(size_t p, size_t& len) const {
    auto c = static_cast<unsigned char>(text[p]);
    if (c < 0x80) {
      len = 1;
      return kAsciiClass[c];
    }
    return char_class(decode_utf8(text, p, len));
  }
  CharClass at(size_t p) const {
    size_t len;
    return at(p, len);
  }
  // The end of the run of characters from p whose class satisfies pred.
  template <typename Pred>
  size_t run_end(size_t p, Pred pred) const {
    size_t len;
    while (p < text.size() && pred(at(p, len))) p += len;
    return p;
  }
};

bool is_contraction(std::string_view rest) {
  // 's 't 're 've 'm 'll 'd, lowercase only, as in GPT-2's pattern.
  if (rest.size() < 2 || rest[0] != '\'') return false;
  switch (rest[1]) {
    case 's':
    case 't':
    case 'm':
    case 'd':
      return true;
    default:
      break;
  }
  return rest.size() >= 3 && (rest.substr(1, 2) == "re" || rest.substr(1, 2) == "ve" || rest.substr(1, 2) == "ll");
}

size_t contraction_length(std::string_view rest) {
  return (rest[1] == 's' || rest[1] == 't' || rest[1] == 'm' || rest[1] == 'd') ? 2 : 3;
}

}  // namespace

CharClass char_class(char32_t cp) {
  if (cp < 128) return kAsciiClass[cp];
  if (cp == kInvalid) return CharClass::other;
  if (in_ranges(kLetterRanges, cp)) return CharClass::letter;
  if (in_ranges(kNumberRanges, cp)) return CharClass::number;
  if (in_ranges(kWhiteSpaceRanges, cp)) return CharClass::space;
  return CharClass::other;
}

char32_t decode_utf8(std::string_view text, size_t pos, size_t& length) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  length = 1;
  if (b0 < 0x80) return b0;
  int extra;
  char32_t cp, min;
  if ((b0 & 0xE0) == 0xC0)
    extra = 1, cp = b0 & 0x1F, min = 0x80;
  else if ((b0 & 0xF0) == 0xE0)
    extra = 2, cp = b0 & 0x0F, min = 0x800;
  else if ((b0 & 0xF8) == 0xF0)
    extra = 3, cp = b0 & 0x07, min = 0x10000;
  else
    return kInvalid;
  if (pos + extra >= text.size()) return kInvalid;
  for (int i = 1; i <= extra; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are not characters.
  if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return kInvalid;
  length = static_cast<size_t>(extra) + 1;
  return cp;
}

void gpt2_split(std::string_view text, std::vector<std::string_view>& words) {
  Cursor cur{text};
  const auto is = [](CharClass k) { return [k](CharClass c) { return c == k; }; };
  const auto is_other = [](CharClass c) { return c == CharClass::other; };
  size_t p = 0;
  while (p < text.size()) {
    size_t len;
    const CharClass c = cur.at(p, len);
    size_t end = 0;
    if (text[p] == '\'' && is_contraction(text.substr(p))) {
      end = p + contraction_length(text.substr(p));
    } else if (c == CharClass::letter || c == CharClass::number || c == CharClass::other) {
      // \p{L}+, \p{N}+ or [^\s\p{L}\p{N}]+ without the optional space.
      end = c == CharClass::other ? cur.run_end(p, is_other) : cur.run_end(p, is(c));
    } else if (text[p] == ' ' && p + 1 < text.size() && cur.at(p + 1) != CharClass::space) {
      // " ?X+" with the space: the space joins the run of the class after it.
      const CharClass next = cur.at(p + 1);
      end = next == CharClass::other ? cur.run_end(p + 1, is_other) : cur.run_end(p + 1, is(next));
    } else {
      // Whitespace: \s+(?!\S) takes the run, less its last character when a non-space
      // follows; a single whitespace character before a non-space is \s+ alone.
      size_t last = p, q = p;
      while (q < text.size()) {
        size_t l;
        if (cur.at(q, l) != CharClass::space) break;
        last = q;
        q += l;
      }
      end = (q < text.size() && last > p) ? last : q;
    }
    words.push_back(text.substr(p, end - p));
    p = end;
  }
}

bool is_safe_split_point(std::string_view text, size_t pos) {
  if (pos < 2 || pos >= text.size() || text[pos - 1] != '\n') return false;
  const auto printable = [](char ch) { return ch > 0x20 && ch < 0x7F; };
  return printable(text[pos - 2]) && printable(text[pos]);
}

}  // namespace ssmtrain
