#include "ssm/mixer_registry.h"

#include <algorithm>

#include "ssm/attention.h"
#include "ssm/h3.h"
#include "ssm/hyena.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "ssm/mlp_mixer.h"
#include "ssm/moe.h"
#include "ssm/s4.h"

namespace ssmtrain {

namespace {

// The built-in mixers, in the order the reference lists them: one line per registration.
MixerEntry (*const kBuiltinMixers[])() = {
    mamba_mixer_entry, mamba2_mixer_entry, s4_mixer_entry, mlp_mixer_entry, moe_mixer_entry, attention_mixer_entry,
    h3_mixer_entry,    hyena_mixer_entry,
};

struct Registry {
  std::vector<std::shared_ptr<const MixerEntry>> entries;
  std::vector<std::string> names;

  void add(MixerEntry e) {
    for (const auto& n : e.names)
      SSMT_ASSERT(std::find(names.begin(), names.end(), n.name) == names.end(), "mixer '", n.name,
                  "' is registered twice");
    // Keys directly under `model` and sections must not collide with another mixer's.
    std::any defaults = e.defaults;
    const auto fields = e.fields(defaults);
    for (const auto& other : entries) {
      SSMT_ASSERT(e.section.empty() || e.section != other->section, "mixer section '", e.section,
                  "' is registered twice");
      if (!e.section.empty() || !other->section.empty()) continue;
      std::any other_defaults = other->defaults;
      for (const auto& f : other->fields(other_defaults))
        for (const auto& g : fields)
          SSMT_ASSERT(f.name != g.name, "mixer key 'model.", f.name, "' is registered twice");
    }
    for (const auto& n : e.names) names.push_back(n.name);
    entries.push_back(std::make_shared<const MixerEntry>(std::move(e)));
  }
};

Registry& registry() {
  static Registry r = [] {
    Registry builtin;
    for (auto entry : kBuiltinMixers) builtin.add(entry());
    return builtin;
  }();
  return r;
}

}  // namespace

void register_mixer(MixerEntry entry) { registry().add(std::move(entry)); }

void unregister_mixer(const std::string& name) {
  Registry& r = registry();
  const auto entry = find_mixer(name);
  SSMT_ASSERT(entry, "unregister_mixer: no mixer '", name, "'");
  std::erase(r.entries, entry);
  for (const auto& n : entry->names) std::erase(r.names, n.name);
}

std::vector<std::shared_ptr<const MixerEntry>> mixer_entries() { return registry().entries; }

std::shared_ptr<const MixerEntry> find_mixer(const std::string& name) {
  for (const auto& e : registry().entries)
    for (const auto& n : e->names)
      if (n.name == name) return e;
  return nullptr;
}

const std::vector<std::string>& mixer_names() { return registry().names; }

std::string mixer_summaries() {
  std::string out;
  for (const auto& e : registry().entries)
    for (const auto& n : e->names) out += (out.empty() ? "" : ", ") + n.name + " (" + n.summary + ")";
  return out;
}

MixerOptionSet::MixerOptionSet() {
  for (const auto& e : registry().entries) items_.push_back({e, e->defaults});
}

const MixerOptionSet::Item& MixerOptionSet::of(const std::string& name) const {
  for (const Item& i : items_)
    for (const auto& n : i.entry->names)
      if (n.name == name) return i;
  std::string known;
  for (const Item& i : items_)
    for (const auto& n : i.entry->names) known += (known.empty() ? "" : ", ") + n.name;
  throw UserError("model: unknown mixer '" + name + "' (expected one of " + known + ")");
}

}  // namespace ssmtrain
