// Packed documents (SPECS section 12): training rows cut from a stream of documents, each
// begun by an end-of-text token (llm.c's convention: <|endoftext|> precedes every document).
// The model restarts its recurrent state where a document begins, so no document sees the
// one before it. This file computes, from a batch's inputs, the document index of every
// position (seq_idx) that the mixers read (nn/mixer.h).
#pragma once

#include <cstdint>
#include <vector>

#include "data/batch.h"

namespace ssmtrain {

// seq_idx[b, t] = the number of positions s in [1, t] with inputs[b, s] == eot_token.
// A document starts AT its separator: the state restarts at the separator, so the first
// token of a document is predicted from the separator alone, and a separator at position 0
// (or none at all) leaves the row one document. Rows are non-decreasing, as the kernels ask.
// inputs: (batch, seq_len) row-major; returns (batch, seq_len) row-major.
std::vector<int32_t> document_index(const std::vector<int32_t>& inputs, int64_t batch, int64_t seq_len,
                                    int64_t eot_token);
inline std::vector<int32_t> document_index(const Batch& b, int64_t eot_token) {
  return document_index(b.inputs, b.batch, b.seq_len, eot_token);
}

}  // namespace ssmtrain
