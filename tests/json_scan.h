// A minimal strict JSON reader for tests of files ssmtrain writes (the profiler's Chrome
// trace): parses the whole text into a small tree, or reports where it stopped.
#pragma once

#include <cctype>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace ssmtrain::testing {

struct Json {
  enum class Kind { null, boolean, number, string, array, object } kind = Kind::null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::map<std::string, Json> object;

  bool has(const std::string& key) const { return kind == Kind::object && object.count(key) > 0; }
  const Json& operator[](const std::string& key) const { return object.at(key); }
};

class JsonReader {
 public:
  // True when `text` is one JSON value (with surrounding whitespace); `error` says where not.
  bool parse(const std::string& text, Json& out, std::string& error) {
    s_ = &text;
    pos_ = 0;
    error_.clear();
    bool ok = value(out);
    skip();
    if (ok && pos_ != text.size()) ok = fail("trailing characters");
    error = error_;
    return ok;
  }

 private:
  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what + " at offset " + std::to_string(pos_);
    return false;
  }
  void skip() {
    while (pos_ < s_->size() && std::isspace(static_cast<unsigned char>((*s_)[pos_]))) ++pos_;
  }
  bool literal(const char* word) {
    const std::string w(word);
    if (s_->compare(pos_, w.size(), w) != 0) return fail("bad literal");
    pos_ += w.size();
    return true;
  }
  bool string(std::string& out) {
    if ((*s_)[pos_] != '"') return fail("expected a string");
    ++pos_;
    while (pos_ < s_->size() && (*s_)[pos_] != '"') {
      char c = (*s_)[pos_++];
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
      if (c == '\\') {
        if (pos_ >= s_->size()) return fail("unfinished escape");
        char e = (*s_)[pos_++];
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
          case 'u':
            if (pos_ + 4 > s_->size()) return fail("short \\u escape");
            for (int i = 0; i < 4; ++i)
              if (!std::isxdigit(static_cast<unsigned char>((*s_)[pos_ + i]))) return fail("bad \\u escape");
            out += static_cast<char>(std::strtol(s_->substr(pos_, 4).c_str(), nullptr, 16));
            pos_ += 4;
            break;
          default:
            return fail("bad escape");
        }
      } else {
        out += c;
      }
    }
    if (pos_ >= s_->size()) return fail("unterminated string");
    ++pos_;
    return true;
  }
  bool value(Json& out) {
    skip();
    if (pos_ >= s_->size()) return fail("unexpected end");
    const char c = (*s_)[pos_];
    if (c == '{') {
      out.kind = Json::Kind::object;
      ++pos_;
      skip();
      if (pos_ < s_->size() && (*s_)[pos_] == '}') return ++pos_, true;
      for (;;) {
        skip();
        std::string key;
        if (!string(key)) return false;
        skip();
        if (pos_ >= s_->size() || (*s_)[pos_] != ':') return fail("expected ':'");
        ++pos_;
        if (out.object.count(key)) return fail("duplicate key '" + key + "'");
        if (!value(out.object[key])) return false;
        skip();
        if (pos_ < s_->size() && (*s_)[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_->size() && (*s_)[pos_] == '}') return ++pos_, true;
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      out.kind = Json::Kind::array;
      ++pos_;
      skip();
      if (pos_ < s_->size() && (*s_)[pos_] == ']') return ++pos_, true;
      for (;;) {
        out.array.emplace_back();
        if (!value(out.array.back())) return false;
        skip();
        if (pos_ < s_->size() && (*s_)[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_->size() && (*s_)[pos_] == ']') return ++pos_, true;
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      out.kind = Json::Kind::string;
      return string(out.string);
    }
    if (c == 't' || c == 'f') {
      out.kind = Json::Kind::boolean;
      out.boolean = c == 't';
      return literal(c == 't' ? "true" : "false");
    }
    if (c == 'n') return literal("null");
    // A number: -?digits[.digits][e[+-]digits]
    const size_t start = pos_;
    if ((*s_)[pos_] == '-') ++pos_;
    auto digits = [&] {
      const size_t d = pos_;
      while (pos_ < s_->size() && std::isdigit(static_cast<unsigned char>((*s_)[pos_]))) ++pos_;
      return pos_ > d;
    };
    if (!digits()) return fail("expected a value");
    if (pos_ < s_->size() && (*s_)[pos_] == '.') {
      ++pos_;
      if (!digits()) return fail("expected digits after '.'");
    }
    if (pos_ < s_->size() && ((*s_)[pos_] == 'e' || (*s_)[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_->size() && ((*s_)[pos_] == '+' || (*s_)[pos_] == '-')) ++pos_;
      if (!digits()) return fail("expected an exponent");
    }
    out.kind = Json::Kind::number;
    out.number = std::strtod(s_->substr(start, pos_ - start).c_str(), nullptr);
    return true;
  }

  const std::string* s_ = nullptr;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace ssmtrain::testing
