#include "train/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "core/error.h"
#include "train/metrics.h"  // json_escape

namespace ssmtrain {

JsonValue JsonValue::boolean(bool b) {
  JsonValue v;
  v.kind_ = Kind::boolean;
  v.bool_ = b;
  return v;
}
JsonValue JsonValue::number(double x) {
  JsonValue v;
  v.kind_ = Kind::number;
  v.number_ = x;
  return v;
}
JsonValue JsonValue::string(std::string s) {
  JsonValue v;
  v.kind_ = Kind::string;
  v.string_ = std::move(s);
  return v;
}
JsonValue JsonValue::array() {
  JsonValue v;
  v.kind_ = Kind::array;
  return v;
}
JsonValue JsonValue::object() {
  JsonValue v;
  v.kind_ = Kind::object;
  return v;
}

namespace {
const char* kind_name(JsonValue::Kind k) {
  switch (k) {
    case JsonValue::Kind::null:
      return "null";
    case JsonValue::Kind::boolean:
      return "a boolean";
    case JsonValue::Kind::number:
      return "a number";
    case JsonValue::Kind::string:
      return "a string";
    case JsonValue::Kind::array:
      return "an array";
    case JsonValue::Kind::object:
      return "an object";
  }
  return "?";
}
}  // namespace

bool JsonValue::as_bool(const std::string& what) const {
  SSMT_CHECK(kind_ == Kind::boolean, what, ": expected true or false, found ", kind_name(kind_));
  return bool_;
}
double JsonValue::as_number(const std::string& what) const {
  SSMT_CHECK(kind_ == Kind::number, what, ": expected a number, found ", kind_name(kind_));
  return number_;
}
int64_t JsonValue::as_int(const std::string& what) const {
  double v = as_number(what);
  SSMT_CHECK(std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.007199254740992e15, what,
             ": expected an integer, found ", v);
  return static_cast<int64_t>(v);
}
const std::string& JsonValue::as_string(const std::string& what) const {
  SSMT_CHECK(kind_ == Kind::string, what, ": expected a string, found ", kind_name(kind_));
  return string_;
}
const std::vector<JsonValue>& JsonValue::as_array(const std::string& what) const {
  SSMT_CHECK(kind_ == Kind::array, what, ": expected an array, found ", kind_name(kind_));
  return array_;
}
const std::vector<std::pair<std::string, JsonValue>>& JsonValue::as_object(const std::string& what) const {
  SSMT_CHECK(kind_ == Kind::object, what, ": expected an object, found ", kind_name(kind_));
  return object_;
}

const JsonValue* JsonValue::find(const std::string& key) const {
  if (kind_ != Kind::object) return nullptr;
  for (const auto& [k, v] : object_)
    if (k == key) return &v;
  return nullptr;
}

JsonValue& JsonValue::set(const std::string& key, JsonValue v) {
  SSMT_ASSERT(kind_ == Kind::object, "JsonValue::set on ", kind_name(kind_));
  for (auto& [k, old] : object_)
    if (k == key) {
      old = std::move(v);
      return *this;
    }
  object_.emplace_back(key, std::move(v));
  return *this;
}

JsonValue& JsonValue::push(JsonValue v) {
  SSMT_ASSERT(kind_ == Kind::array, "JsonValue::push on ", kind_name(kind_));
  array_.push_back(std::move(v));
  return *this;
}

std::string JsonValue::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

void JsonValue::dump_to(std::string& out, int indent, int level) const {
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * lvl), ' ');
  };
  switch (kind_) {
    case Kind::null:
      out += "null";
      break;
    case Kind::boolean:
      out += bool_ ? "true" : "false";
      break;
    case Kind::number: {
      if (std::isnan(number_)) {
        out += "NaN";
      } else if (std::isinf(number_)) {
        out += number_ > 0 ? "Infinity" : "-Infinity";
      } else if (number_ == std::floor(number_) && std::fabs(number_) < 9.007199254740992e15) {
        out += std::to_string(static_cast<int64_t>(number_));
      } else {
        // The shortest form that reads back as the same double (1e-05, not 1.0000000000000001e-05).
        char buf[32];
        for (int digits = 1; digits <= 17; ++digits) {
          std::snprintf(buf, sizeof buf, "%.*g", digits, number_);
          if (std::strtod(buf, nullptr) == number_) break;
        }
        out += buf;
      }
      break;
    }
    case Kind::string:
      // Appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on "\"" + std::string&&.
      out += '"';
      out += json_escape(string_);
      out += '"';
      break;
    case Kind::array:
      out += '[';
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i) out += indent < 0 ? "," : ", ";
        array_[i].dump_to(out, indent, level + 1);
      }
      out += ']';
      break;
    case Kind::object:
      out += '{';
      for (size_t i = 0; i < object_.size(); ++i) {
        if (i) out += ',';
        newline(level + 1);
        out += '"';
        out += json_escape(object_[i].first);
        out += "\":";
        if (indent >= 0) out += ' ';
        object_[i].second.dump_to(out, indent, level + 1);
      }
      if (!object_.empty()) newline(level);
      out += '}';
      break;
  }
}

namespace {

class Parser {
 public:
  Parser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

  JsonValue document() {
    JsonValue v = value(0);
    skip();
    if (pos_ != s_.size()) fail("unexpected characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw UserError(source_ + ": not valid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  void skip() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool literal(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  JsonValue value(int depth) {
    // Interchange files are flat; a deep nest is a broken or hostile file, not a config.
    if (depth > 64) fail("nested more than 64 levels");
    skip();
    if (pos_ >= s_.size()) fail("unexpected end of text");
    char c = s_[pos_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return JsonValue::string(string());
    if (literal("true")) return JsonValue::boolean(true);
    if (literal("false")) return JsonValue::boolean(false);
    if (literal("null")) return JsonValue();
    if (literal("NaN")) return JsonValue::number(std::numeric_limits<double>::quiet_NaN());
    if (literal("Infinity")) return JsonValue::number(std::numeric_limits<double>::infinity());
    if (literal("-Infinity")) return JsonValue::number(-std::numeric_limits<double>::infinity());
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail(std::string("unexpected character '") + c + "'");
  }

  JsonValue number() {
    size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    auto digits = [&] {
      size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == d) fail("expected a digit");
    };
    digits();
    if (pos_ < s_.size() && s_[pos_] == '.') ++pos_, digits();
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      digits();
    }
    return JsonValue::number(std::strtod(s_.substr(start, pos_ - start).c_str(), nullptr));
  }

  unsigned hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9')
        v |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f')
        v |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F')
        v |= static_cast<unsigned>(h - 'A' + 10);
      else
        fail("bad hex digit in \\u escape");
    }
    return v;
  }

  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character inside a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair
            if (!literal("\\u")) fail("lone high surrogate");
            unsigned lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default:
          fail(std::string("unknown escape \\") + e);
      }
    }
  }

  JsonValue array(int depth) {
    ++pos_;
    JsonValue a = JsonValue::array();
    skip();
    if (pos_ < s_.size() && s_[pos_] == ']') return ++pos_, a;
    while (true) {
      a.push(value(depth + 1));
      skip();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') return ++pos_, a;
      fail("expected ',' or ']' in an array");
    }
  }

  JsonValue object(int depth) {
    ++pos_;
    JsonValue o = JsonValue::object();
    skip();
    if (pos_ < s_.size() && s_[pos_] == '}') return ++pos_, o;
    while (true) {
      skip();
      if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a member name in quotes");
      std::string key = string();
      if (o.find(key)) fail("duplicate member name '" + key + "'");
      skip();
      if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':' after a member name");
      ++pos_;
      o.set(key, value(depth + 1));
      skip();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') return ++pos_, o;
      fail("expected ',' or '}' in an object");
    }
  }

  const std::string& s_;
  const std::string& source_;
  size_t pos_ = 0;
};

}  // namespace

JsonValue parse_json(const std::string& text, const std::string& source) { return Parser(text, source).document(); }

}  // namespace ssmtrain
