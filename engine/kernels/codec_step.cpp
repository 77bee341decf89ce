#include "codec_step.h"

#include <cmath>
#include <cstring>

namespace {

// Keep the last `keep` rows of each batch row's (rows, width) block at its head: the state a
// buffer carries into the next push (the regions may overlap: memmove).
void keep_tail(at::Tensor& buf, int64_t from, int64_t keep) {
  if (keep == 0 || from == 0) return;
  const int64_t B = buf.size(0), width = buf.size(2), stride = buf.stride(0);
  float* p = buf.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) std::memmove(p + b * stride, p + b * stride + from * width, keep * width * sizeof(float));
}

// A buffer of `rows` rows whose first `keep` rows are `old`'s first `keep` (the state).
at::Tensor regrow(const at::Tensor& old, int64_t rows, int64_t keep) {
  auto buf = at::zeros({old.size(0), rows, old.size(2)}, old.options());
  if (keep) buf.narrow(1, 0, keep).copy_(old.narrow(1, 0, keep));
  return buf;
}

CodecConv conv_from(const py::tuple& t) {  // ("conv", taps (k, Cin, Cout), bias, dilation, context)
  CodecConv c;
  auto taps = t[1].cast<at::Tensor>().contiguous();
  c.bias = t[2].cast<at::Tensor>().contiguous();
  c.dilation = t[3].cast<int64_t>(), c.context = t[4].cast<int64_t>();
  c.k = taps.size(0), c.cin = taps.size(1), c.cout = taps.size(2);
  c.weight = taps.view({c.k * c.cin, c.cout});
  return c;
}

CodecMatrix matrix_from(const py::object& obj) {  // int8's (packed, anchor), or float32 w (out, in)
  CodecMatrix m;
  if (py::isinstance<py::tuple>(obj))
    m.q = matrix(obj);
  else
    m.wt = obj.cast<at::Tensor>().t().contiguous();
  return m;
}

inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// ELU in place on each batch row's contiguous (rows, width) block. The loop vectorises into
// glibc's libmvec expf (-ffast-math): ~0.05 ms for the ~190 000 values of a musicgen-small push,
// where at::elu_ took 0.44 ms in 13 calls.
void elu_inplace(const at::Tensor& t) {
  const int64_t B = t.size(0), n = t.size(1) * t.size(2), stride = t.stride(0);
  float* p = t.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    float* x = p + b * stride;
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.f ? x[i] : std::exp(x[i]) - 1.f;
  }
}

// A conv to one channel (EnCodec's last, to mono audio): out[t] = bias + sum over taps j of
// x[t + j d] . w_j, straight from the kept inputs (no window matrix).
void one_output(const CodecConv& c, const float* x, int64_t n, float* out) {
  const float* w = c.weight.data_ptr<float>();  // (k Cin, 1)
  const float bias = c.bias.data_ptr<float>()[0];
  for (int64_t t = 0; t < n; ++t) {
    float acc = 0.f;
    for (int64_t j = 0; j < c.k; ++j) {
      const float* xr = x + (t + j * c.dilation) * c.cin;
      const float* wj = w + j * c.cin;
      for (int64_t i = 0; i < c.cin; ++i) acc += xr[i] * wj[i];
    }
    out[t] = bias + acc;
  }
}

}  // namespace

at::Tensor CodecMatrix::operator()(const at::Tensor& x) const {
  // each row its own activation range, as the Python decoder quantises (`Int8Linear`): a stream's
  // samples do not depend on what shares its batch, and the two decoders agree to float rounding
  if (q) return q(x, /*independent=*/true);
  return at::mm(x, wt);
}

std::shared_ptr<CodecStep> CodecStep::create(const std::vector<py::tuple>& layers, at::Tensor codebooks) {
  auto step = std::make_shared<CodecStep>();
  for (const py::tuple& t : layers) {
    const auto kind = t[0].cast<std::string>();
    if (kind == "conv") {
      step->layers_.push_back({CodecKind::Conv, step->convs_.size()});
      step->convs_.push_back(conv_from(t));
    } else if (kind == "convt") {  // ("convt", matrix, bias, stride, k, Cin, Cout)
      CodecConvT c;
      c.mul = matrix_from(t[1]), c.bias = t[2].cast<at::Tensor>().contiguous();
      c.stride = t[3].cast<int64_t>(), c.k = t[4].cast<int64_t>();
      c.cin = t[5].cast<int64_t>(), c.cout = t[6].cast<int64_t>();
      TORCH_CHECK(c.k % c.stride == 0, "a transposed conv's kernel must be a multiple of its stride");
      step->layers_.push_back({CodecKind::ConvT, step->convts_.size()});
      step->convts_.push_back(std::move(c));
    } else if (kind == "lstm") {  // ("lstm", [matrix per layer], [bias per layer], dim)
      CodecLSTM l;
      for (auto m : t[1].cast<py::list>()) l.cat.push_back(matrix_from(py::reinterpret_borrow<py::object>(m)));
      for (auto b : t[2].cast<py::list>()) l.bias.push_back(b.cast<at::Tensor>().contiguous());
      l.dim = t[3].cast<int64_t>();
      step->layers_.push_back({CodecKind::LSTM, step->lstms_.size()});
      step->lstms_.push_back(std::move(l));
    } else if (kind == "elu") {
      step->layers_.push_back({CodecKind::ELU, 0});
    } else if (kind == "res") {  // ("res", [conv...], [shortcut conv] or [], lag, dim)
      CodecRes r;
      for (auto c : t[1].cast<py::list>()) r.convs.push_back(conv_from(c.cast<py::tuple>()));
      for (auto c : t[2].cast<py::list>()) r.shortcut.push_back(conv_from(c.cast<py::tuple>()));
      r.lag = t[3].cast<int64_t>(), r.dim = t[4].cast<int64_t>();
      step->layers_.push_back({CodecKind::Res, step->res_.size()});
      step->res_.push_back(std::move(r));
    } else {
      TORCH_CHECK(false, "unknown codec layer kind ", kind);
    }
  }
  step->codebooks_ = codebooks.contiguous();
  step->channels_ = step->convs_.empty() ? 0 : step->convs_.back().cout;  // the last conv's, in a whole decoder
  return step;
}

std::shared_ptr<CodecStream> CodecStep::stream(const std::vector<at::Tensor>& state, int64_t batch) const {
  return std::make_shared<CodecStream>(shared_from_this(), state, batch);
}

CodecStream::CodecStream(std::shared_ptr<const CodecStep> step, const std::vector<at::Tensor>& state, int64_t batch)
    : step_(std::move(step)), batch_(batch) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const int64_t B = batch;
  auto rows = [&](int64_t n, int64_t width) { return at::zeros({B, n, width}, opts); };
  auto conv_buffers = [&](const CodecConv& c, Buffers& b) {
    b.state.push_back(rows(c.context, c.cin)), b.keep.push_back(c.context), b.out.push_back(rows(0, c.cout));
    // the windows' matrix: not for a 1-tap conv (its inputs are the matrix) or one to a single channel
    b.cols.push_back(c.k > 1 && c.cout > 1 ? rows(0, c.k * c.cin) : at::Tensor());
  };
  for (const CodecLayer& l : step_->layers_) {
    Buffers b;
    switch (l.kind) {
      case CodecKind::Conv:
        conv_buffers(step_->convs_[l.index], b);
        break;
      case CodecKind::ConvT: {
        const CodecConvT& c = step_->convts_[l.index];
        b.state.push_back(rows(c.k - c.stride, c.cout)), b.keep.push_back(c.k - c.stride);
        b.out.push_back(rows(0, c.cout)), b.cols.emplace_back();
        break;
      }
      case CodecKind::LSTM: {
        const CodecLSTM& s = step_->lstms_[l.index];
        const int64_t L = static_cast<int64_t>(s.cat.size());
        b.state = {at::zeros({L, B, s.dim}, opts), at::zeros({L, B, s.dim}, opts)};
        b.keep = {-1, -1}, b.cols = {at::Tensor(), at::Tensor()};
        b.out.push_back(rows(0, s.dim));
        break;
      }
      case CodecKind::ELU:
        break;
      case CodecKind::Res: {
        const CodecRes& r = step_->res_[l.index];
        for (const CodecConv& c : r.convs) conv_buffers(c, b);
        for (const CodecConv& c : r.shortcut) conv_buffers(c, b);
        b.state.push_back(rows(r.lag, r.dim)), b.keep.push_back(r.lag), b.out.push_back(rows(0, r.dim));
        b.cols.emplace_back();
        break;
      }
    }
    bufs_.push_back(std::move(b));
  }
  size_t i = 0;
  for (Buffers& b : bufs_) {
    for (size_t j = 0; j < b.state.size(); ++j, ++i) {
      TORCH_CHECK(i < state.size(), "the codec state has too few tensors");
      const at::Tensor& s = state[i];
      auto head = b.keep[j] < 0 ? b.state[j] : b.state[j].narrow(1, 0, b.keep[j]);
      TORCH_CHECK(s.sizes() == head.sizes(), "codec state tensor ", i, " has shape ", s.sizes(), ", expected ",
                  head.sizes());
      head.copy_(s);
    }
  }
  TORCH_CHECK(i == state.size(), "the codec state has too many tensors");
  reserve(1);
}

void CodecStream::reserve(int64_t frames) {
  if (frames == frames_) return;
  const int64_t B = batch_;
  auto fit = [&](at::Tensor& t, int64_t n) {
    if (t.size(1) != n) t = at::empty({B, n, t.size(2)}, t.options());
  };
  int64_t n = frames;  // samples a push at the current layer's rate
  for (size_t i = 0; i < bufs_.size(); ++i) {
    const CodecLayer& l = step_->layers_[i];
    Buffers& b = bufs_[i];
    switch (l.kind) {
      case CodecKind::Conv: {
        const CodecConv& c = step_->convs_[l.index];
        b.state[0] = regrow(b.state[0], c.context + n, c.context), fit(b.out[0], n);
        if (b.cols[0].defined()) fit(b.cols[0], n);
        break;
      }
      case CodecKind::ConvT: {
        const CodecConvT& c = step_->convts_[l.index];
        n *= c.stride;
        b.state[0] = regrow(b.state[0], n + b.keep[0], b.keep[0]), fit(b.out[0], n);
        break;
      }
      case CodecKind::LSTM:
        fit(b.out[0], n);
        break;
      case CodecKind::ELU:
        break;
      case CodecKind::Res:
        for (size_t j = 0; j < b.state.size(); ++j) {
          b.state[j] = regrow(b.state[j], b.keep[j] + n, b.keep[j]), fit(b.out[j], n);
          if (b.cols[j].defined()) fit(b.cols[j], n);
        }
        break;
    }
  }
  latents_ = at::empty({B, frames, step_->codebooks_.size(2)}, at::TensorOptions().dtype(at::kFloat));
  frames_ = frames;
}

std::vector<at::Tensor> CodecStream::state() const {
  std::vector<at::Tensor> out;
  for (const Buffers& b : bufs_)
    for (size_t j = 0; j < b.state.size(); ++j)
      out.push_back((b.keep[j] < 0 ? b.state[j] : b.state[j].narrow(1, 0, b.keep[j])).clone());
  return out;
}

// x (B, n, Cin) -> (B, n, Cout): the inputs go after the kept ones (through an ELU where asked),
// the k taps' windows side by side make one (n, k Cin) matrix for one GEMM (1.7x faster than a
// GEMM a tap at these shapes), and the last `context` inputs stay for the next push.
at::Tensor CodecStream::conv(const CodecConv& c, at::Tensor& buf, at::Tensor& cols, at::Tensor& out,
                             const at::Tensor& x, bool act) {
  const int64_t n = x.size(1);
  auto slot = buf.narrow(1, c.context, n);
  slot.copy_(x);
  if (act) elu_inplace(slot);
  for (int64_t b = 0; b < batch_; ++b) {
    auto ob = out.select(0, b);
    auto xb = buf.select(0, b);
    if (c.k == 1) {
      at::addmm_out(ob, c.bias, xb.narrow(0, 0, n), c.weight);
      continue;
    }
    if (c.cout == 1) {  // the last conv (to mono audio): a GEMV was ~90 us on 640 rows, this ~10
      one_output(c, xb.data_ptr<float>(), n, ob.data_ptr<float>());
      continue;
    }
    auto cb = cols.select(0, b);
    // row t of cols: the k taps' input rows t, t + d, ... side by side (memcpy: 7 strided ATen
    // copies and their views were ~70 us on the last conv's 640 rows)
    const float* xp = xb.data_ptr<float>();
    float* cp = cb.data_ptr<float>();
    const size_t bytes = c.cin * sizeof(float);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < c.k; ++j) std::memcpy(cp + (t * c.k + j) * c.cin, xp + (t + j * c.dilation) * c.cin, bytes);
    at::addmm_out(ob, c.bias, cb, c.weight);
  }
  keep_tail(buf, n, c.context);
  return out;
}

// x (B, n, Cin) -> (B, n S, Cout): one GEMM gives each input's k output rows, added at their place
// (k = m S: m contiguous slabs) onto the tail the last push left; the last k - S rows wait.
at::Tensor CodecStream::convt(const CodecConvT& c, Buffers& b, const at::Tensor& x) {
  const int64_t n = x.size(1), S = c.stride, m = c.k / S, overlap = c.k - S;
  auto& buf = b.state[0];
  auto cols = c.mul(x.reshape({batch_ * n, c.cin})).view({batch_, n, m, S, c.cout});
  buf.narrow(1, overlap, n * S).zero_();
  for (int64_t i = 0; i < m; ++i) buf.narrow(1, i * S, n * S).view({batch_, n, S, c.cout}).add_(cols.select(2, i));
  at::add_out(b.out[0], buf.narrow(1, 0, n * S), c.bias);
  keep_tail(buf, n * S, overlap);
  return b.out[0];
}

// x (B, n, C) -> h + x per sample; (h, c) carried. Gate order i, f, g, o.
at::Tensor CodecStream::lstm(const CodecLSTM& l, Buffers& b, const at::Tensor& x) {
  const int64_t n = x.size(1), C = l.dim, L = static_cast<int64_t>(l.cat.size());
  auto& hs = b.state[0];
  auto& cs = b.state[1];
  auto& out = b.out[0];
  for (int64_t t = 0; t < n; ++t) {
    at::Tensor inp = x.select(1, t);
    for (int64_t layer = 0; layer < L; ++layer) {
      auto h = hs.select(0, layer), c = cs.select(0, layer);
      auto gates = l.cat[layer](at::cat({inp, h}, 1)).add_(l.bias[layer]);
      const float* g = gates.data_ptr<float>();
      float* hp = h.data_ptr<float>();
      float* cp = c.data_ptr<float>();
      for (int64_t r = 0; r < batch_; ++r) {
        const float* gr = g + r * 4 * C;
        for (int64_t j = 0; j < C; ++j) {
          const float cell = sigmoid(gr[C + j]) * cp[r * C + j] + sigmoid(gr[j]) * std::tanh(gr[2 * C + j]);
          cp[r * C + j] = cell;
          hp[r * C + j] = sigmoid(gr[3 * C + j]) * std::tanh(cell);
        }
      }
      inp = h;
    }
    auto row = out.select(1, t);
    at::add_out(row, inp, x.select(1, t));
  }
  return out;
}

// x (B, n, dim) -> the conv path's n samples plus the shortcut's, `lag` samples behind
at::Tensor CodecStream::res(const CodecRes& r, Buffers& b, const at::Tensor& x) {
  const int64_t n = x.size(1);
  size_t j = 0;
  at::Tensor y = x;
  for (const CodecConv& c : r.convs) y = conv(c, b.state[j], b.cols[j], b.out[j], y, /*act=*/true), ++j;
  at::Tensor skip = x;
  for (const CodecConv& c : r.shortcut) skip = conv(c, b.state[j], b.cols[j], b.out[j], skip, /*act=*/false), ++j;
  auto& pending = b.state[j];
  pending.narrow(1, r.lag, n).copy_(skip);
  at::add_out(b.out[j], pending.narrow(1, 0, n), y);
  keep_tail(pending, n, r.lag);
  return b.out[j];
}

at::Tensor CodecStream::push(const at::Tensor& codes) {
  at::InferenceMode guard;
  TORCH_CHECK(codes.dim() == 3 && codes.size(0) == batch_, "codes must be (batch, codebooks, frames)");
  const int64_t T = codes.size(2), K = codes.size(1);
  if (T == 0) return at::zeros({batch_, step_->channels_, 0});
  reserve(T);
  const auto& books = step_->codebooks_;
  TORCH_CHECK(K == books.size(0), "codes have ", K, " codebooks, the codec ", books.size(0));
  auto flat = latents_.view({batch_ * T, books.size(2)});
  auto idx = codes.to(at::kLong).transpose(1, 2).contiguous();  // (B, T, K)
  at::index_select_out(flat, books.select(0, 0), 0, idx.select(2, 0).reshape({-1}));
  for (int64_t k = 1; k < K; ++k) flat.add_(books.select(0, k).index_select(0, idx.select(2, k).reshape({-1})));
  at::Tensor x = latents_;
  for (size_t i = 0; i < bufs_.size(); ++i) {
    const CodecLayer& l = step_->layers_[i];
    Buffers& b = bufs_[i];
    switch (l.kind) {
      case CodecKind::Conv:
        x = conv(step_->convs_[l.index], b.state[0], b.cols[0], b.out[0], x, /*act=*/false);
        break;
      case CodecKind::ConvT:
        x = convt(step_->convts_[l.index], b, x);
        break;
      case CodecKind::LSTM:
        x = lstm(step_->lstms_[l.index], b, x);
        break;
      case CodecKind::ELU:
        elu_inplace(x);  // a layer's output feeds only the next layer: in place
        break;
      case CodecKind::Res:
        x = res(step_->res_[l.index], b, x);
        break;
    }
  }
  return x.transpose(1, 2).clone(at::MemoryFormat::Contiguous);  // the caller keeps it: not a view of a buffer
}
