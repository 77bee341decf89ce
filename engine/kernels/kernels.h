// What the kernels of this folder offer each other; `module.cpp` hands them to Python.
#pragma once
#include <torch/extension.h>

// decode_attention.cpp: query columns against a float16 KV cache (see there).
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t start, double scale);

// int4_linear.cpp: x (M, K) float32 @ W.T, W in 4-bit blocks of 32 (qs (N, nb, 16) uint8, sc (N, nb)
// int16, ds (N, ns) float32, wc (N, ns) int32) -> (M, N) float32; isa: 0 the best this CPU has, 1
// scalar, 2 AVX2.
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor sc, torch::Tensor ds, torch::Tensor wc,
                          int64_t isa);
// the rows' int8 blocks and superblock scales, as int4_linear quantizes them (for the tests)
std::tuple<torch::Tensor, torch::Tensor> int4_quantize_rows(torch::Tensor x);
// the path int4_linear takes for `isa` on this CPU: "avx2" or "scalar"
std::string int4_path(int64_t isa);

// kv8_attention.cpp: an 8-bit KV cache. x (..., d) float32 -> (int8 values, float32 scale per
// vector); and query columns against it (q (R, H, T, d) float32; k, v (R, H, >= start + T, d) int8;
// ks, vs (R, H, >= start + T) float32) -> (R, H, T, d) float32.
std::tuple<torch::Tensor, torch::Tensor> kv_quantize(torch::Tensor x);
torch::Tensor decode_attention_q8(torch::Tensor q, torch::Tensor k, torch::Tensor ks, torch::Tensor v,
                                  torch::Tensor vs, int64_t start, double scale);
