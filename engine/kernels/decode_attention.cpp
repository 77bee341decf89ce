// Self-attention of a few query columns against a float16 KV cache, on the CPU.
//
// Why: a live step's attention reads the whole KV cache (both CFG rows, every layer) for one new
// column; in float32 that is the largest single cost of a musicgen-small step late in a window.
// Stored in float16 the cache is half the bytes, but torch's CPU attention on float16 runs no faster
// than on float32 (it is bound by converting, not by reading). This kernel converts in registers
// (F16C / AVX-512) and accumulates in float32, reading each cached byte once. For head_dim 64 (every
// MusicGen) the query and the output stay in registers and four cached columns share a reduction.
//
// q (R, H, T, d) float32; k, v (R, H, >= start + T, d) float16, unit stride in d (views of the
// cache); query column j (0-based) attends to cache columns 0 .. start + j (causal). Returns
// (R, H, T, d) float32. Parallel over (row, head) on torch's intra-op pool.
#include "kernels.h"
#include "attend_column.h"

#include <ATen/Parallel.h>

#include <cfloat>
#include <algorithm>
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
static inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// the four sums of a0..a3, as one vector
static inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  auto half = [](__m512 a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); };
  auto quarter = [](__m256 a) { return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); };
  const __m128 b0 = quarter(half(a0)), b1 = quarter(half(a1)), b2 = quarter(half(a2)), b3 = quarter(half(a3));
  return _mm_hadd_ps(_mm_hadd_ps(b0, b1), _mm_hadd_ps(b2, b3));
}
static inline __m512 dot64(const __m512* q, const at::Half* k) {
  __m512 a = _mm512_mul_ps(q[0], load16(k));
  a = _mm512_fmadd_ps(q[1], load16(k + 16), a);
  a = _mm512_fmadd_ps(q[2], load16(k + 32), a);
  return _mm512_fmadd_ps(q[3], load16(k + 48), a);
}
// head_dim 64 (every MusicGen size): scores four columns a reduction, the output in registers
static void attend64(const float* qq, const at::Half* kb, const at::Half* vb, int64_t ks, int64_t vs, int64_t n,
                     float sc, float* s, float* o) {
  const __m512 q[4] = {_mm512_loadu_ps(qq), _mm512_loadu_ps(qq + 16), _mm512_loadu_ps(qq + 32),
                       _mm512_loadu_ps(qq + 48)};
  __m128 mx = _mm_set1_ps(-FLT_MAX);
  const __m128 scale = _mm_set1_ps(sc);
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const at::Half* k = kb + t * ks;
    const __m128 x = _mm_mul_ps(sum4(dot64(q, k), dot64(q, k + ks), dot64(q, k + 2 * ks), dot64(q, k + 3 * ks)), scale);
    _mm_storeu_ps(s + t, x);
    mx = _mm_max_ps(mx, x);
  }
  float m = std::max(std::max(mx[0], mx[1]), std::max(mx[2], mx[3]));
  for (; t < n; ++t) {
    const float x = _mm512_reduce_add_ps(dot64(q, kb + t * ks)) * sc;
    s[t] = x;
    m = x > m ? x : m;
  }
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp(s[i] - m);
    s[i] = e;
    sum += e;
  }
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t i = 0; i < n; ++i) {
    const __m512 p = _mm512_set1_ps(s[i]);
    const at::Half* v = vb + i * vs;
    for (int j = 0; j < 4; ++j) acc[j] = _mm512_fmadd_ps(p, load16(v + 16 * j), acc[j]);
  }
  const __m512 inv = _mm512_set1_ps(1.f / sum);
  for (int j = 0; j < 4; ++j) _mm512_storeu_ps(o + 16 * j, _mm512_mul_ps(acc[j], inv));
}
#define HAVE_ATTEND64 1
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
static inline __m256 load8h(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// q . k for 64 values, in two chains (an FMA's latency would otherwise serialize eight)
static inline __m256 dot64(const __m256* q, const at::Half* k) {
  __m256 a = _mm256_mul_ps(q[0], load8h(k)), b = _mm256_mul_ps(q[1], load8h(k + 8));
  a = _mm256_fmadd_ps(q[2], load8h(k + 16), a), b = _mm256_fmadd_ps(q[3], load8h(k + 24), b);
  a = _mm256_fmadd_ps(q[4], load8h(k + 32), a), b = _mm256_fmadd_ps(q[5], load8h(k + 40), b);
  a = _mm256_fmadd_ps(q[6], load8h(k + 48), a), b = _mm256_fmadd_ps(q[7], load8h(k + 56), b);
  return _mm256_add_ps(a, b);
}
static inline __m128 halves(__m256 a) { return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); }
// the four sums of a0..a3, as one vector: one reduction for four cached columns
static inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  return _mm_hadd_ps(_mm_hadd_ps(halves(a0), halves(a1)), _mm_hadd_ps(halves(a2), halves(a3)));
}
// head_dim 64 (every MusicGen size): the query and the output in registers, scores four columns a
// reduction (the per-column `dot_row` / `axpy_row` reduced every column and kept the output in
// memory: that was most of a late-window step's attention)
static void attend64(const float* qq, const at::Half* kb, const at::Half* vb, int64_t ks, int64_t vs, int64_t n,
                     float sc, float* s, float* o) {
  __m256 q[8];
  for (int j = 0; j < 8; ++j) q[j] = _mm256_loadu_ps(qq + 8 * j);
  __m128 mx = _mm_set1_ps(-FLT_MAX);
  const __m128 scale = _mm_set1_ps(sc);
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const at::Half* k = kb + t * ks;
    const __m128 x = _mm_mul_ps(sum4(dot64(q, k), dot64(q, k + ks), dot64(q, k + 2 * ks), dot64(q, k + 3 * ks)), scale);
    _mm_storeu_ps(s + t, x);
    mx = _mm_max_ps(mx, x);
  }
  float m = std::max(std::max(mx[0], mx[1]), std::max(mx[2], mx[3]));
  for (; t < n; ++t) {
    const __m128 h = halves(dot64(q, kb + t * ks));
    const float x = (h[0] + h[1] + h[2] + h[3]) * sc;
    s[t] = x;
    m = x > m ? x : m;
  }
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp(s[i] - m);
    s[i] = e;
    sum += e;
  }
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    const __m256 p = _mm256_set1_ps(s[i]);
    const at::Half* v = vb + i * vs;
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(p, load8h(v + 8 * j), acc[j]);
  }
  const __m256 inv = _mm256_set1_ps(1.f / sum);
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(o + 8 * j, _mm256_mul_ps(acc[j], inv));
}
#define HAVE_ATTEND64 1
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
#ifdef HAVE_ATTEND64
        if (d == 64) {
          attend64(qq, kb, vb, ks2, vs2, n, sc, s.data(), op + ((r * H + h) * T + j) * d);
          continue;
        }
#endif
        attend_column(
            n, d, s.data(), acc.data(), op + ((r * H + h) * T + j) * d,
            [&](int64_t t) { return dot_row(qq, kb + t * ks2, d) * sc; },
            [&](float* a, float p, int64_t t) { axpy_row(a, p, vb + t * vs2, d); });
      }
    }
  });
  return out;
}
