// The Python module of the CPU kernels: one build for all of them.
#include "decoder_step.h"
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "attention of query columns against a float16 KV cache");
  py::class_<StepSegment>(m, "StepSegment")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, at::Tensor, at::Tensor, std::vector<at::Tensor>,
                    std::vector<at::Tensor>>());
  py::class_<DecoderStep, std::shared_ptr<DecoderStep>>(m, "DecoderStep")
      .def(py::init(&DecoderStep::create))
      .def("__call__", &DecoderStep::run, py::call_guard<py::gil_scoped_release>(),
           "a forward of the decoder's fast path: logits of the `last` rows (all when undefined)");
}
