// x @ W.T with W in 4-bit blocks, for the handful of rows a live step carries, on the CPU.
//
// Why: a musicgen-small step reads every weight once; at int8 that is ~310 MB a guided step, ~15 ms
// at this host's ~21 GB/s. Four bits a weight, plus the scales (4.625 bits in all), read 0.58x that.
//
// The format (`engine/int4.py` packs it and holds the plain-PyTorch reference of this arithmetic),
// per output row: blocks of 32 weights in pairs, qs (N, nb / 2, 32) uint8: byte j of a pair holds
// weight j of its first block in its low nibble and weight j of its second block in its high
// nibble, each stored + 8 ([-8, 7] -> [0, 15]); each block's scale is
// an integer sc (N, nb) int16 (|sc| <= 16383) times its superblock's float scale ds (N, ns) float32,
// a superblock being 8 blocks (256 weights; the last one may be shorter); wc (N, ns) int32: each
// superblock's sum of sc x (sum of the block's weights). K is padded with zeros to nb * 32, nb even.
//
// The arithmetic: every row of x is quantized once per call to int8 with one float scale per
// superblock (amax x (1/127), rounded to nearest-even: `quantize_rows`); within a superblock the sum
// of sc x (block's dot product) is an exact integer, scaled by (ds x row scale) and summed in float32.
// A row's result depends on that row alone (no scale is shared between rows): batch-invariant by
// construction. A weight block is unpacked once and used for every row of the call.
//
// Why superblocks with integer scales (ggml's Q4_K idea; its Q4_0 shape, a float16 scale per 32,
// measured first): two cores are too few to convert and scale every block's sum in float - that
// kernel ran at 0.56-0.98x fbgemm's int8 for the guidance pair (BENCHMARKS.md). Here a block costs
// `maddubs` (unsigned nibbles x int8 rows) and `madd` by its scale into int32 lanes, which hold 8
// blocks (<= 8 x 2 x 2 x 255 x 8 x 16383 < 2^31); the rows go in + 128 (unsigned), whose share,
// 128 x sum(sc x sum(w)) a superblock, the packing computed (wc). AVX2 where the CPU has it, chosen at run time; a portable scalar loop
// otherwise (and on request, for the tests).
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define MGL_AVX2 1
#endif

namespace {

constexpr int64_t QK = 32;               // weights per block
constexpr int64_t SB = 8;                // blocks per superblock
constexpr int64_t MAX_ROWS = 8;          // rows a pass of the scalar loop serves
constexpr float INV127 = 1.0f / 127.0f;  // one multiply, the same in the reference

// blocks of 32 in a width of K, in whole pairs (K padded with zeros to a multiple of 64)
int64_t blocks(int64_t K) { return 2 * ((K + 2 * QK - 1) / (2 * QK)); }

// The rows of x as int8 blocks: q (M, nb * 32), the same + 128 as unsigned bytes u (for
// `maddubs`), a scale per superblock s (M, ns).
struct Rows {
  int64_t M, nb, ns;
  const int8_t* q;
  const uint8_t* u;
  const float* s;
};

// row of x (K floats) -> nb blocks of 32 int8 (zero-padded), the same + 128, ns scales. Outside
// -ffast-math: the reference (`engine/int4.py`) rounds the same float operations in the same order.
// Vectorized where a block lies whole inside K (a call's rows were ~20 us of a 1024-wide matrix's
// ~70 us when this was a scalar loop through libm's nearbyint).
#pragma GCC push_options
#pragma GCC optimize("no-fast-math")
void quantize_row(const float* x, int64_t K, int64_t nb, int8_t* q, uint8_t* u, float* s) {
  for (int64_t sb = 0; sb * SB < nb; ++sb) {
    const int64_t lo = sb * SB * QK, hi = std::min(K, lo + SB * QK);
    float amax = 0.0f;
    int64_t i = lo;
#ifdef MGL_AVX2
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (; i + 8 <= hi; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m);
    for (float v : lanes) amax = std::max(amax, v);
#endif
    for (; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = amax * INV127;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    s[sb] = scale;
    i = lo;
#ifdef MGL_AVX2
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
    auto whole = [&](int64_t at) {  // x[at .. at + 8) rounded to nearest-even int32
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + at), vinv);
      return _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    };
    for (; i + QK <= hi; i += QK) {
      const __m256i ab = _mm256_packs_epi32(whole(i), whole(i + 8));
      const __m256i cd = _mm256_packs_epi32(whole(i + 16), whole(i + 24));
      const __m256i b8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), b8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + i), _mm256_xor_si256(b8, flip));
    }
#endif
    for (; i < hi; ++i) {
      q[i] = static_cast<int8_t>(std::nearbyint(x[i] * inv));
      u[i] = static_cast<uint8_t>(q[i] + 128);
    }
  }
  for (int64_t i = K; i < nb * QK; ++i) q[i] = 0, u[i] = 128;
}
#pragma GCC pop_options

// out[r] for rows 0 .. R-1 against one output row, in plain C++ (the same integers and floats)
void dot_scalar(const uint8_t* qs, const int16_t* sc, const float* ds, const Rows& x, int64_t r0, int64_t R,
                float* out) {
  for (int64_t r = 0; r < R; ++r) out[r] = 0.0f;
  int8_t w[QK];
  for (int64_t sb = 0; sb < x.ns; ++sb) {
    int64_t acc[MAX_ROWS] = {};
    for (int64_t b = sb * SB; b < std::min(x.nb, (sb + 1) * SB); ++b) {
      const uint8_t* pair = qs + (b / 2) * QK;
      const int shift = 4 * (b % 2);
      for (int j = 0; j < QK; ++j) w[j] = static_cast<int8_t>(((pair[j] >> shift) & 0x0F) - 8);
      for (int64_t r = 0; r < R; ++r) {
        const int8_t* y = x.q + ((r0 + r) * x.nb + b) * QK;
        int32_t dot = 0;
        for (int j = 0; j < QK; ++j) dot += static_cast<int32_t>(w[j]) * y[j];
        acc[r] += static_cast<int64_t>(sc[b]) * dot;
      }
    }
    for (int64_t r = 0; r < R; ++r) out[r] += static_cast<float>(acc[r]) * (ds[sb] * x.s[(r0 + r) * x.ns + sb]);
  }
}

#ifdef MGL_AVX2
inline float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows r0 .. r0 + R - 1 against output rows n (qs, sc, ds, wc) and n + 1 (the same + the strides;
// a stride of 0 repeats row n, whose second result is then not wanted). A pair of blocks a step:
// one 32-byte load holds both (low nibbles: the first, high: the second). `maddubs` takes the rows
// + 128 (unsigned) against the signed weights: the + 128 adds 128 x sum(w) x sc per block, which
// the packing summed per superblock (wc) and comes off once per superblock.
template <int R>
void dot_avx2(const uint8_t* qs, const int16_t* sc, const float* ds, const int32_t* wc, int64_t sq, int64_t ss,
              int64_t sd, const Rows& x, int64_t r0, float* out0, float* out1) {
  __m256 f0[R], f1[R];
  float c0[R] = {}, c1[R] = {};
  for (int r = 0; r < R; ++r) f0[r] = f1[r] = _mm256_setzero_ps();
  const uint8_t* qs1 = qs + sq;
  const int16_t* sc1 = sc + ss;
  const float* ds1 = ds + sd;
  const int32_t* wc1 = wc + sd;
  const __m256i low = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = x.u + (r0 + r) * x.nb * QK;
  const int64_t ahead = 32 * x.nb * 16;  // bytes from row n to row n + 32 (prefetches past the end are no-ops)
  for (int64_t sb = 0; sb < x.ns; ++sb) {
    __m256i i0[R], i1[R];
    for (int r = 0; r < R; ++r) i0[r] = i1[r] = _mm256_setzero_si256();
    const int64_t end = std::min(x.nb, (sb + 1) * SB);
    for (int64_t b = sb * SB; b < end; b += 2) {
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + b * 16));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs1 + b * 16));
      // the same bytes 32 rows on: from memory, the weights streamed at ~9 GB/s without this (the
      // hardware's prefetch does not run far enough ahead of this loop); a step's matrices at 2
      // rows took 19.6 ms prefetching 2 rows on, 18.2 at 8, 17.7 at 16, 16.5 at 32, 16.7 at 64
      // (bench-matrices, one run each)
      _mm_prefetch(reinterpret_cast<const char*>(qs + ahead + b * 16), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(qs1 + ahead + b * 16), _MM_HINT_T0);
      // the pair's first block (low nibbles), then its second (high): fewer live registers than
      // both at once (16 ymm: no spills in this loop)
      for (int half = 0; half < 2; ++half) {
        const __m256i n0 = half ? _mm256_srli_epi16(v0, 4) : v0, n1 = half ? _mm256_srli_epi16(v1, 4) : v1;
        const __m256i w0 = _mm256_sub_epi8(_mm256_and_si256(n0, low), eight);
        const __m256i w1 = _mm256_sub_epi8(_mm256_and_si256(n1, low), eight);
        const __m256i s0 = _mm256_set1_epi16(sc[b + half]), s1 = _mm256_set1_epi16(sc1[b + half]);
        for (int r = 0; r < R; ++r) {
          const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + (b + half) * QK));
          i0[r] = _mm256_add_epi32(i0[r], _mm256_madd_epi16(_mm256_maddubs_epi16(y, w0), s0));
          i1[r] = _mm256_add_epi32(i1[r], _mm256_madd_epi16(_mm256_maddubs_epi16(y, w1), s1));
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float xs = x.s[(r0 + r) * x.ns + sb];
      const float g0 = ds[sb] * xs, g1 = ds1[sb] * xs;
      f0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0[r]), _mm256_set1_ps(g0), f0[r]);
      f1[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1[r]), _mm256_set1_ps(g1), f1[r]);
      c0[r] += static_cast<float>(128 * wc[sb]) * g0;
      c1[r] += static_cast<float>(128 * wc1[sb]) * g1;
    }
  }
  for (int r = 0; r < R; ++r) {
    out0[r] = hsum(f0[r]) - c0[r];
    if (out1) out1[r] = hsum(f1[r]) - c1[r];
  }
}

// Rows a pass (bench-matrices, small's matrices): 3 rows (a style stream's) in one pass take 1.26x
// two rows' time, where passes of 2 + 1 took 1.46x; 4 would spill registers.
constexpr int64_t PASS_ROWS = 3;
using DotRows = void (*)(const uint8_t*, const int16_t*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                         const Rows&, int64_t, float*, float*);
DotRows dot_rows(int64_t R) {
  static constexpr DotRows by_rows[] = {nullptr, dot_avx2<1>, dot_avx2<2>, dot_avx2<3>};
  return by_rows[R];
}
#endif

bool have_avx2() {
#ifdef MGL_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

struct Quantized {
  torch::Tensor q, u, s;
  Rows rows() const {
    return Rows{q.size(0), q.size(1) / QK, s.size(1), q.data_ptr<int8_t>(), u.data_ptr<uint8_t>(), s.data_ptr<float>()};
  }
};

Quantized quantize(const torch::Tensor& x, int64_t nb) {
  const int64_t M = x.size(0), K = x.size(1), ns = (nb + SB - 1) / SB;
  Quantized out{torch::empty({M, nb * QK}, x.options().dtype(at::kChar)),
                torch::empty({M, nb * QK}, x.options().dtype(at::kByte)), torch::empty({M, ns}, x.options())};
  for (int64_t r = 0; r < M; ++r)
    quantize_row(x.data_ptr<float>() + r * K, K, nb, out.q.data_ptr<int8_t>() + r * nb * QK,
                 out.u.data_ptr<uint8_t>() + r * nb * QK, out.s.data_ptr<float>() + r * ns);
  return out;
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> int4_quantize_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  auto q = quantize(x.contiguous(), blocks(x.size(1)));
  return {q.q, q.s};
}

std::string int4_path(int64_t isa) {
  if (isa == 1) return "scalar";
  TORCH_CHECK(isa != 2 || have_avx2(), "this CPU (or this build) has no AVX2 path");
  return have_avx2() ? "avx2" : "scalar";
}

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor sc, torch::Tensor ds, torch::Tensor wc,
                          int64_t isa) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "x must be (M, K) float32");
  TORCH_CHECK(qs.scalar_type() == at::kByte && qs.dim() == 3 && qs.size(2) == QK && qs.is_contiguous(),
              "qs must be contiguous (N, nb / 2, 32) uint8");
  const int64_t N = qs.size(0), nb = 2 * qs.size(1), ns = (nb + SB - 1) / SB, M = x.size(0), K = x.size(1);
  TORCH_CHECK(sc.scalar_type() == at::kShort && sc.is_contiguous() && sc.dim() == 2 && sc.size(0) == N &&
                  sc.size(1) == nb,
              "sc must be contiguous (N, nb) int16");
  TORCH_CHECK(ds.scalar_type() == at::kFloat && ds.is_contiguous() && ds.dim() == 2 && ds.size(0) == N &&
                  ds.size(1) == ns,
              "ds must be contiguous (N, ns) float32");
  TORCH_CHECK(wc.scalar_type() == at::kInt && wc.is_contiguous() && wc.sizes() == ds.sizes(),
              "wc must be contiguous (N, ns) int32");
  TORCH_CHECK(blocks(K) == nb, "x's width does not match the blocks");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  // the rows' int8 blocks: ~M * K bytes, once per call
  const Quantized xq = quantize(x.contiguous(), nb);
  const Rows rows = xq.rows();
  const bool avx2 = int4_path(isa) == "avx2";
  const uint8_t* qp = qs.data_ptr<uint8_t>();
  const int16_t* sp = sc.data_ptr<int16_t>();
  const float* dp = ds.data_ptr<float>();
  const int32_t* cp = wc.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
#ifdef MGL_AVX2
  if (avx2) {
    // pairs of output rows a pass (both rows' nibbles against each loaded row block); grain: 8
    // pairs (~37 KB of a 4096-wide matrix)
    at::parallel_for(0, (N + 1) / 2, 8, [&](int64_t p0, int64_t p1) {
      float part0[PASS_ROWS], part1[PASS_ROWS];
      for (int64_t pair = p0; pair < p1; ++pair) {
        const int64_t n = 2 * pair;
        const bool two = n + 1 < N;  // the last row alone: its "second" row is itself, not written
        const int64_t sq = two ? nb * 16 : 0, ss = two ? nb : 0, sd = two ? ns : 0;
        for (int64_t r0 = 0; r0 < M; r0 += PASS_ROWS) {  // more rows: another pass over weights now in L1
          const int64_t R = std::min<int64_t>(PASS_ROWS, M - r0);
          dot_rows(R)(qp + n * nb * 16, sp + n * nb, dp + n * ns, cp + n * ns, sq, ss, sd, rows, r0, part0,
                      two ? part1 : nullptr);
          for (int64_t r = 0; r < R; ++r) {
            op[(r0 + r) * N + n] = part0[r];
            if (two) op[(r0 + r) * N + n + 1] = part1[r];
          }
        }
      }
    });
    return out;
  }
#endif
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    float part[MAX_ROWS];
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t r0 = 0; r0 < M; r0 += MAX_ROWS) {
        const int64_t R = std::min(MAX_ROWS, M - r0);
        dot_scalar(qp + n * nb * 16, sp + n * nb, dp + n * ns, rows, r0, R, part);
        for (int64_t r = 0; r < R; ++r) op[(r0 + r) * N + n] = part[r];
      }
  });
  return out;
}
