// CPU impl of fastblocks::depthwise_conv2d and fastblocks::depthwise_conv2d_backward (schemas in
// csrc/fastblocks.cpp).
//
// Backend choice ("auto", the default): float32 channels_last inputs, and float32 NCHW inputs with small planes, go
// to oneDNN through ATen's convolution (then the activation in place; the backward masks grad_out by the activation
// first and the input ReLU after), because on x86 it beats this project's kernels there (channels_last: ours is
// 0.2-0.7x of it; NCHW planes up to 20x20 forward and 28x28 backward: 0.3-0.8x; benchmarks/results/). Everything
// else, every dtype but float32, and every call in deterministic mode (our weight gradients are summed in a fixed
// order, independent of the thread count; oneDNN's are not: its float32 weight/bias gradients of 1 and 2 threads
// differ by ~3e-5) runs this project's kernels. Taking only the input gradient from oneDNN and the weight/bias
// gradients from our kernel made the routed backward 1.4-3.4x slower on one thread (issue 14 report), so the
// thread-count independence is promised in deterministic mode and with set_cpu_depthwise_backend("fastblocks").
// set_cpu_depthwise_backend("fastblocks") always runs them (tests, benchmarks).
#include <ATen/ATen.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <tuple>

#include "common/checks.h"
#include "common/depthwise_host.h"
#include "common/layout.h"
#include "cpu/depthwise_backend.h"
#include "cpu/kernels.h"

namespace fastblocks {
namespace {

std::atomic<bool> g_fastblocks_only{false};

constexpr int64_t kOneDnnForwardMaxPlane = 16 * 16;
constexpr int64_t kOneDnnBackwardMaxPlane = 28 * 28;

bool onednn_faster(const DepthwiseGeometry& g, c10::ScalarType dtype, int64_t max_plane) {
  return !g_fastblocks_only.load(std::memory_order_relaxed) && dtype == at::kFloat &&
         !at::globalContext().deterministicAlgorithms() && at::hasMKLDNN() &&
         at::globalContext().userEnabledMkldnn() && (g.channels_last || g.out_h * g.out_w <= max_plane);
}

// Whether t (x's or grad_input's shape) has the strides the op promises (dense in the geometry's order).
bool has_promised_strides(const at::Tensor& t, const DepthwiseGeometry& g) {
  if (g.channels_last) return t.strides() == at::IntArrayRef(c10::get_channels_last_strides_2d(t.sizes()));
  return t.strides() == at::IntArrayRef(c10::contiguous_strides(t.sizes()));
}

// t, or a copy of it with the promised strides.
at::Tensor in_promised_layout(const at::Tensor& t, const DepthwiseGeometry& g) {
  if (has_promised_strides(t, g)) return t;
  return empty_in_order(t.sizes(), t.options(), order_of(g)).copy_(t);
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation, bool input_relu) {
  // Outputs are allocated only for the path that runs: an unused large allocation next to ATen's made the
  // routed backward 4x slower here (the allocator gave the pages back and faulted them in again every call).
  auto plan = plan_depthwise_forward(x, weight, bias, stride, padding, dilation,
                                     std::string_view(activation.data(), activation.size()), input_relu,
                                     /*allocate_output=*/false);
  const auto& a = plan.args;
  const DepthwiseGeometry& g = a.geo;
  if (g.batch * g.out_channels() * g.out_h * g.out_w > 0 && onednn_faster(g, a.dtype, kOneDnnForwardMaxPlane)) {
    at::Tensor y = at::conv2d(input_relu ? at::relu(plan.x) : plan.x, plan.weight,
                              plan.bias.defined() ? std::optional<at::Tensor>(plan.bias) : std::nullopt, stride,
                              padding, dilation, g.channels);
    if (a.activation == Activation::kReLU) y.relu_();
    if (a.activation == Activation::kReLU6) y.clamp_(0, 6);
    return in_promised_layout(y, g);
  }
  allocate_depthwise_forward_output(plan);
  if (plan.out.numel() > 0) FASTBLOCKS_CPU_KERNEL(depthwise_forward, plan.args);
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    bool input_relu, std::array<bool, 3> output_mask) {
  auto plan = plan_depthwise_backward(grad_out, out, x, weight, stride, padding, dilation,
                                      std::string_view(activation.data(), activation.size()), input_relu,
                                      output_mask, /*allocate_outputs=*/false);
  const auto& a = plan.args;
  if (out.numel() > 0 && onednn_faster(a.geo, a.dtype, kOneDnnBackwardMaxPlane)) {
    at::Tensor g = plan.grad_out;
    if (a.activation == Activation::kReLU) g = at::threshold_backward(g, plan.out, 0);
    if (a.activation == Activation::kReLU6) g = at::hardtanh_backward(g, plan.out, 0, 6);
    const int64_t out_channels = a.geo.out_channels();
    auto [gi, gw, gb] = at::convolution_backward(
        g, input_relu ? at::relu(plan.x) : plan.x, plan.weight,
        output_mask[2] ? at::OptionalIntArrayRef(at::IntArrayRef(&out_channels, 1)) : std::nullopt, stride, padding,
        dilation, /*transposed=*/false, /*output_padding=*/{0, 0}, a.geo.channels, output_mask);
    if (output_mask[0]) {
      if (input_relu) gi = at::threshold_backward(gi, plan.x, 0);
      gi = in_promised_layout(gi, a.geo);
    }
    const auto none = [&](const at::TensorOptions& o) { return at::empty({0}, o); };
    return {output_mask[0] ? gi : none(x.options()), output_mask[1] ? gw.contiguous() : none(weight.options()),
            output_mask[2] ? gb : none(x.options())};
  }
  allocate_depthwise_backward_outputs(plan);
  if (out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(depthwise_backward, plan.args);
  }
  finish_depthwise_backward(plan);
  return {plan.grad_input, plan.grad_weight, plan.grad_bias};
}

}  // namespace

void set_cpu_depthwise_backend(const std::string& backend) {
  FASTBLOCKS_CHECK_ARG(backend == "auto" || backend == "fastblocks", "set_cpu_depthwise_backend", "backend",
                       "must be \"auto\" or \"fastblocks\", got \"", backend, "\"");
  g_fastblocks_only.store(backend == "fastblocks", std::memory_order_relaxed);
}

std::string cpu_depthwise_backend() { return g_fastblocks_only.load(std::memory_order_relaxed) ? "fastblocks" : "auto"; }

TORCH_LIBRARY_IMPL(fastblocks, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
}

}  // namespace fastblocks
