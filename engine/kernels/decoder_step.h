// A forward of the decoder in one call (int8 or int4 weights, float16 or int8 KV caches).
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

// One matrix as the live path multiplies by it: int8 as `engine.linear.Int8Linear` (fbgemm's packed
// weights, and the anchor row that pins the activations' range when rows must not depend on each
// other), or int4 as `engine.int4.Int4Linear` (its four tensors; rows independent by construction).
struct Matrix {
  c10::intrusive_ptr<LinearPackedParamsBase> packed;  // int8; null for int4
  at::Tensor anchor;                                 // int8: (1, in): -1 first, 1 last
  at::Tensor qs, sc, ds, wc;                         // int4; undefined for int8
  explicit operator bool() const { return static_cast<bool>(packed) || qs.defined(); }
  at::Tensor operator()(const at::Tensor& x, bool independent) const;
};

// A matrix from Python: None (no matrix), int8's (fbgemm packed weights, anchor row) or int4's
// (qs, sc, ds, wc)
Matrix matrix(const py::object& obj);

struct StepLayer {
  at::Tensor sa_w, sa_b, ca_w, ca_b, ff_w, ff_b;  // layer norms (ca_*: undefined without cross-attention)
  Matrix qkv, o, cq, co, fc1, fc2;             // (cq / co: none without cross-attention)
};

// One stream's rows in a forward (`engine.lm.Segment`): `rows` rows of `columns` columns each, in
// x's rows from `offset` on (row-major); its cache (layers, >= rows, H, capacity, d) float16, or
// int8 with its scales k_scale / v_scale (layers, >= rows, H, capacity) float32 (undefined for
// float16); the first column's slot; one condition's cross-attention k / v (layers, 1, H, S, d) per
// conditional row.
struct StepSegment {
  int64_t offset, rows, columns, slot;
  at::Tensor k, v, k_scale, v_scale;
  std::vector<at::Tensor> cross_k, cross_v;
};

class DecoderStep {
 public:
  // norms: per layer sa_w, sa_b, ca_w, ca_b, ff_w, ff_b (ca_*: None without cross-attention), then
  // the final norm's w, b; mats: per layer qkv, o, cq, co, fc1, fc2 (cq / co: None), then the heads,
  // each an (fbgemm packed weights, anchor row) pair or int4's (qs, sc, ds, wc).
  static std::shared_ptr<DecoderStep> create(const std::vector<py::object>& norms, const std::vector<py::object>& mats,
                                             int64_t heads, double eps);
  // x (N, D) float32: the inputs (embeddings + positions) of every segment's tokens, padding rows
  // last; cond: the flat ranges [lo, hi) of the conditional rows' tokens; last: the rows whose
  // logits are wanted (all when None); independent: every row's result must not depend on the
  // others' values (a batch) -> logits (rows, codebooks * card).
  at::Tensor run(at::Tensor x, const std::vector<StepSegment>& segments,
                 const std::vector<std::pair<int64_t, int64_t>>& cond, const std::optional<at::Tensor>& last,
                 bool independent, double scale) const;

 private:
  at::Tensor self_attention(size_t layer, const at::Tensor& qkv, const std::vector<StepSegment>& segments,
                            int64_t total, double scale) const;
  // q: the rows at `offsets[i] + j * columns` are segment i's conditional row j; the rest stay 0
  at::Tensor cross_attention(size_t layer, const at::Tensor& q, const std::vector<StepSegment>& segments,
                             const std::vector<int64_t>& offsets, double scale) const;

  std::vector<StepLayer> layers_;
  at::Tensor ln_w_, ln_b_;
  Matrix head_;
  int64_t heads_ = 0;
  double eps_ = 1e-5;
};
