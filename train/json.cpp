#include "train/json.h"

#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "core/error.h"

namespace ssmtrain {

namespace {

// A non-finite literal travels through nlohmann-json's parser as a string that begins with
// a NUL character ("\u0000NaN"), then becomes a number again. A JSON string with exactly
// that content would be read as the number too; no file we read has one.
constexpr const char* kNonFinite[] = {"NaN", "Infinity", "-Infinity"};

std::string marker(const std::string& literal) { return "\"\\u0000" + literal + "\""; }

// Rewrites the literals outside strings; `shifts` records, for each rewrite, the position
// after it in the new text and how many bytes it added, to map error offsets back.
std::string rewrite_non_finite(const std::string& text, std::vector<std::pair<size_t, size_t>>& shifts) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      if (c == '"') in_string = false;
      ++i;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char* lit : kNonFinite) {
      const std::string l = lit;
      if (text.compare(i, l.size(), l) == 0) {
        const std::string m = marker(l);
        out += m;
        i += l.size();
        shifts.emplace_back(out.size(), m.size() - l.size());
        replaced = true;
        break;
      }
    }
    if (!replaced) out += text[i++];
  }
  return out;
}

void restore_non_finite(Json& v) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s.empty() || s[0] != '\0') return;
    if (s == std::string("\0NaN", 4)) v = std::numeric_limits<double>::quiet_NaN();
    if (s == std::string("\0Infinity", 9)) v = std::numeric_limits<double>::infinity();
    if (s == std::string("\0-Infinity", 10)) v = -std::numeric_limits<double>::infinity();
  } else if (v.is_structured()) {
    for (auto& item : v) restore_non_finite(item);
  }
}

const char* kind_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
      return "a number";
    default:
      return "binary data";
  }
}

void expect(bool ok, const Json& v, const std::string& what, const char* expected) {
  SSMT_CHECK(ok, what, ": expected ", expected, ", found ", kind_name(v));
}

}  // namespace

Json parse_json(const std::string& text, const std::string& source) {
  std::vector<std::pair<size_t, size_t>> shifts;
  const std::string rewritten = rewrite_non_finite(text, shifts);
  // Member names seen in each open object, innermost last.
  std::vector<std::set<std::string>> names;
  auto strict = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) names.emplace_back();
    if (event == Json::parse_event_t::object_end) names.pop_back();
    if (event == Json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      SSMT_CHECK(names.back().insert(key).second, source, ": invalid JSON: duplicate member name '", key, "'");
    }
    return true;
  };
  Json v;
  try {
    v = Json::parse(rewritten, strict);
  } catch (const Json::exception& e) {
    // nlohmann's message reads "[json.exception.parse_error.101] parse error at line 1,
    // column 9: syntax error ..."; keep the reason, give the offset in the original text.
    std::string reason = e.what();
    const size_t colon = reason.find(": ", reason.find("column"));
    if (colon != std::string::npos) reason = reason.substr(colon + 2);
    size_t byte = 0;
    if (const auto* pe = dynamic_cast<const Json::parse_error*>(&e)) {
      byte = pe->byte > 0 ? pe->byte - 1 : 0;
      size_t added = 0;
      for (const auto& [end, extra] : shifts)
        if (end <= byte) added += extra;
      byte -= added;
    }
    throw UserError(source + ": invalid JSON at byte " + std::to_string(byte) + ": " + reason);
  }
  restore_non_finite(v);
  return v;
}

const Json* json_find(const Json& v, const std::string& key) {
  if (!v.is_object()) return nullptr;
  auto it = v.find(key);
  return it == v.end() ? nullptr : &*it;
}

bool json_bool(const Json& v, const std::string& what) {
  expect(v.is_boolean(), v, what, "true or false");
  return v.get<bool>();
}

double json_number(const Json& v, const std::string& what) {
  expect(v.is_number(), v, what, "a number");
  return v.get<double>();
}

int64_t json_int(const Json& v, const std::string& what) {
  if (v.is_number_integer()) return v.get<int64_t>();
  const double x = json_number(v, what);
  SSMT_CHECK(std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.007199254740992e15, what,
             ": expected an integer, found ", x);
  return static_cast<int64_t>(x);
}

const std::string& json_string(const Json& v, const std::string& what) {
  expect(v.is_string(), v, what, "a string");
  return v.get_ref<const std::string&>();
}

const Json& json_array(const Json& v, const std::string& what) {
  expect(v.is_array(), v, what, "an array");
  return v;
}

const Json& json_object(const Json& v, const std::string& what) {
  expect(v.is_object(), v, what, "an object");
  return v;
}

}  // namespace ssmtrain
