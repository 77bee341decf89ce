// The Python module of the CPU kernels: one build for all of them.
#include "codec_step.h"
#include "decoder_step.h"
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "attention of query columns against a float16 KV cache");
  m.def("kv_quantize", &kv_quantize, "vectors of the last dimension as int8 and one float32 scale each");
  m.def("decode_attention_q8", &decode_attention_q8, "attention of query columns against an int8 KV cache",
        py::call_guard<py::gil_scoped_release>());
  m.def("int4_linear", &int4_linear, "x @ W.T, W in 4-bit blocks", py::call_guard<py::gil_scoped_release>());
  m.def("int4_quantize_rows", &int4_quantize_rows, "x's rows as int4_linear quantizes them: int8 blocks, scales");
  m.def("int4_path", &int4_path, "the path int4_linear takes for an isa choice on this CPU");
  py::class_<StepSegment>(m, "StepSegment")
      .def(py::init([](int64_t offset, int64_t rows, int64_t columns, int64_t slot, at::Tensor k, at::Tensor v,
                       std::optional<at::Tensor> k_scale, std::optional<at::Tensor> v_scale,
                       std::vector<at::Tensor> cross_k, std::vector<at::Tensor> cross_v) {
        return StepSegment{offset, rows, columns, slot, std::move(k), std::move(v),
                           k_scale.value_or(at::Tensor()), v_scale.value_or(at::Tensor()),
                           std::move(cross_k), std::move(cross_v)};
      }));
  py::class_<DecoderStep, std::shared_ptr<DecoderStep>>(m, "DecoderStep")
      .def(py::init(&DecoderStep::create))
      .def("__call__", &DecoderStep::run, py::call_guard<py::gil_scoped_release>(),
           "a forward of the decoder's fast path: logits of the `last` rows (all when undefined)");
  py::class_<CodecStream, std::shared_ptr<CodecStream>>(m, "CodecStream")
      .def("push", &CodecStream::push, py::call_guard<py::gil_scoped_release>(),
           "codes (B, K, T) -> the (B, channels, T * hop) samples they make final")
      .def("state", &CodecStream::state, "the layers' state as engine.codec_step lays it out (copies)");
  py::class_<CodecStep, std::shared_ptr<CodecStep>>(m, "CodecStep")
      .def(py::init(&CodecStep::create))
      .def("stream", &CodecStep::stream, "a stream from its layers' steady state");
}
