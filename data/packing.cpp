#include "data/packing.h"

#include "core/error.h"

namespace ssmtrain {

std::vector<int32_t> document_index(const std::vector<int32_t>& inputs, int64_t batch, int64_t seq_len,
                                    int64_t eot_token) {
  SSMT_ASSERT(batch >= 0 && seq_len >= 0 && static_cast<int64_t>(inputs.size()) == batch * seq_len,
              "document_index: ", inputs.size(), " inputs for a (", batch, ", ", seq_len, ") batch");
  std::vector<int32_t> seq_idx(inputs.size());
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* row = inputs.data() + b * seq_len;
    int32_t* out = seq_idx.data() + b * seq_len;
    int32_t doc = 0;
    for (int64_t t = 0; t < seq_len; ++t) {
      if (t > 0 && row[t] == eot_token) ++doc;
      out[t] = doc;
    }
  }
  return seq_idx;
}

}  // namespace ssmtrain
