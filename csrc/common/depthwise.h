// Depthwise convolution (fastblocks::depthwise_conv2d): plain-data arguments and the per-element math, written
// once as C10_HOST_DEVICE functions that the CPU kernels and the CUDA kernels both call, so the CPU tests
// exercise the same arithmetic the GPU runs.
//
// out[n, oc, oh, ow] = act(bias[oc] + sum_{kh,kw} w[oc, kh, kw] * x'[n, oc / m, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw])
// with x' = relu(x) when input_relu (Xception's pre-activation as a prologue), m the channel multiplier.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "common/epilogue.h"

namespace fastblocks {

struct DepthwiseGeometry {
  int64_t batch = 0, channels = 0, multiplier = 1;  // input channels C; output channels C * multiplier
  int64_t in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  bool channels_last = false;  // x, out, grad_out, grad_input: NCHW-contiguous or NHWC-dense

  C10_HOST_DEVICE int64_t out_channels() const { return channels * multiplier; }
  C10_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  C10_HOST_DEVICE int64_t in_offset(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return channels_last ? ((n * in_h + h) * in_w + w) * channels + c : ((n * channels + c) * in_h + h) * in_w + w;
  }
  C10_HOST_DEVICE int64_t out_offset(int64_t n, int64_t c, int64_t h, int64_t w) const {
    const int64_t oc = out_channels();
    return channels_last ? ((n * out_h + h) * out_w + w) * oc + c : ((n * oc + c) * out_h + h) * out_w + w;
  }
};

// (n, c, h, w) of flat element i of a dense [N, C, H, W] tensor in the geometry's memory order.
struct Nchw {
  int64_t n, c, h, w;
};
C10_HOST_DEVICE inline Nchw unflatten(int64_t i, int64_t C, int64_t H, int64_t W, bool channels_last) {
  Nchw p;
  if (channels_last) {
    p.c = i % C;
    i /= C;
    p.w = i % W;
    i /= W;
    p.h = i % H;
    p.n = i / H;
  } else {
    p.w = i % W;
    i /= W;
    p.h = i % H;
    i /= H;
    p.c = i % C;
    p.n = i / C;
  }
  return p;
}

struct DepthwiseForwardArgs {
  const void* x = nullptr;
  const void* weight = nullptr;  // [C * m, kernel_h, kernel_w], x's dtype, contiguous
  const void* bias = nullptr;    // [C * m], accumulation dtype; null: 0
  void* out = nullptr;
  DepthwiseGeometry geo;
  c10::ScalarType dtype = c10::ScalarType::Float;
  ActivationSpec activation;
  bool input_relu = false;
};

struct DepthwiseBackwardArgs {
  const void* grad_out = nullptr;
  const void* out = nullptr;  // the forward's output: the activation's mask
  const void* x = nullptr;
  const void* weight = nullptr;
  void* grad_input = nullptr;   // null: not wanted
  void* grad_weight = nullptr;  // [C * m, kernel_h * kernel_w], accumulation dtype; null: not wanted
  void* grad_bias = nullptr;    // [C * m], accumulation dtype; null: not wanted
  void* workspace = nullptr;  // float partial sums of the CUDA weight-gradient programs (tiled::param_grad_workspace_floats)
  DepthwiseGeometry geo;
  c10::ScalarType dtype = c10::ScalarType::Float;
  // The activation whose output mask applies to grad_out: always one with grad_from_output (the host plan masks
  // grad_out itself for the others and passes "none").
  ActivationSpec activation;
  bool input_relu = false;
};

// act'(z) * grad_out at output offset o, from the saved output y (the activation's gradient follows from it: the
// backward plan guarantees that); y is not read without an activation (it may then be absent).
template <typename T>
C10_HOST_DEVICE inline acc_t<T> masked_grad_out(const ActivationSpec& act, const T* gy, const T* y, int64_t o) {
  const acc_t<T> g = static_cast<acc_t<T>>(gy[o]);
  return act.kind == Activation::kNone ? g : activation_grad(act, g, static_cast<acc_t<T>>(y[o]));
}

template <bool INPUT_RELU, typename T>
C10_HOST_DEVICE inline acc_t<T> load_input(const T* x, int64_t offset) {
  const acc_t<T> v = static_cast<acc_t<T>>(x[offset]);
  if constexpr (INPUT_RELU) {
    return relu(v);
  } else {
    return v;
  }
}

// The convolution sum (before bias and activation) of output (n, oc, oh, ow).
template <bool INPUT_RELU, typename T>
C10_HOST_DEVICE inline acc_t<T> depthwise_sum(const T* x, const T* w, const DepthwiseGeometry& g, int64_t n, int64_t oc,
                                              int64_t oh, int64_t ow) {
  const int64_t ic = oc / g.multiplier;
  acc_t<T> sum = 0;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
      if (iw < 0 || iw >= g.in_w) continue;
      sum += load_input<INPUT_RELU>(x, g.in_offset(n, ic, ih, iw)) *
             static_cast<acc_t<T>>(w[(oc * g.kernel_h + kh) * g.kernel_w + kw]);
    }
  }
  return sum;
}

// d loss / d x at input (n, ic, ih, iw), gathered over the outputs that read it (no atomics, any order of
// evaluation gives the same result): the transposed convolution of act'(grad_out), masked by the input ReLU.
template <bool INPUT_RELU, typename T>
C10_HOST_DEVICE inline acc_t<T> depthwise_input_grad(const ActivationSpec& act, const T* gy, const T* y, const T* x,
                                                     const T* w, const DepthwiseGeometry& g, int64_t n, int64_t ic, int64_t ih,
                                                     int64_t iw) {
  using acc = acc_t<T>;
  if constexpr (INPUT_RELU) {
    if (!(static_cast<acc>(x[g.in_offset(n, ic, ih, iw)]) > acc(0))) return acc(0);
  }
  acc sum = 0;
  for (int64_t j = 0; j < g.multiplier; ++j) {
    const int64_t oc = ic * g.multiplier + j;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t th = ih + g.pad_h - kh * g.dil_h;
      if (th < 0 || th % g.stride_h != 0) continue;
      const int64_t oh = th / g.stride_h;
      if (oh >= g.out_h) continue;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t tw = iw + g.pad_w - kw * g.dil_w;
        if (tw < 0 || tw % g.stride_w != 0) continue;
        const int64_t ow = tw / g.stride_w;
        if (ow >= g.out_w) continue;
        const int64_t o = g.out_offset(n, oc, oh, ow);
        sum += masked_grad_out(act, gy, y, o) *
               static_cast<acc>(w[(oc * g.kernel_h + kh) * g.kernel_w + kw]);
      }
    }
  }
  return sum;
}

// One term of the weight gradient of tap (kh, kw) of channel oc at output (n, oh, ow): g * x' (0 off the
// input); tap == taps() stands for the bias (g alone).
template <bool INPUT_RELU, typename T>
C10_HOST_DEVICE inline acc_t<T> depthwise_param_grad_term(const ActivationSpec& act, const T* gy, const T* y, const T* x,
                                                          const DepthwiseGeometry& g, int64_t n, int64_t oc,
                                                          int64_t tap, int64_t oh, int64_t ow) {
  using acc = acc_t<T>;
  const int64_t o = g.out_offset(n, oc, oh, ow);
  const acc grad = masked_grad_out(act, gy, y, o);
  if (tap == g.taps()) return grad;
  const int64_t kh = tap / g.kernel_w, kw = tap % g.kernel_w;
  const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
  const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
  if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return acc(0);
  return grad * load_input<INPUT_RELU>(x, g.in_offset(n, oc / g.multiplier, ih, iw));
}

}  // namespace fastblocks
