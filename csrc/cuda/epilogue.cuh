// Device-side epilogue machinery shared by every CUDA kernel: launch shape, pack widths, per-channel
// parameters of a pack, dtype dispatch. Lean includes only (no ATen), like every .cu here.
#pragma once

#include <cuda_runtime.h>

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "common/channel_view.h"
#include "common/epilogue.h"
#include "common/epilogue_args.h"
#include "cuda/kernel_utils.cuh"

namespace fastblocks::cuda {

constexpr int kThreads = 256;
constexpr int kIlp = 2;  // packs per thread per tensor

// Calls f(integral_constant<int, VEC>) with VEC the 16-byte width of T when vec says so, else 1: two
// instantiations per kernel (a misaligned or odd-sized tensor takes the scalar path).
template <typename T, typename F>
void with_vec(int vec, F&& f) {
  constexpr int kWide = 16 / sizeof(T);
  if (vec == kWide) {
    f(std::integral_constant<int, kWide>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// ---------------------------------------------------------------------------------------------------------
// Per-channel parameters of one pack of VEC consecutive elements starting at flat index `first`.
// The mode is chosen on the host so the common layouts need no per-element channel arithmetic.
enum class ChannelMode : int {
  kNone,        // no scale or bias: 1 and 0
  kPerPack,     // run % VEC == 0: the whole pack is in one channel (one load of each parameter)
  kRowVector,   // channels-last (run == 1), C % VEC == 0, parameters aligned: VEC consecutive channels
  kPerElement,  // anything else: a channel cursor per element
};

template <typename acc, int VEC, ChannelMode M>
__device__ __forceinline__ void pack_params(const acc* __restrict__ scale, const acc* __restrict__ bias, int64_t first,
                                            const ChannelView& v, acc (&s)[VEC], acc (&b)[VEC]) {
  if constexpr (M == ChannelMode::kNone) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = acc(1), b[k] = acc(0);
  } else if constexpr (M == ChannelMode::kPerPack) {
    const int64_t c = (first / v.run) % v.channels;
    const acc s0 = scale ? scale[c] : acc(1), b0 = bias ? bias[c] : acc(0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) s[k] = s0, b[k] = b0;
  } else if constexpr (M == ChannelMode::kRowVector) {
    const int64_t c0 = first % v.channels;
    if (scale) {
      const auto sp = *reinterpret_cast<const Pack<acc, VEC>*>(scale + c0);
#pragma unroll
      for (int k = 0; k < VEC; ++k) s[k] = sp.v[k];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) s[k] = acc(1);
    }
    if (bias) {
      const auto bp = *reinterpret_cast<const Pack<acc, VEC>*>(bias + c0);
#pragma unroll
      for (int k = 0; k < VEC; ++k) b[k] = bp.v[k];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) b[k] = acc(0);
    }
  } else {
    ChannelCursor cur(first, v.run, v.channels);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      s[k] = scale ? scale[cur.channel] : acc(1);
      b[k] = bias ? bias[cur.channel] : acc(0);
      cur.next(v.run, v.channels);
    }
  }
}

template <typename T, int VEC>
ChannelMode pick_channel_mode(const ChannelView& v, const void* scale, const void* bias) {
  using acc = acc_t<T>;
  if (scale == nullptr && bias == nullptr) return ChannelMode::kNone;
  if (v.run % VEC == 0) return ChannelMode::kPerPack;
  const auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % (sizeof(acc) * VEC) == 0; };
  if (v.run == 1 && v.channels % VEC == 0 && aligned(scale) && aligned(bias)) return ChannelMode::kRowVector;
  return ChannelMode::kPerElement;
}

// Calls f(integral_constant<ChannelMode, M>) for the mode; with VEC == 1 every pack is one element, so
// kPerPack covers all affine cases and the other modes are not instantiated.
template <int VEC, typename F>
void with_channel_mode(ChannelMode mode, F&& f) {
  using M = ChannelMode;
  if (mode == M::kNone) return f(std::integral_constant<M, M::kNone>{});
  if constexpr (VEC == 1) {
    return f(std::integral_constant<M, M::kPerPack>{});
  } else {
    switch (mode) {
      case M::kPerPack: return f(std::integral_constant<M, M::kPerPack>{});
      case M::kRowVector: return f(std::integral_constant<M, M::kRowVector>{});
      default: return f(std::integral_constant<M, M::kPerElement>{});
    }
  }
}

// float, double, half, bfloat16 -> the kernel's element type.
template <typename F>
void dispatch_dtype(c10::ScalarType dtype, const char* name, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Double: return f(double{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, name, ": unsupported dtype ", dtype);
  }
}

}  // namespace fastblocks::cuda
