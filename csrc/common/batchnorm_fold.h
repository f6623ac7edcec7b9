// fastblocks::batchnorm_fold / batchnorm_fold_conv: a BatchNorm's statistics folded into per-channel
// (scale, shift), or into the weight and bias of the convolution before it, in one pass (one launch on CUDA).
// The per-channel math is written once here (C10_HOST_DEVICE) and run by the CPU loop (once per channel) and by the
// CUDA kernel (one channel, or one weight element of the conv fold, per thread).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <string>

#include "common/program.h"

#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace fastblocks {

// Every pointer dense; the per-channel ones hold `channels` values of the accumulation type (acc: float or
// double). Optional inputs are null when absent (weight: 1, bias: 0, conv_bias: 0).
struct BatchNormFoldArgs {
  const void* mean = nullptr;
  const void* var = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
  double eps = 0.0;
  int64_t channels = 0;
  c10::ScalarType acc = c10::ScalarType::Float;
  // batchnorm_fold: outputs scale and shift. batchnorm_fold_conv: shift holds the folded conv bias, scale is
  // null, and the folded weight (conv_weight's dtype and strides, output channel outermost) goes to
  // folded_weight: per_channel elements per output channel.
  void* scale = nullptr;
  void* shift = nullptr;
  const void* conv_weight = nullptr;
  const void* conv_bias = nullptr;
  void* folded_weight = nullptr;
  int64_t per_channel = 0;
  c10::ScalarType weight_dtype = c10::ScalarType::Float;
};

template <typename acc_t>
struct FoldedChannel {
  acc_t scale, shift;
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t fold_sqrt(acc_t v) {
#ifdef __CUDA_ARCH__
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// Channel c: scale = weight / sqrt(var + eps), shift = bias - mean * scale (+ conv_bias * scale), as ATen's
// eval batch_norm forms its per-channel alpha / beta.
template <typename acc_t>
C10_HOST_DEVICE inline FoldedChannel<acc_t> fold_channel(const BatchNormFoldArgs& a, int64_t c) {
  const acc_t invstd = acc_t(1) / fold_sqrt(static_cast<const acc_t*>(a.var)[c] + static_cast<acc_t>(a.eps));
  const acc_t scale = a.weight != nullptr ? static_cast<const acc_t*>(a.weight)[c] * invstd : invstd;
  acc_t shift = (a.bias != nullptr ? static_cast<const acc_t*>(a.bias)[c] : acc_t(0)) -
                static_cast<const acc_t*>(a.mean)[c] * scale;
  if (a.conv_bias != nullptr) shift += static_cast<const acc_t*>(a.conv_bias)[c] * scale;
  return {scale, shift};
}

// Flat element i of the fold (i < channels writes that channel's scale / shift or folded bias; i < the weight's
// numel writes that folded weight element): what one CUDA thread does. The CPU loop computes each channel's
// fold_channel once and writes the same values.
template <typename acc_t, typename weight_t>
C10_HOST_DEVICE inline void fold_element(const BatchNormFoldArgs& a, int64_t i) {
  if (a.folded_weight != nullptr && i < a.channels * a.per_channel) {
    const FoldedChannel<acc_t> f = fold_channel<acc_t>(a, i / a.per_channel);
    const acc_t w = static_cast<acc_t>(static_cast<const weight_t*>(a.conv_weight)[i]);
    static_cast<weight_t*>(a.folded_weight)[i] = static_cast<weight_t>(w * f.scale);
  }
  if (i < a.channels) {
    const FoldedChannel<acc_t> f = fold_channel<acc_t>(a, i);
    if (a.scale != nullptr) static_cast<acc_t*>(a.scale)[i] = f.scale;
    static_cast<acc_t*>(a.shift)[i] = f.shift;
  }
}

// Elements the fold runs over (threads on CUDA).
inline int64_t fold_elements(const BatchNormFoldArgs& a) {
  const int64_t weights = a.folded_weight != nullptr ? a.channels * a.per_channel : 0;
  return weights > a.channels ? weights : a.channels;
}

// The CUDA launch as a program (common/program.h): one thread per element, one phase; cuda/program.cuh runs it on
// the GPU and the emulator (cpu/program_emulator.h) on the CPU.
template <typename acc_t, typename weight_t>
struct BatchNormFoldProgram {
  using State = program::NoState;
  static constexpr int kPhases = 1;
  BatchNormFoldArgs args;
  int64_t elements;
  int64_t blocks() const { return program::ceil_div(elements, program::kBlockThreads); }
  int threads() const { return program::kBlockThreads; }
  int64_t shared_elems() const { return 0; }
  std::string name() const { return args.folded_weight != nullptr ? "batchnorm_fold_conv" : "batchnorm_fold"; }
  C10_HOST_DEVICE void phase(int, int64_t block, int thread, int threads, program::Shared, State&) const {
    const int64_t i = block * threads + thread;
    if (i < elements) fold_element<acc_t, weight_t>(args, i);
  }
};

// f(program) for the fold's dtypes (shared by the CUDA launcher and the emulator).
template <typename F>
void with_batchnorm_fold_program(const BatchNormFoldArgs& a, F&& f) {
  const auto run = [&](auto acc_zero, auto weight_zero) {
    f(BatchNormFoldProgram<decltype(acc_zero), decltype(weight_zero)>{a, fold_elements(a)});
  };
  const auto for_weight = [&](auto acc_zero) {
    if (a.folded_weight == nullptr) return run(acc_zero, acc_zero);
    switch (a.weight_dtype) {
      case c10::ScalarType::Float: return run(acc_zero, float{});
      case c10::ScalarType::Double: return run(acc_zero, double{});
      case c10::ScalarType::Half: return run(acc_zero, c10::Half{});
      case c10::ScalarType::BFloat16: return run(acc_zero, c10::BFloat16{});
      default: TORCH_CHECK(false, "fastblocks::batchnorm_fold_conv: unsupported weight dtype ", a.weight_dtype);
    }
  };
  if (a.acc == c10::ScalarType::Double) return for_weight(double{});
  for_weight(float{});
}

}  // namespace fastblocks
