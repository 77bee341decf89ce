// Self-attention of a few query columns against a float16 KV cache, on the CPU.
//
// Why: a live step's attention reads the whole KV cache (both CFG rows, every layer) for one new
// column; in float32 that is the largest single cost of a musicgen-small step late in a window.
// Stored in float16 the cache is half the bytes, but torch's CPU attention on float16 runs no faster
// than on float32 (it is bound by converting, not by reading). This kernel converts in registers
// (F16C / AVX-512) and accumulates in float32, reading each cached byte once.
//
// q (R, H, T, d) float32; k, v (R, H, >= start + T, d) float16, unit stride in d (views of the
// cache); query column j (0-based) attends to cache columns 0 .. start + j (causal). Returns
// (R, H, T, d) float32. Parallel over (row, head) on torch's intra-op pool.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cfloat>
#include <cmath>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
static inline float dot_row(const float* q, const at::Half* k, int64_t d) {
  const auto* kh = reinterpret_cast<const uint16_t*>(k);
  __m512 a = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16)
    a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(kh + i))), a);
  float s = _mm512_reduce_add_ps(a);
  for (; i < d; ++i) s += q[i] * static_cast<float>(k[i]);
  return s;
}
static inline void axpy_row(float* acc, float p, const at::Half* v, int64_t d) {
  const auto* vh = reinterpret_cast<const uint16_t*>(v);
  const __m512 pp = _mm512_set1_ps(p);
  int64_t i = 0;
  for (; i + 16 <= d; i += 16)
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(pp, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(vh + i))),
                                              _mm512_loadu_ps(acc + i)));
  for (; i < d; ++i) acc[i] += p * static_cast<float>(v[i]);
}
#elif defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
static inline float dot_row(const float* q, const at::Half* k, int64_t d) {
  const auto* kh = reinterpret_cast<const uint16_t*>(k);
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(kh + i))), a);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_hadd_ps(h, h);
  h = _mm_hadd_ps(h, h);
  float s = _mm_cvtss_f32(h);
  for (; i < d; ++i) s += q[i] * static_cast<float>(k[i]);
  return s;
}
static inline void axpy_row(float* acc, float p, const at::Half* v, int64_t d) {
  const auto* vh = reinterpret_cast<const uint16_t*>(v);
  const __m256 pp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(pp, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vh + i))),
                                              _mm256_loadu_ps(acc + i)));
  for (; i < d; ++i) acc[i] += p * static_cast<float>(v[i]);
}
#else  // portable: the compiler vectorises what it can
static inline float dot_row(const float* q, const at::Half* k, int64_t d) {
  float s = 0.f;
  for (int64_t i = 0; i < d; ++i) s += q[i] * static_cast<float>(k[i]);
  return s;
}
static inline void axpy_row(float* acc, float p, const at::Half* v, int64_t d) {
  for (int64_t i = 0; i < d; ++i) acc[i] += p * static_cast<float>(v[i]);
}
#endif

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t start, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (rows, heads, columns, head_dim)");
  TORCH_CHECK(q.scalar_type() == torch::kFloat, "q must be float32");
  TORCH_CHECK(k.scalar_type() == torch::kHalf && v.scalar_type() == torch::kHalf, "the cache must be float16");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "the cache needs unit stride in head_dim");
  const int64_t R = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  TORCH_CHECK(k.size(0) >= R && k.size(1) == H && k.size(3) == d && k.size(2) >= start + T, "cache too small");
  TORCH_CHECK(v.size(0) >= R && v.size(1) == H && v.size(3) == d && v.size(2) >= start + T, "cache too small");
  auto qc = q.contiguous();
  auto out = torch::empty({R, H, T, d}, q.options());
  const float* qp = qc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const at::Half* kp = k.data_ptr<at::Half>();
  const at::Half* vp = v.data_ptr<at::Half>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, R * H, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(start + T);
    std::vector<float> acc(d);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = b / H, h = b % H;
      const at::Half* kb = kp + r * ks0 + h * ks1;
      const at::Half* vb = vp + r * vs0 + h * vs1;
      for (int64_t j = 0; j < T; ++j) {
        const float* qq = qp + ((r * H + h) * T + j) * d;
        const int64_t n = start + j + 1;
        float m = -FLT_MAX;
        for (int64_t t = 0; t < n; ++t) {
          const float x = dot_row(qq, kb + t * ks2, d) * sc;
          s[t] = x;
          m = x > m ? x : m;
        }
        float sum = 0.f;
        for (int64_t t = 0; t < n; ++t) {
          const float e = std::exp(s[t] - m);
          s[t] = e;
          sum += e;
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t t = 0; t < n; ++t) axpy_row(acc.data(), s[t], vb + t * vs2, d);
        float* o = op + ((r * H + h) * T + j) * d;
        const float inv = 1.f / sum;
        for (int64_t i = 0; i < d; ++i) o[i] = acc[i] * inv;
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "attention of query columns against a float16 KV cache");
}
