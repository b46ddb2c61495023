// How close a compressed cache's next-token distributions stay to the full cache's.
#pragma once

#include <cstdint>
#include <span>

namespace fairkv::model {

// KL(P || Q) in nats, with P = softmax(ref_logits) (the full cache) and Q = softmax(logits).
double kl_divergence(std::span<const float> ref_logits, std::span<const float> logits);

struct Fidelity {
  double kl = 0;    // mean KL over rows
  double top1 = 0;  // share of rows whose argmax agrees
  int64_t rows = 0;
};

// Compares row by row two equally long sets of logits rows of n_vocab floats.
Fidelity compare_rows(std::span<const float> ref, std::span<const float> got, int64_t n_vocab);

}  // namespace fairkv::model
