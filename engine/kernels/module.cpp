// The Python module of the CPU kernels: one build for all of them.
#include "decoder_step.h"
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "attention of query columns against a float16 KV cache");
  m.def("int4_linear", &int4_linear, "x @ W.T, W in 4-bit blocks", py::call_guard<py::gil_scoped_release>());
  m.def("int4_quantize_rows", &int4_quantize_rows, "x's rows as int4_linear quantizes them: int8 blocks, scales");
  m.def("int4_path", &int4_path, "the path int4_linear takes for an isa choice on this CPU");
  py::class_<StepSegment>(m, "StepSegment")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, at::Tensor, at::Tensor, std::vector<at::Tensor>,
                    std::vector<at::Tensor>>());
  py::class_<DecoderStep, std::shared_ptr<DecoderStep>>(m, "DecoderStep")
      .def(py::init(&DecoderStep::create))
      .def("__call__", &DecoderStep::run, py::call_guard<py::gil_scoped_release>(),
           "a forward of the decoder's fast path: logits of the `last` rows (all when undefined)");
}
