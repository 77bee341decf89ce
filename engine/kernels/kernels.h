// What the kernels of this folder offer each other; `module.cpp` hands them to Python.
#pragma once
#include <torch/extension.h>

// decode_attention.cpp: query columns against a float16 KV cache (see there).
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t start, double scale);
