// at::vec building blocks for the CPU kernels. Included only by the capability translation units
// (kernels_default.cpp, kernels_avx2.cpp), which set CPU_CAPABILITY before including it.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "common/epilogue.h"

namespace fastblocks {

// The activation table's primitives on vectors (common/activation.h has the scalar ones): ATen's vectorized
// functions. For float32, exp is ATen's exp_u20 (error <= 20 ulp, ~2e-6 relative: the error bound of the float32
// kernels is 1e-5) and the reciprocal an approximation refined by one Newton step (~2 ulp): SiLU's exp and division
// are most of its cost, and the exact Sleef exp and a division made the SiLU pass 4-7x the ReLU one on this
// project's bench shapes. float64 keeps the exact functions (its tests compare to 1e-12).
template <typename T>
struct ActMath<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  using Scalar = T;
  static constexpr bool kFloat = std::is_same_v<T, float>;
  C10_ALWAYS_INLINE static V constant(double v) { return V(static_cast<T>(v)); }
  C10_ALWAYS_INLINE static V select(const V& mask, const V& a, const V& b) { return V::blendv(b, a, mask); }
  C10_ALWAYS_INLINE static V clamp_min(const V& v, const V& lo) { return at::vec::maximum(v, lo); }  // NaN-propagating
  C10_ALWAYS_INLINE static V clamp_max(const V& v, const V& hi) { return at::vec::minimum(v, hi); }
  C10_ALWAYS_INLINE static V exp(const V& v) {
    if constexpr (kFloat) {
      return v.exp_u20();
    } else {
      return v.exp();
    }
  }
  C10_ALWAYS_INLINE static V erf(const V& v) { return v.erf(); }
  C10_ALWAYS_INLINE static V tanh(const V& v) { return v.tanh(); }
  // 1 / v for finite v.
  C10_ALWAYS_INLINE static V reciprocal(const V& v) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
    if constexpr (kFloat) {
      const __m256 x = v;
      const __m256 r = _mm256_rcp_ps(x);  // 12 bits
      return V(_mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, _mm256_set1_ps(2.f))));  // r * (2 - x r): ~23 bits
    }
#endif
    return V(T(1)) / v;
  }
};

namespace cpu {
inline namespace CPU_CAPABILITY {

// A chunk of kSize consecutive elements of scalar_t, held as kVecs vectors of the accumulation type
// (half and bfloat16 widen to two float vectors).
template <typename scalar_t>
struct Chunk {
  using acc = acc_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc>;
  static constexpr bool kReduced =
      std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;
  static constexpr int kVecs = kReduced ? 2 : 1;
  static constexpr int64_t kLanes = Vec::size();
  static constexpr int64_t kSize = kVecs * kLanes;

  Vec v[kVecs];

  // Loads n <= kSize elements; lanes past n are zero.
  static Chunk load(const scalar_t* p, int64_t n = kSize) {
    Chunk c;
    if constexpr (kReduced) {
      std::tie(c.v[0], c.v[1]) = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(p, n));
    } else {
      c.v[0] = Vec::loadu(p, n);
    }
    return c;
  }
  void store(scalar_t* p, int64_t n = kSize) const {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p, n);
    } else {
      v[0].store(p, n);
    }
  }
  // Lanes of vector k that are inside the first n elements.
  static int64_t lanes_of(int k, int64_t n) { return std::clamp<int64_t>(n - k * kLanes, 0, kLanes); }
};

template <typename V>
typename V::value_type sum_lanes(const V& v) {
  typename V::value_type lanes[V::size()];
  v.store(lanes);
  typename V::value_type total = 0;
  for (int64_t i = 0; i < V::size(); ++i) total += lanes[i];
  return total;
}

// Elements per task for at::parallel_for (ATen's own grain size).
constexpr int64_t kGrainElements = 32768;

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastblocks
