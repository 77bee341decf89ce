// A live step of one stream through the whole decoder in one call (int8 weights, float16 KV cache).
//
// Why: a musicgen-small step is ~1 100 small torch calls from Python (layer norms, views, cache
// writes, residual adds); their dispatch costs milliseconds a step on a 2-core CPU. This runs the
// very same ATen ops in the same order as `LanguageModel._forward`'s fast path - so the logits are
// bit-identical - without a Python frame between them, and with the GIL released.
#pragma once
#include <torch/extension.h>
#include <ATen/native/quantized/PackedParams.h>

#include <memory>
#include <vector>

using PackedLinear = c10::intrusive_ptr<LinearPackedParamsBase>;

struct StepLayer {
  at::Tensor sa_w, sa_b, ca_w, ca_b, ff_w, ff_b;  // layer norms (ca_*: undefined without cross-attention)
  PackedLinear qkv, o, cq, co, fc1, fc2;           // fbgemm-packed int8 matrices (cq / co: null without it)
};

class DecoderStep {
 public:
  // norms: per layer sa_w, sa_b, ca_w, ca_b, ff_w, ff_b (ca_*: None without cross-attention), then
  // the final norm's w, b; mats: per layer qkv, o, cq, co, fc1, fc2 (cq / co: None), then the heads.
  static std::shared_ptr<DecoderStep> create(const std::vector<py::object>& norms, const std::vector<py::object>& mats,
                                             int64_t heads, double eps);
  // x (R, D) float32: the column's embeddings + positions, conditional rows first; k, v the cache
  // (layers, >= R, H, capacity, d) float16; the column goes to slot `slot` (> 0); cross_k[j] /
  // cross_v[j] (layers, 1, H, S_j, d): conditional row j's text keys / values (one per row).
  at::Tensor run(at::Tensor x, at::Tensor k, at::Tensor v, int64_t slot, const std::vector<at::Tensor>& cross_k,
                 const std::vector<at::Tensor>& cross_v, double scale) const;

 private:
  std::vector<StepLayer> layers_;
  at::Tensor ln_w_, ln_b_;
  PackedLinear head_;
  int64_t heads_ = 0;
  double eps_ = 1e-5;
};
