#include "decoder_step.h"

#include <torch/csrc/jit/python/pybind_utils.h>

#include "kernels.h"

#include <algorithm>
#include <cmath>

namespace {

using Packed = c10::intrusive_ptr<LinearPackedParamsBase>;

at::Tensor tensor(const py::object& obj) { return obj.is_none() ? at::Tensor() : obj.cast<at::Tensor>(); }

}  // namespace

Matrix matrix(const py::object& obj) {
  if (obj.is_none()) return Matrix{};
  auto parts = obj.cast<py::tuple>();
  if (parts.size() == 4) {  // int4
    Matrix m;
    m.qs = parts[0].cast<at::Tensor>(), m.sc = parts[1].cast<at::Tensor>();
    m.ds = parts[2].cast<at::Tensor>(), m.wc = parts[3].cast<at::Tensor>();
    return m;
  }
  auto ivalue = torch::jit::toIValue(parts[0], c10::getCustomClassType<Packed>());
  return Matrix{ivalue.toCustomClass<LinearPackedParamsBase>(), parts[1].cast<at::Tensor>()};
}

namespace {

// `Int8Linear.__call__(x, independent_rows=True)`'s scaling, in two passes over memory instead of
// five ATen ops (the norm and the product alone were ~33 us each on the codec's 8 x 8192 blocks):
// x (M, K) / its rows' max-abs (clamped at 1e-30, as torch's) into in (M + 1, K), whose last row
// the caller fills with the anchor. Outside -ffast-math, so the division stays a division and the
// results equal torch's to the bit.
#pragma GCC push_options
#pragma GCC optimize("no-fast-math")
void scale_rows(const float* x, int64_t M, int64_t K, float* in, float* s) {
  for (int64_t r = 0; r < M; ++r) {
    const float* xr = x + r * K;
    float m = 0.f;
    for (int64_t j = 0; j < K; ++j) m = std::max(m, std::fabs(xr[j]));
    m = std::max(m, 1e-30f);
    s[r] = m;
    for (int64_t j = 0; j < K; ++j) in[r * K + j] = xr[j] / m;
  }
}

void unscale_rows(float* y, int64_t M, int64_t N, const float* s) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t j = 0; j < N; ++j) y[r * N + j] *= s[r];
}
#pragma GCC pop_options

}  // namespace

// `Int4Linear.__call__`, or `Int8Linear.__call__`: with `independent`, each row scaled to max-abs 1
// and the anchor row appended, so that fbgemm's one activation range is [-1, 1] whatever the other
// rows hold
at::Tensor Matrix::operator()(const at::Tensor& x, bool independent) const {
  if (qs.defined()) return int4_linear(x, qs, sc, ds, wc, 0);
  if (!independent) return packed->apply_dynamic(x, /*reduce_range=*/true);
  const auto xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  auto in = at::empty({M + 1, K}, xc.options());
  std::vector<float> s(M);
  scale_rows(xc.data_ptr<float>(), M, K, in.data_ptr<float>(), s.data());
  in.select(0, M).copy_(anchor.select(0, 0));
  auto y = packed->apply_dynamic(in, /*reduce_range=*/true);
  unscale_rows(y.data_ptr<float>(), M, y.size(1), s.data());
  return y.narrow(0, 0, M);
}

std::shared_ptr<DecoderStep> DecoderStep::create(const std::vector<py::object>& norms,
                                                 const std::vector<py::object>& mats, int64_t heads, double eps) {
  TORCH_CHECK(norms.size() % 6 == 2 && mats.size() % 6 == 1 && norms.size() / 6 == mats.size() / 6,
              "6 norms and 6 matrices a layer, then the final norm and the heads");
  auto step = std::make_shared<DecoderStep>();
  for (size_t i = 0; i + 2 < norms.size(); i += 6) {
    StepLayer l;
    l.sa_w = tensor(norms[i]), l.sa_b = tensor(norms[i + 1]), l.ca_w = tensor(norms[i + 2]);
    l.ca_b = tensor(norms[i + 3]), l.ff_w = tensor(norms[i + 4]), l.ff_b = tensor(norms[i + 5]);
    l.qkv = matrix(mats[i]), l.o = matrix(mats[i + 1]), l.cq = matrix(mats[i + 2]);
    l.co = matrix(mats[i + 3]), l.fc1 = matrix(mats[i + 4]), l.fc2 = matrix(mats[i + 5]);
    step->layers_.push_back(std::move(l));
  }
  step->ln_w_ = tensor(norms[norms.size() - 2]);
  step->ln_b_ = tensor(norms.back());
  step->head_ = matrix(mats.back());
  step->heads_ = heads;
  step->eps_ = eps;
  return step;
}

// `_self_attention`: each segment's q / k / v, its keys and values into its cache, attention over it
at::Tensor DecoderStep::self_attention(size_t layer, const at::Tensor& qkv, const std::vector<StepSegment>& segments,
                                       int64_t total, double scale) const {
  const int64_t H = heads_, d = qkv.size(1) / 3 / H, D = H * d;
  const bool single = segments.size() == 1 && segments[0].rows * segments[0].columns == total;
  at::Tensor out = single ? at::Tensor() : at::zeros({total, D}, qkv.options());
  for (const StepSegment& s : segments) {
    const int64_t n = s.rows, T = s.columns, start = s.slot;
    auto parts = qkv.narrow(0, s.offset, n * T).view({n, T, 3, H, d}).permute({2, 0, 3, 1, 4});
    auto q = parts.select(0, 0), k = parts.select(0, 1), v = parts.select(0, 2);
    auto kc = s.k.select(0, layer).narrow(0, 0, n), vc = s.v.select(0, layer).narrow(0, 0, n);
    at::Tensor ksc, vsc;  // an 8-bit cache's scales (`KVCache.write`)
    if (s.k_scale.defined()) {
      ksc = s.k_scale.select(0, layer).narrow(0, 0, n), vsc = s.v_scale.select(0, layer).narrow(0, 0, n);
      auto [kq, kd] = kv_quantize(k);
      auto [vq, vd] = kv_quantize(v);
      kc.narrow(2, start, T).copy_(kq), ksc.narrow(2, start, T).copy_(kd);
      vc.narrow(2, start, T).copy_(vq), vsc.narrow(2, start, T).copy_(vd);
    } else {
      kc.narrow(2, start, T).copy_(k);
      vc.narrow(2, start, T).copy_(v);
    }
    at::Tensor a;
    if (start > 0 && ksc.defined()) {  // query column j sees cache columns 0 .. start + j
      a = decode_attention_q8(q, kc, ksc, vc, vsc, start, scale);
    } else if (start > 0) {
      a = decode_attention(q, kc, vc, start, scale);
    } else {  // the window's first columns attend to the fresh tensors, causally
      a = at::scaled_dot_product_attention(q, k, v, {}, 0.0, T > 1, scale);
    }
    a = a.transpose(1, 2).reshape({n * T, D});
    if (single) return a;
    out.narrow(0, s.offset, n * T).copy_(a);
  }
  return out;
}

// `_cross_attention`
at::Tensor DecoderStep::cross_attention(size_t layer, const at::Tensor& q, const std::vector<StepSegment>& segments,
                                        const std::vector<int64_t>& offsets, double scale) const {
  const int64_t H = heads_, D = q.size(1), d = D / H, total = q.size(0);
  auto attend = [&](const StepSegment& s, size_t j, int64_t r) {
    const int64_t T = s.columns;
    auto qj = q.narrow(0, r, T).view({1, T, H, d}).transpose(1, 2);
    return at::scaled_dot_product_attention(qj, s.cross_k[j].select(0, layer), s.cross_v[j].select(0, layer), {},
                                            0.0, false, scale)
        .transpose(1, 2)
        .reshape({T, D});
  };
  if (segments.size() == 1 && segments[0].cross_k.size() == 1 && total == segments[0].columns)
    return attend(segments[0], 0, 0);
  auto a = at::zeros({total, D}, q.options());
  for (size_t i = 0; i < segments.size(); ++i) {
    const StepSegment& s = segments[i];
    for (size_t j = 0; j < s.cross_k.size(); ++j) {
      const int64_t r = offsets[i] + static_cast<int64_t>(j) * s.columns;
      a.narrow(0, r, s.columns).copy_(attend(s, j, r));
    }
  }
  return a;
}

at::Tensor DecoderStep::run(at::Tensor x, const std::vector<StepSegment>& segments,
                            const std::vector<std::pair<int64_t, int64_t>>& cond, const std::optional<at::Tensor>& last,
                            bool ind, double scale) const {
  at::InferenceMode guard;
  const int64_t N = x.size(0), D = x.size(1);
  const std::vector<int64_t> norm{D};
  // where each segment's conditional rows sit: among all rows (a batch computes every row's
  // cross-attention, zero for the others), or among the conditional rows alone (`_lean_cross`)
  std::vector<int64_t> at_rows, among_cond;
  int64_t o = 0;
  for (const StepSegment& s : segments) {
    at_rows.push_back(s.offset);
    among_cond.push_back(o);
    o += static_cast<int64_t>(s.cross_k.size()) * s.columns;
  }
  at::Tensor index;  // the conditional rows, where they are not one range
  if (cond.size() > 1) {
    std::vector<at::Tensor> ranges;
    for (const auto& [lo, hi] : cond) ranges.push_back(at::arange(lo, hi, at::kLong));
    index = at::cat(ranges);
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const StepLayer& l = layers_[i];
    auto h = at::layer_norm(x, norm, l.sa_w, l.sa_b, eps_);
    x = x + l.o(self_attention(i, l.qkv(h, ind), segments, N, scale), ind);
    if (!cond.empty() && l.cq && ind) {  // every row; the unconditional ones attend to nothing: zero
      h = at::layer_norm(x, norm, l.ca_w, l.ca_b, eps_);
      x = x + l.co(cross_attention(i, l.cq(h, ind), segments, at_rows, scale), ind);
    } else if (!cond.empty() && l.cq) {  // the conditional rows only (`_lean_cross`)
      const bool one = cond.size() == 1;
      auto rows = one ? x.narrow(0, cond[0].first, cond[0].second - cond[0].first) : x.index_select(0, index);
      auto q = l.cq(at::layer_norm(rows, norm, l.ca_w, l.ca_b, eps_), false);
      const std::vector<int64_t> offsets = one ? std::vector<int64_t>(segments.size(), 0) : among_cond;
      auto out = l.co(cross_attention(i, q, segments, offsets, scale), false);
      if (one) {
        x = at::cat({x.narrow(0, 0, cond[0].first), rows + out, x.narrow(0, cond[0].second, N - cond[0].second)});
      } else {
        x = x.index_add(0, index, out);
      }
    }
    h = at::layer_norm(x, norm, l.ff_w, l.ff_b, eps_);
    x = x + l.fc2(at::gelu(l.fc1(h, ind)), ind);
  }
  x = at::layer_norm(x, norm, ln_w_, ln_b_, eps_);
  return head_(last ? x.index_select(0, *last) : x, ind);
}
