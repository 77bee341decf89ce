#include "decoder_step.h"

#include <torch/csrc/jit/python/pybind_utils.h>

#include "kernels.h"

namespace {

PackedLinear packed(const py::object& obj) {
  if (obj.is_none()) return PackedLinear();
  return torch::jit::toIValue(obj, c10::getCustomClassType<PackedLinear>()).toCustomClass<LinearPackedParamsBase>();
}

at::Tensor tensor(const py::object& obj) { return obj.is_none() ? at::Tensor() : obj.cast<at::Tensor>(); }

// `Int8Linear.__call__` for rows that need not be independent (a lone stream)
at::Tensor mul(const PackedLinear& w, const at::Tensor& x) { return w->apply_dynamic(x, /*reduce_range=*/true); }

}  // namespace

std::shared_ptr<DecoderStep> DecoderStep::create(const std::vector<py::object>& norms,
                                                 const std::vector<py::object>& mats, int64_t heads, double eps) {
  TORCH_CHECK(norms.size() % 6 == 2 && mats.size() % 6 == 1 && norms.size() / 6 == mats.size() / 6,
              "6 norms and 6 matrices a layer, then the final norm and the heads");
  auto step = std::make_shared<DecoderStep>();
  for (size_t i = 0; i + 2 < norms.size(); i += 6) {
    StepLayer l;
    l.sa_w = tensor(norms[i]), l.sa_b = tensor(norms[i + 1]), l.ca_w = tensor(norms[i + 2]);
    l.ca_b = tensor(norms[i + 3]), l.ff_w = tensor(norms[i + 4]), l.ff_b = tensor(norms[i + 5]);
    l.qkv = packed(mats[i]), l.o = packed(mats[i + 1]), l.cq = packed(mats[i + 2]);
    l.co = packed(mats[i + 3]), l.fc1 = packed(mats[i + 4]), l.fc2 = packed(mats[i + 5]);
    step->layers_.push_back(std::move(l));
  }
  step->ln_w_ = tensor(norms[norms.size() - 2]);
  step->ln_b_ = tensor(norms.back());
  step->head_ = packed(mats.back());
  step->heads_ = heads;
  step->eps_ = eps;
  return step;
}

at::Tensor DecoderStep::run(at::Tensor x, at::Tensor k, at::Tensor v, int64_t slot,
                            const std::vector<at::Tensor>& cross_k, const std::vector<at::Tensor>& cross_v,
                            double scale) const {
  at::InferenceMode guard;
  const int64_t R = x.size(0), D = x.size(1), H = heads_, d = D / H;
  const int64_t C = static_cast<int64_t>(cross_k.size());  // conditional rows
  TORCH_CHECK(slot > 0 && C <= R && cross_v.size() == cross_k.size(), "a step after the first column, <= R conditions");
  const std::vector<int64_t> norm{D};
  for (size_t i = 0; i < layers_.size(); ++i) {
    const StepLayer& l = layers_[i];
    // self-attention over the cache (`_self_attention`, one segment of one column)
    auto h = at::layer_norm(x, norm, l.sa_w, l.sa_b, eps_);
    auto qkv = mul(l.qkv, h).view({R, 1, 3, H, d}).permute({2, 0, 3, 1, 4});
    auto kc = k.select(0, i).narrow(0, 0, R), vc = v.select(0, i).narrow(0, 0, R);
    kc.narrow(2, slot, 1).copy_(qkv.select(0, 1));
    vc.narrow(2, slot, 1).copy_(qkv.select(0, 2));
    auto a = decode_attention(qkv.select(0, 0), kc, vc, slot, scale).transpose(1, 2).reshape({R, D});
    x = x + mul(l.o, a);
    // cross-attention of the conditional rows only (`_lean_cross`); the others' is exactly zero
    if (C > 0 && l.cq) {
      auto hc = at::layer_norm(x.narrow(0, 0, C), norm, l.ca_w, l.ca_b, eps_);
      auto q = mul(l.cq, hc);
      at::Tensor att;
      if (C == 1) {
        att = at::scaled_dot_product_attention(q.view({1, 1, H, d}).transpose(1, 2), cross_k[0].select(0, i),
                                               cross_v[0].select(0, i), {}, 0.0, false, scale)
                  .transpose(1, 2)
                  .reshape({1, D});
      } else {
        att = at::zeros({C, D}, q.options());
        for (int64_t j = 0; j < C; ++j) {
          auto qj = q.narrow(0, j, 1).view({1, 1, H, d}).transpose(1, 2);
          auto aj = at::scaled_dot_product_attention(qj, cross_k[j].select(0, i), cross_v[j].select(0, i), {}, 0.0,
                                                     false, scale);
          att.narrow(0, j, 1).copy_(aj.transpose(1, 2).reshape({1, D}));
        }
      }
      auto out = mul(l.co, att);
      x = C == R ? x + out : at::cat({x.narrow(0, 0, C) + out, x.narrow(0, C, R - C)});
    }
    // feed-forward
    h = at::layer_norm(x, norm, l.ff_w, l.ff_b, eps_);
    x = x + mul(l.fc2, at::gelu(mul(l.fc1, h)));
  }
  x = at::layer_norm(x, norm, ln_w_, ln_b_, eps_);
  return mul(head_, x);
}
