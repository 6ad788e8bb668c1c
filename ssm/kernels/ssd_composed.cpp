#include "ssm/kernels/ssd_composed.h"

#include "core/ops.h"

namespace ssmtrain {

namespace {

// Heads share the B/C of their group: (.., G, N) -> (.., H, N), head h using group h / (H/G).
Tensor groups_to_heads(const Tensor& t, int64_t H) {
  int64_t G = t.size(-2);
  if (G == H) return t;
  Dims s = t.shape();  // (B, c, Q, G, N)
  Tensor e = t.unsqueeze(-2).expand({s[0], s[1], s[2], G, H / G, s[4]});
  return e.reshape({s[0], s[1], s[2], H, s[4]});
}

}  // namespace

std::pair<Tensor, Tensor> ssd_chunked_composed(const Tensor& x, const Tensor& dt_raw, const Tensor& A,
                                               const Tensor& Bm, const Tensor& Cm, const Tensor& D,
                                               const Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
                                               const Tensor& h0, const Tensor& seq_idx) {
  SSMT_CHECK(x.dim() == 4, "ssd: x ", x.describe(), ": expected (B, L, H, P)");
  const int64_t Bsz = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  const int64_t G = Bm.size(2), N = Bm.size(3);
  SSMT_CHECK(chunk_size > 0, "ssd: chunk_size must be positive, got ", chunk_size);
  SSMT_CHECK(G > 0 && H % G == 0, "ssd: heads H = ", H, " are not divisible by groups G = ", G);
  const int64_t Q = chunk_size, c = (L + Q - 1) / Q, pad_len = c * Q - L;

  Tensor dt = dt_bias.defined() ? dt_raw + dt_bias : dt_raw;
  if (dt_softplus) dt = softplus(dt);
  // Padding the tail with dt = 0 makes those steps identities (a = 1, no input).
  Tensor xp = pad_len ? pad(x, 1, 0, pad_len) : x;
  Tensor dtp = pad_len ? pad(dt, 1, 0, pad_len) : dt;
  Tensor Bp = pad_len ? pad(Bm, 1, 0, pad_len) : Bm;
  Tensor Cp = pad_len ? pad(Cm, 1, 0, pad_len) : Cm;

  // Chunked, head-major layouts.
  Tensor X = xp.reshape({Bsz, c, Q, H, P}).permute({0, 3, 1, 2, 4});                   // (B, H, c, Q, P)
  Tensor DT = dtp.reshape({Bsz, c, Q, H}).permute({0, 3, 1, 2});                       // (B, H, c, Q)
  Tensor Bh = groups_to_heads(Bp.reshape({Bsz, c, Q, G, N}), H).permute({0, 3, 1, 2, 4});  // (B, H, c, Q, N)
  Tensor Ch = groups_to_heads(Cp.reshape({Bsz, c, Q, G, N}), H).permute({0, 3, 1, 2, 4});  // (B, H, c, Q, N)
  Tensor Adt = DT * A.reshape({1, H, 1, 1});                                           // (B, H, c, Q)
  Tensor Acs = cumsum(Adt, -1);                                                        // (B, H, c, Q)
  Tensor Xdt = X * DT.unsqueeze(-1);                                                   // (B, H, c, Q, P)

  // Packed documents: the document of every step (the padded tail continues the last one;
  // indices below 2^24 are exact in f32) and of the step before each chunk (the first
  // chunk's is seq_0). Masks are 1 where a factor stays within one document.
  Tensor same_doc, same_as_end, enters;  // (B, 1, c, Q, Q), (B, 1, c, Q), (B, 1, c, Q)
  if (seq_idx.defined()) {
    Tensor s = seq_idx.to(x.dtype());
    if (pad_len) s = cat({s, s.narrow(1, L - 1, 1).expand({Bsz, pad_len})}, 1);
    Tensor SEQ = s.reshape({Bsz, 1, c, Q});
    Tensor ends = SEQ.narrow(-1, Q - 1, 1);                                            // (B, 1, c, 1)
    Tensor before = c > 1 ? cat({SEQ.narrow(2, 0, 1).narrow(3, 0, 1), ends.narrow(2, 0, c - 1)}, 2)
                          : SEQ.narrow(3, 0, 1);                                       // (B, 1, c, 1)
    same_doc = eq(SEQ.unsqueeze(-1), SEQ.unsqueeze(-2));
    same_as_end = eq(SEQ, ends);
    enters = eq(SEQ, before);
  }

  // 1. Intra-chunk (quadratic) part. seg[i, j] = sum_{k=j+1..i} Adt[k], as a masked
  // cumulative sum (never a difference of cumsums).
  Tensor idx = Tensor::arange(0, static_cast<double>(Q), 1, x.dtype(), x.device());
  Tensor row = idx.reshape({Q, 1}), col = idx.reshape({1, Q});
  Tensor strictly_lower = gt(row, col), lower = ge(row, col);                           // (Q, Q)
  Tensor Aexp = Adt.unsqueeze(-1).expand({Bsz, H, c, Q, Q});                           // [i, j] = Adt[i]
  Tensor seg = cumsum(where(strictly_lower, Aexp, Tensor::zeros({1}, x.dtype(), x.device())), -2);
  Tensor Lmask = where(lower, exp(seg), Tensor::zeros({1}, x.dtype(), x.device()));    // (B, H, c, Q, Q)
  if (same_doc.defined()) Lmask = Lmask * same_doc;
  Tensor scores = matmul(Ch, Bh.transpose(-1, -2));                                    // (B, H, c, Q, Q)
  Tensor Y = matmul(scores * Lmask, Xdt);                                              // (B, H, c, Q, P)

  // 2. Each chunk's state from its own inputs: S_c = sum_l exp(Acs_last - Acs_l) B_l^T (dt x)_l.
  Tensor Alast = Acs.narrow(-1, Q - 1, 1);                                             // (B, H, c, 1)
  Tensor decay = exp(Alast - Acs);                                                     // (B, H, c, Q)
  if (same_as_end.defined()) decay = decay * same_as_end;
  Tensor S = matmul((Bh * decay.unsqueeze(-1)).transpose(-1, -2), Xdt);              // (B, H, c, N, P)

  // 3. Inter-chunk recurrence over the c chunk states (only L/Q steps).
  Tensor in_decay = exp(Acs);                                                          // (B, H, c, Q)
  if (enters.defined()) in_decay = in_decay * enters;
  Tensor chunk_decay = in_decay.narrow(-1, Q - 1, 1);                                  // (B, H, c, 1)
  Tensor running = h0.defined() ? h0.transpose(-1, -2) : Tensor::zeros({Bsz, H, N, P}, x.dtype(), x.device());
  std::vector<Tensor> incoming;
  for (int64_t k = 0; k < c; ++k) {
    incoming.push_back(running);
    Tensor dk = chunk_decay.select(2, k).unsqueeze(-1);                                // (B, H, 1, 1)
    running = running * dk + S.select(2, k);
  }
  Tensor Sin = stack(incoming, 2);                                                     // (B, H, c, N, P)

  // 4. State-to-output: Y_off = exp(Acs_l) C_l S_in.
  Y = Y + matmul(Ch, Sin) * in_decay.unsqueeze(-1);
  if (D.defined()) Y = Y + X * D.reshape({1, H, 1, 1, 1});

  Tensor y = Y.permute({0, 2, 3, 1, 4}).reshape({Bsz, c * Q, H, P});
  if (pad_len) y = y.narrow(1, 0, L);
  return {y.contiguous(), running.transpose(-1, -2).contiguous()};
}

}  // namespace ssmtrain
