// The streaming EnCodec decoder's steady state in one call a push (`engine.codec_step`).
//
// Why: the Python decoder (`engine.codec`) spends ~6.8 ms a frame on musicgen-small's codec, of
// which its ~1.6 ms of int8 matrices and ~1 ms of convolutions are the arithmetic; the rest is ~600
// small torch calls, concatenations of state and the anchor row's extra ops. Past the warm-up
// (a few frames, in Python) every layer takes and gives a fixed number of samples a push, so its
// state fits preallocated buffers: this runs the same layers on them, time-major (rows = samples),
// with the GIL released. The first frames and the flush stay in Python: the state moves across
// as a flat list of tensors (`CodecStream::state`, `engine.codec_step` builds it).
#pragma once
#include <torch/extension.h>

#include <memory>
#include <vector>

#include "decoder_step.h"

// A matrix the decoder multiplies by: int8 (fbgemm, `Matrix`) or float32 `w` (out, in).
struct CodecMatrix {
  Matrix q;
  at::Tensor wt;  // float32: w.T (in, out), contiguous
  at::Tensor operator()(const at::Tensor& x) const;  // x (M, in) -> (M, out)
};

// A stride-1 convolution with EnCodec's padding, in steady state: `context` input samples kept.
struct CodecConv {
  at::Tensor weight;  // (k Cin, Cout): the taps' weights, transposed, stacked tap by tap
  at::Tensor bias;  // (Cout)
  int64_t k = 0, dilation = 1, cin = 0, cout = 0, context = 0;
};

// A transposed convolution whose kernel is a multiple of its stride (EnCodec's k = 2 S).
struct CodecConvT {
  CodecMatrix mul;  // (k * Cout rows ordered tap-major, Cin)
  at::Tensor bias;
  int64_t stride = 0, k = 0, cin = 0, cout = 0;
};

struct CodecLSTM {
  std::vector<CodecMatrix> cat;  // per layer: [W_ih | W_hh] (4C, 2C)
  std::vector<at::Tensor> bias;  // per layer: b_ih + b_hh (4C)
  int64_t dim = 0;
};

// ELU -> conv -> ELU -> conv ..., plus the shortcut (a conv or the identity) delayed by `lag` samples.
struct CodecRes {
  std::vector<CodecConv> convs;
  std::vector<CodecConv> shortcut;  // empty: the identity
  int64_t lag = 0, dim = 0;
};

enum class CodecKind { Conv, ConvT, LSTM, ELU, Res };

struct CodecLayer {
  CodecKind kind;
  size_t index;  // into CodecStep's vector of that kind
};

class CodecStream;

class CodecStep : public std::enable_shared_from_this<CodecStep> {
 public:
  // layers: the decoder's layers in order, as `engine.codec_step` describes them (see there);
  // codebooks (K, card, D) float32.
  static std::shared_ptr<CodecStep> create(const std::vector<py::tuple>& layers, at::Tensor codebooks);
  // A stream of `batch` rows from its layers' steady state (`CodecStream::state`'s order).
  std::shared_ptr<CodecStream> stream(const std::vector<at::Tensor>& state, int64_t batch) const;

 private:
  friend class CodecStream;
  std::vector<CodecLayer> layers_;
  std::vector<CodecConv> convs_;
  std::vector<CodecConvT> convts_;
  std::vector<CodecLSTM> lstms_;
  std::vector<CodecRes> res_;
  at::Tensor codebooks_;
  int64_t channels_ = 1;
};

// One stream's buffers: each layer's state at the head of a buffer that also takes the push.
class CodecStream {
 public:
  CodecStream(std::shared_ptr<const CodecStep> step, const std::vector<at::Tensor>& state, int64_t batch);
  // codes (B, K, T) int64 -> the T * hop samples (B, channels, T * hop) they make final
  at::Tensor push(const at::Tensor& codes);
  // the layers' state, in the order `stream` takes it (copies)
  std::vector<at::Tensor> state() const;

 private:
  // A layer's buffers: `state` holds its state in the first `keep` rows (all of it where keep < 0)
  // and room for a push after them; `out` its outputs (a residual block's: each conv's, then the sum).
  struct Buffers {
    std::vector<at::Tensor> state, out;
    std::vector<int64_t> keep;
    std::vector<at::Tensor> cols;  // a conv's windows side by side (B, n, k Cin); undefined where unused
  };
  at::Tensor conv(const CodecConv& c, at::Tensor& buf, at::Tensor& cols, at::Tensor& out, const at::Tensor& x,
                  bool act);
  at::Tensor convt(const CodecConvT& c, Buffers& b, const at::Tensor& x);
  at::Tensor lstm(const CodecLSTM& l, Buffers& b, const at::Tensor& x);
  at::Tensor res(const CodecRes& r, Buffers& b, const at::Tensor& x);
  void reserve(int64_t frames);  // size every buffer for pushes of `frames` frames

  std::shared_ptr<const CodecStep> step_;
  int64_t batch_, frames_ = 0;  // rows, and the frames a push the buffers are sized for
  std::vector<Buffers> bufs_;    // per layer
  at::Tensor latents_;           // (B, frames, D): the codes' embeddings
};
