// CPU kernels of fastblocks::depthwise_conv2d: the fast paths of cpu/depthwise_fast_kernel.h (float, half,
// bfloat16; NCHW any multiplier, NHWC multiplier 1), and the generic per-element path for the rest (float64, NHWC
// with m > 1), which is the shared C10_HOST_DEVICE math of common/depthwise.h that the CUDA kernels call too.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/depthwise.h"
#include "common/switch.h"
#include "cpu/depthwise_fast_kernel.h"
#include "cpu/vec_math.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace depthwise_detail {

// The fast paths (cpu/depthwise_fast_kernel.h) compute in float: float, half and bfloat16 data; NHWC with
// channel multiplier 1. float64 and NHWC with m > 1 take the generic path.
// Their per-thread scratch holds a padded input plane (NCHW) or row band (NHWC): a padding far larger than the
// input would make it huge, so such geometries take the generic path too.
inline bool has_fast_path(c10::ScalarType dtype, const DepthwiseGeometry& g) {
  const int64_t padded_h = g.in_h + 2 * g.pad_h + (g.kernel_h - 1) * g.dil_h;
  const int64_t padded_w = g.in_w + 2 * g.pad_w + (g.kernel_w - 1) * g.dil_w + 64 * g.stride_w;
  const bool scratch_fits = padded_h <= (int64_t{1} << 24) && padded_w <= (int64_t{1} << 24) &&
                            padded_h * padded_w <= (int64_t{1} << 24);
  return dtype != at::kDouble && (!g.channels_last || g.multiplier == 1) && scratch_fits;
}

template <typename T, bool INPUT_RELU>
void forward_generic(const DepthwiseForwardArgs& a) {
  using acc = acc_t<T>;
  const DepthwiseGeometry& g = a.geo;
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const acc*>(a.bias);
  auto* out = static_cast<T*>(a.out);
  const int64_t oc = g.out_channels();
  const int64_t numel = g.batch * oc * g.out_h * g.out_w;
  at::parallel_for(0, numel, std::max<int64_t>(1, 32768 / g.taps()), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const Nchw p = unflatten(i, oc, g.out_h, g.out_w, g.channels_last);
      const acc sum = depthwise_sum<INPUT_RELU>(x, w, g, p.n, p.c, p.h, p.w);
      out[i] = static_cast<T>(activate(a.activation, sum + (bias ? bias[p.c] : acc(0))));
    }
  });
}

template <typename T, bool INPUT_RELU>
void forward_typed(const DepthwiseForwardArgs& a) {
  forward_generic<T, INPUT_RELU>(a);
}

template <typename T, bool INPUT_RELU>
void backward_typed(const DepthwiseBackwardArgs& a) {
  using acc = acc_t<T>;
  const DepthwiseGeometry& g = a.geo;
  const auto* gy = static_cast<const T*>(a.grad_out);
  const auto* y = static_cast<const T*>(a.out);
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const T*>(a.weight);
  if (a.grad_input != nullptr) {
    auto* gi = static_cast<T*>(a.grad_input);
    const int64_t numel = g.batch * g.channels * g.in_h * g.in_w;
    at::parallel_for(0, numel, std::max<int64_t>(1, 32768 / (g.taps() * g.multiplier)), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const Nchw p = unflatten(i, g.channels, g.in_h, g.in_w, g.channels_last);
        gi[i] = static_cast<T>(depthwise_input_grad<INPUT_RELU>(a.activation, gy, y, x, w, g, p.n, p.c, p.h, p.w));
      }
    });
  }
  auto* grad_weight = static_cast<acc*>(a.grad_weight);
  auto* grad_bias = static_cast<acc*>(a.grad_bias);
  if (grad_weight == nullptr && grad_bias == nullptr) return;
  // One task per output channel sums every tap (and the bias) over (n, oh, ow) in a fixed order: deterministic.
  at::parallel_for(0, g.out_channels(), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t oc = lo; oc < hi; ++oc) {
      for (int64_t tap = grad_weight ? 0 : g.taps(); tap <= (grad_bias ? g.taps() : g.taps() - 1); ++tap) {
        acc sum = 0;
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              sum += depthwise_param_grad_term<INPUT_RELU>(a.activation, gy, y, x, g, n, oc, tap, oh, ow);
            }
          }
        }
        if (tap == g.taps()) {
          grad_bias[oc] = sum;
        } else {
          grad_weight[oc * g.taps() + tap] = sum;
        }
      }
    }
  });
}

}  // namespace depthwise_detail

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
