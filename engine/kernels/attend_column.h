// The softmax attention of one query column over n cached columns: the loop the float16 and the
// int8 cache share (`decode_attention.cpp`, `kv8_attention.cpp`). `score(t)`: column t's scaled
// score; `add(acc, p, t)`: acc += p x column t's value. s: n floats of scratch, acc: d floats.
#pragma once
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

template <class Score, class Add>
inline void attend_column(int64_t n, int64_t d, float* s, float* acc, float* o, Score score, Add add) {
  float m = -FLT_MAX;
  for (int64_t t = 0; t < n; ++t) {
    const float x = score(t);
    s[t] = x;
    m = x > m ? x : m;
  }
  float sum = 0.f;
  for (int64_t t = 0; t < n; ++t) {
    const float e = std::exp(s[t] - m);
    s[t] = e;
    sum += e;
  }
  std::fill(acc, acc + d, 0.f);
  for (int64_t t = 0; t < n; ++t) add(acc, s[t], t);
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < d; ++i) o[i] = acc[i] * inv;
}
