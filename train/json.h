// JSON for the interchange files (Hugging Face's config.json, safetensors headers, the sweep
// and metrics records read back by plot): nlohmann-json's ordered_json, so written files keep
// the order a person expects, plus what that library leaves to us:
//
//  - Python's non-finite literals NaN, Infinity and -Infinity, which the json module writes
//    (transformers puts `time_step_limit: [0.0, Infinity]` into Mamba-2 configs; our
//    metrics records say NaN for a non-finite loss) and nlohmann-json refuses. parse_json
//    reads them as numbers; nothing we write with nlohmann-json holds one.
//  - Strictness it does not have: a duplicate member name is an error, not "last one wins".
//  - UserErrors that name the file, the byte offset and, for typed access, the key.
//
// The metrics records themselves are written by JsonLine (train/metrics.h), not here.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace ssmtrain {

using Json = nlohmann::ordered_json;

// Parses `text` as one JSON value; a syntax error is a UserError naming `source` (the file)
// and the byte offset where it stopped.
Json parse_json(const std::string& text, const std::string& source);

// Objects: the member `key`, or nullptr (also when v is not an object).
const Json* json_find(const Json& v, const std::string& key);

// Typed access; `what` names the value (file and key) in the UserError of a wrong kind.
bool json_bool(const Json& v, const std::string& what);
double json_number(const Json& v, const std::string& what);
// A number that is an integer exactly (JSON has one number type).
int64_t json_int(const Json& v, const std::string& what);
const std::string& json_string(const Json& v, const std::string& what);
const Json& json_array(const Json& v, const std::string& what);
const Json& json_object(const Json& v, const std::string& what);

}  // namespace ssmtrain
