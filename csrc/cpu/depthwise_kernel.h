// CPU kernels of fastblocks::depthwise_conv2d. Forward: a row-vectorized NCHW path (any kernel, stride,
// dilation, multiplier), a channel-vectorized NHWC path (multiplier 1), and the generic path (any case; the
// shared C10_HOST_DEVICE math of common/depthwise.h, which the CUDA kernels call too). Backward: the generic
// path.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/depthwise.h"
#include "common/switch.h"
#include "cpu/vec_math.h"

namespace fastblocks::cpu {
inline namespace CPU_CAPABILITY {
namespace depthwise_detail {

template <typename T, Activation A, bool INPUT_RELU>
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
      out[i] = static_cast<T>(activate<A>(sum + (bias ? bias[p.c] : acc(0))));
    }
  });
}

// Output columns [lo, hi) whose tap at input column offset `off` (= kw * dil - pad) lands inside [0, in):
// 0 <= ow * stride + off < in.
inline void valid_columns(int64_t off, int64_t stride, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = in - 1 - off < 0 ? 0 : std::min<int64_t>(out, (in - 1 - off) / stride + 1);
  lo = std::min(lo, hi);
}

// NCHW: one (n, oc) plane per task; each output row accumulates in float over the kernel's taps as
// row-wide multiply-adds over the valid columns (unit-stride rows vectorize), then gets bias + activation.
template <typename T, Activation A, bool INPUT_RELU>
void forward_nchw(const DepthwiseForwardArgs& a) {
  using acc = acc_t<T>;
  const DepthwiseGeometry& g = a.geo;
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const acc*>(a.bias);
  auto* out = static_cast<T*>(a.out);
  const int64_t oc_count = g.out_channels();
  const int64_t plane_work = std::max<int64_t>(1, g.out_h * g.out_w * g.taps());
  at::parallel_for(0, g.batch * oc_count, std::max<int64_t>(1, 32768 / plane_work), [&](int64_t lo, int64_t hi) {
    std::vector<acc> row(g.out_w), in_row(g.in_w);
    for (int64_t plane = lo; plane < hi; ++plane) {
      const int64_t n = plane / oc_count, oc = plane % oc_count;
      const T* xp = x + (n * g.channels + oc / g.multiplier) * g.in_h * g.in_w;
      const T* wp = w + oc * g.taps();
      const acc b = bias ? bias[oc] : acc(0);
      T* op = out + plane * g.out_h * g.out_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        std::fill(row.begin(), row.end(), b);
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
          if (ih < 0 || ih >= g.in_h) continue;
          for (int64_t iw = 0; iw < g.in_w; ++iw) in_row[iw] = load_input<INPUT_RELU>(xp, ih * g.in_w + iw);
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const acc wv = static_cast<acc>(wp[kh * g.kernel_w + kw]);
            const int64_t off = kw * g.dil_w - g.pad_w;
            int64_t c0, c1;
            valid_columns(off, g.stride_w, g.in_w, g.out_w, c0, c1);
            acc* r = row.data();
            const acc* xr = in_row.data() + off;
            if (g.stride_w == 1) {
              for (int64_t ow = c0; ow < c1; ++ow) r[ow] += wv * xr[ow];
            } else {
              for (int64_t ow = c0; ow < c1; ++ow) r[ow] += wv * xr[ow * g.stride_w];
            }
          }
        }
        for (int64_t ow = 0; ow < g.out_w; ++ow) op[oh * g.out_w + ow] = static_cast<T>(activate<A>(row[ow]));
      }
    }
  });
}

// Vectorized<acc> of n <= Vec::size() elements of T (half types widen).
template <typename T>
inline at::vec::Vectorized<acc_t<T>> load_widened(const T* p, int64_t n) {
  if constexpr (Chunk<T>::kReduced) {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, n)));
  } else {
    return at::vec::Vectorized<T>::loadu(p, n);
  }
}

template <typename T>
inline void store_narrowed(T* p, const at::vec::Vectorized<acc_t<T>>& v, int64_t n) {
  if constexpr (Chunk<T>::kReduced) {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  } else {
    v.store(p, n);
  }
}

// NHWC, multiplier 1: one (n, oh) output row per task; vectors run over channels, and four output columns are
// computed together so each weight vector is loaded once per eight outputs.
template <typename T, Activation A, bool INPUT_RELU>
void forward_nhwc(const DepthwiseForwardArgs& a) {
  using acc = acc_t<T>;
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t kCols = 8;
  const DepthwiseGeometry& g = a.geo;
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const T*>(a.weight);
  auto* out = static_cast<T*>(a.out);
  const int64_t C = g.channels;
  std::vector<acc> wt(g.taps() * C), bias(C, acc(0));  // weights as [tap][C]
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < g.taps(); ++t) wt[t * C + c] = static_cast<acc>(w[c * g.taps() + t]);
    if (a.bias) bias[c] = static_cast<const acc*>(a.bias)[c];
  }
  const int64_t row_work = std::max<int64_t>(1, g.out_w * C * g.taps());
  at::parallel_for(0, g.batch * g.out_h, std::max<int64_t>(1, 32768 / row_work), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / g.out_h, oh = r % g.out_h;
      T* orow = out + r * g.out_w * C;
      for (int64_t c0 = 0; c0 < C; c0 += Vec::size()) {
        const int64_t cnt = std::min<int64_t>(Vec::size(), C - c0);
        const Vec b = Vec::loadu(bias.data() + c0, cnt);
        for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += kCols) {
          const int64_t cols = std::min<int64_t>(kCols, g.out_w - ow0);
          Vec sums[kCols];
          for (int64_t j = 0; j < kCols; ++j) sums[j] = b;
          // Interior blocks (every tap of all kCols columns inside the row) skip the bounds checks.
          const int64_t first_iw = ow0 * g.stride_w - g.pad_w;
          const bool interior = cols == kCols && first_iw >= 0 &&
                                first_iw + (kCols - 1) * g.stride_w + (g.kernel_w - 1) * g.dil_w < g.in_w;
          const int64_t col_step = g.stride_w * C;
          for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
            if (ih < 0 || ih >= g.in_h) continue;
            const T* xrow = x + (n * g.in_h + ih) * g.in_w * C + c0;
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              const Vec wv = Vec::loadu(wt.data() + (kh * g.kernel_w + kw) * C + c0, cnt);
              if (interior) {
                const T* xp = xrow + (first_iw + kw * g.dil_w) * C;
#pragma GCC unroll 8
                for (int64_t j = 0; j < kCols; ++j) {
                  Vec xv = load_widened(xp + j * col_step, cnt);
                  if constexpr (INPUT_RELU) xv = ElementMath<Vec>::relu(xv);
                  sums[j] = at::vec::fmadd(xv, wv, sums[j]);
                }
                continue;
              }
#pragma GCC unroll 8
              for (int64_t j = 0; j < kCols; ++j) {  // unrolled, so the sums stay in registers
                const int64_t iw = (ow0 + j) * g.stride_w - g.pad_w + kw * g.dil_w;
                if (j >= cols || iw < 0 || iw >= g.in_w) continue;
                Vec xv = load_widened(xrow + iw * C, cnt);
                if constexpr (INPUT_RELU) xv = ElementMath<Vec>::relu(xv);
                sums[j] = at::vec::fmadd(xv, wv, sums[j]);
              }
            }
          }
          for (int64_t j = 0; j < cols; ++j) store_narrowed(orow + (ow0 + j) * C + c0, activate<A>(sums[j]), cnt);
        }
      }
    }
  });
}

template <typename T, Activation A, bool INPUT_RELU>
void forward_typed(const DepthwiseForwardArgs& a) {
  if (!a.geo.channels_last) {
    forward_nchw<T, A, INPUT_RELU>(a);
  } else if (a.geo.multiplier == 1) {
    forward_nhwc<T, A, INPUT_RELU>(a);
  } else {
    forward_generic<T, A, INPUT_RELU>(a);
  }
}

template <typename T, Activation A, bool INPUT_RELU>
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
        gi[i] = static_cast<T>(depthwise_input_grad<A, INPUT_RELU>(gy, y, x, w, g, p.n, p.c, p.h, p.w));
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
              sum += depthwise_param_grad_term<A, INPUT_RELU>(gy, y, x, g, n, oc, tap, oh, ow);
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

void depthwise_forward(const DepthwiseForwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "depthwise_forward_cpu", [&] {
    FASTBLOCKS_ACTIVATION_SWITCH(a.activation, A, [&] {
      FASTBLOCKS_BOOL_SWITCH(a.input_relu, INPUT_RELU, [&] { depthwise_detail::forward_typed<scalar_t, A, INPUT_RELU>(a); });
    });
  });
}

void depthwise_backward(const DepthwiseBackwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "depthwise_backward_cpu", [&] {
    FASTBLOCKS_ACTIVATION_SWITCH(a.activation, A, [&] {
      FASTBLOCKS_BOOL_SWITCH(a.input_relu, INPUT_RELU, [&] { depthwise_detail::backward_typed<scalar_t, A, INPUT_RELU>(a); });
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fastblocks::cpu
