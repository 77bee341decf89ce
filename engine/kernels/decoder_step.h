// A forward of the decoder in one call (int8 weights, float16 KV caches).
//
// Why: a musicgen-small step is ~1 100 small torch calls from Python (layer norms, views, cache
// writes, residual adds); their dispatch costs milliseconds a step on a 2-core CPU. This runs the
// very same ATen ops on the same rows in the same order as `LanguageModel._forward`'s fast path -
// so the logits are bit-identical - without a Python frame between them, and with the GIL released.
#pragma once
#include <torch/extension.h>
#include <ATen/native/quantized/PackedParams.h>

#include <memory>
#include <optional>
#include <vector>

using PackedLinear = c10::intrusive_ptr<LinearPackedParamsBase>;

struct StepLayer {
  at::Tensor sa_w, sa_b, ca_w, ca_b, ff_w, ff_b;  // layer norms (ca_*: undefined without cross-attention)
  PackedLinear qkv, o, cq, co, fc1, fc2;           // fbgemm-packed int8 matrices (cq / co: null without it)
};

// One stream's rows in a forward (`engine.lm.Segment`): `rows` rows of `columns` columns each, in
// x's rows from `offset` on (row-major); its cache (layers, >= rows, H, capacity, d) float16; the
// first column's slot; one condition's cross-attention k / v (layers, 1, H, S, d) per conditional row.
struct StepSegment {
  int64_t offset, rows, columns, slot;
  at::Tensor k, v;
  std::vector<at::Tensor> cross_k, cross_v;
};

class DecoderStep {
 public:
  // norms: per layer sa_w, sa_b, ca_w, ca_b, ff_w, ff_b (ca_*: None without cross-attention), then
  // the final norm's w, b; mats: per layer qkv, o, cq, co, fc1, fc2 (cq / co: None), then the heads.
  static std::shared_ptr<DecoderStep> create(const std::vector<py::object>& norms, const std::vector<py::object>& mats,
                                             int64_t heads, double eps);
  // x (N, D) float32: the inputs (embeddings + positions) of every segment's tokens; cond: the
  // flat ranges [lo, hi) of the conditional rows' tokens; last: the rows whose logits are wanted
  // -> logits (len(last), codebooks * card).
  at::Tensor run(at::Tensor x, const std::vector<StepSegment>& segments,
                 const std::vector<std::pair<int64_t, int64_t>>& cond, const std::optional<at::Tensor>& last,
                 double scale) const;

 private:
  at::Tensor self_attention(size_t layer, const at::Tensor& qkv, const std::vector<StepSegment>& segments,
                            int64_t total, double scale) const;
  at::Tensor cross_attention(size_t layer, const at::Tensor& q, const std::vector<StepSegment>& segments,
                             double scale) const;

  std::vector<StepLayer> layers_;
  at::Tensor ln_w_, ln_b_;
  PackedLinear head_;
  int64_t heads_ = 0;
  double eps_ = 1e-5;
};
