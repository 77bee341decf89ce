// An 8-bit KV cache: its quantizer, and the attention of a few query columns that reads it.
//
// Why: late in a 30 s window a guided musicgen-small step reads ~300 MB of cached keys and values
// at float16 (24 layers, two rows, 16 heads, ~1 500 columns, 64 values each), as much as its int4
// weights; at 8 bits with one float scale per head vector (64 values) it reads 0.53x that. (ggml's
// q8_0 cache cost LLaMA-3-8B +0.005 perplexity; its 4-bit cache broke a 0.6B model: we stay at 8.)
//
// The format: a head's key (or value) at one column is 64 int8 values (round-to-nearest-even of
// x / s) and one float32 s = max|x| / 127 (0 for an all-zero vector). Keys and values alike.
//
// The attention (`decode_attention_q8`): q (R, H, T, d) float32 against k, v (R, H, >= start + T, d)
// int8 with ks, vs (R, H, >= start + T) float32 scales; query column j attends to cache columns
// 0 .. start + j (causal). Scores: s_t * (q . k_t) * scale in float32; the softmax; the output:
// sum_t p_t * vs_t * v_t, divided by sum_t p_t. Parallel over (row, head) on torch's pool.
#include "kernels.h"
#include "attend_column.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KV8_AVX2 1
#endif

namespace {

#ifdef KV8_AVX2
inline __m256 load8(const int8_t* p) {  // 8 int8 -> 8 float32
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// q . k for 64 int8 values (unscaled), in two chains
inline __m256 dot64_q8(const __m256* q, const int8_t* k) {
  __m256 a = _mm256_mul_ps(q[0], load8(k)), b = _mm256_mul_ps(q[1], load8(k + 8));
  a = _mm256_fmadd_ps(q[2], load8(k + 16), a), b = _mm256_fmadd_ps(q[3], load8(k + 24), b);
  a = _mm256_fmadd_ps(q[4], load8(k + 32), a), b = _mm256_fmadd_ps(q[5], load8(k + 40), b);
  a = _mm256_fmadd_ps(q[6], load8(k + 48), a), b = _mm256_fmadd_ps(q[7], load8(k + 56), b);
  return _mm256_add_ps(a, b);
}
inline __m128 halves(__m256 a) { return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); }

// head_dim 64: the query and the output in registers, four columns' scores a reduction (as the
// float16 cache's `attend64`); the scales of four columns loaded at once (unit stride)
void attend64_q8(const float* qq, const int8_t* kb, const float* ksb, const int8_t* vb, const float* vsb, int64_t k2,
                 int64_t v2, int64_t n, float sc, float* s, float* o) {
  __m256 q[8];
  for (int j = 0; j < 8; ++j) q[j] = _mm256_loadu_ps(qq + 8 * j);
  __m128 mx = _mm_set1_ps(-FLT_MAX);
  const __m128 scale = _mm_set1_ps(sc);
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const int8_t* k = kb + t * k2;
    const __m128 d = _mm_hadd_ps(_mm_hadd_ps(halves(dot64_q8(q, k)), halves(dot64_q8(q, k + k2))),
                                 _mm_hadd_ps(halves(dot64_q8(q, k + 2 * k2)), halves(dot64_q8(q, k + 3 * k2))));
    const __m128 x = _mm_mul_ps(_mm_mul_ps(d, _mm_loadu_ps(ksb + t)), scale);
    _mm_storeu_ps(s + t, x);
    mx = _mm_max_ps(mx, x);
  }
  float m = std::max(std::max(mx[0], mx[1]), std::max(mx[2], mx[3]));
  for (; t < n; ++t) {
    const __m128 h = halves(dot64_q8(q, kb + t * k2));
    const float x = (h[0] + h[1] + h[2] + h[3]) * ksb[t] * sc;
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
    const __m256 p = _mm256_set1_ps(s[i] * vsb[i]);
    const int8_t* v = vb + i * v2;
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(p, load8(v + 8 * j), acc[j]);
  }
  const __m256 inv = _mm256_set1_ps(1.f / sum);
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(o + 8 * j, _mm256_mul_ps(acc[j], inv));
}
#endif

// q . k for one cached column (d values)
inline float dot_q8(const float* q, const int8_t* k, int64_t d) {
  int64_t i = 0;
  float s = 0.f;
#ifdef KV8_AVX2
  __m256 a = _mm256_setzero_ps();
  for (; i + 8 <= d; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), a);
  s = hsum(a);
#endif
  for (; i < d; ++i) s += q[i] * static_cast<float>(k[i]);
  return s;
}

// acc += p * v for one cached column
inline void axpy_q8(float* acc, float p, const int8_t* v, int64_t d) {
  int64_t i = 0;
#ifdef KV8_AVX2
  const __m256 pp = _mm256_set1_ps(p);
  for (; i + 8 <= d; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(pp, load8(v + i), _mm256_loadu_ps(acc + i)));
#endif
  for (; i < d; ++i) acc[i] += p * static_cast<float>(v[i]);
}

}  // namespace

// x (..., d) float32 -> (q (..., d) int8, s (...) float32). Outside -ffast-math: the reference
// (`engine/kvcache.py`) rounds the same float operations in the same order.
#pragma GCC push_options
#pragma GCC optimize("no-fast-math")
std::tuple<torch::Tensor, torch::Tensor> kv_quantize(torch::Tensor x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() >= 1, "x must be float32 (..., d)");
  auto xc = x.contiguous();
  const int64_t d = x.size(-1), n = d ? x.numel() / d : 0;
  auto q = torch::empty(x.sizes(), x.options().dtype(torch::kChar));
  auto s = torch::empty(x.sizes().slice(0, x.dim() - 1), x.options());
  const float* xp = xc.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = s.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    const float* v = xp + r * d;
    float amax = 0.f;
    for (int64_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.f ? 1.0f / scale : 0.f;
    sp[r] = scale;
    int64_t i = 0;
#ifdef KV8_AVX2
    // 8 at a time, the same float multiply and round-to-nearest-even as the scalar tail (a libm
    // `nearbyint` a value cost the int4 rows' quantizer ~6x its time)
    const __m256 vinv = _mm256_set1_ps(inv);
    for (; i + 8 <= d; i += 8) {
      const __m256 x = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), vinv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_cvtps_epi32(x)),
                                        _mm256_extracti128_si256(_mm256_cvtps_epi32(x), 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(qp + r * d + i), _mm_packs_epi16(w, w));
    }
#endif
    for (; i < d; ++i) qp[r * d + i] = static_cast<int8_t>(std::nearbyint(v[i] * inv));
  }
  return {q, s};
}
#pragma GCC pop_options

torch::Tensor decode_attention_q8(torch::Tensor q, torch::Tensor k, torch::Tensor ks, torch::Tensor v,
                                  torch::Tensor vs, int64_t start, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (rows, heads, columns, head_dim)");
  TORCH_CHECK(q.scalar_type() == torch::kFloat, "q must be float32");
  TORCH_CHECK(k.scalar_type() == torch::kChar && v.scalar_type() == torch::kChar, "the cache must be int8");
  TORCH_CHECK(ks.scalar_type() == torch::kFloat && vs.scalar_type() == torch::kFloat, "the scales must be float32");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "the cache needs unit stride in head_dim");
  TORCH_CHECK(ks.dim() == 3 && vs.dim() == 3, "the scales must be (rows, heads, columns)");
  const int64_t R = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  TORCH_CHECK(k.size(0) >= R && k.size(1) == H && k.size(3) == d && k.size(2) >= start + T, "cache too small");
  TORCH_CHECK(v.size(0) >= R && v.size(1) == H && v.size(3) == d && v.size(2) >= start + T, "cache too small");
  TORCH_CHECK(ks.size(0) >= R && ks.size(1) == H && ks.size(2) >= start + T, "key scales too small");
  TORCH_CHECK(vs.size(0) >= R && vs.size(1) == H && vs.size(2) >= start + T, "value scales too small");
  auto qc = q.contiguous();
  auto out = torch::empty({R, H, T, d}, q.options());
  const float* qp = qc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int8_t* kp = k.data_ptr<int8_t>();
  const int8_t* vp = v.data_ptr<int8_t>();
  const float* ksp = ks.data_ptr<float>();
  const float* vsp = vs.data_ptr<float>();
  const int64_t k0 = k.stride(0), k1 = k.stride(1), k2 = k.stride(2);
  const int64_t v0 = v.stride(0), v1 = v.stride(1), v2 = v.stride(2);
  const int64_t ks0 = ks.stride(0), ks1 = ks.stride(1), ks2 = ks.stride(2);
  const int64_t vs0 = vs.stride(0), vs1 = vs.stride(1), vs2 = vs.stride(2);
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, R * H, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(start + T);
    std::vector<float> acc(d);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = b / H, h = b % H;
      const int8_t* kb = kp + r * k0 + h * k1;
      const int8_t* vb = vp + r * v0 + h * v1;
      const float* ksb = ksp + r * ks0 + h * ks1;
      const float* vsb = vsp + r * vs0 + h * vs1;
      for (int64_t j = 0; j < T; ++j) {
        const float* qq = qp + ((r * H + h) * T + j) * d;
        const int64_t n = start + j + 1;
#ifdef KV8_AVX2
        if (d == 64 && ks2 == 1 && vs2 == 1) {
          attend64_q8(qq, kb, ksb, vb, vsb, k2, v2, n, sc, s.data(), op + ((r * H + h) * T + j) * d);
          continue;
        }
#endif
        attend_column(
            n, d, s.data(), acc.data(), op + ((r * H + h) * T + j) * d,
            [&](int64_t t) { return dot_q8(qq, kb + t * k2, d) * ksb[t * ks2] * sc; },
            [&](float* a, float p, int64_t t) { axpy_q8(a, p * vsb[t * vs2], vb + t * v2, d); });
      }
    }
  });
  return out;
}
