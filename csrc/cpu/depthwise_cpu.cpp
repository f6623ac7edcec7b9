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

#include "common/activation_host.h"
#include "common/checks.h"
#include "common/epilogue_host.h"
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

// y = act(y) in place, with this project's epilogue kernel (any activation of the table).
void activate_in_place(at::Tensor& y, const DepthwiseGeometry& g, const ActivationSpec& act) {
  if (act.kind == Activation::kNone || y.numel() == 0) return;
  FASTBLOCKS_CPU_KERNEL(branch_concat_forward, activation_inplace_args(y, order_of(g), act));
}

// act'(v) * grad_out (v: the pre-activation, or the output where the activation's gradient follows from it).
at::Tensor activation_grad(const at::Tensor& grad_out, const at::Tensor& v, const DepthwiseGeometry& g,
                           const ActivationSpec& act) {
  at::Tensor grad = empty_in_order(grad_out.sizes(), grad_out.options(), order_of(g));
  if (grad.numel() > 0) FASTBLOCKS_CPU_KERNEL(epilogue_backward, activation_grad_args(grad_out, v, grad, order_of(g), act));
  return grad;
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation, bool input_relu, double negative_slope) {
  // Outputs are allocated only for the path that runs: an unused large allocation next to ATen's made the
  // routed backward 4x slower here (the allocator gave the pages back and faulted them in again every call).
  auto plan = plan_depthwise_forward(x, weight, bias, stride, padding, dilation,
                                     std::string_view(activation.data(), activation.size()), negative_slope,
                                     input_relu, /*allocate_output=*/false);
  const auto& a = plan.args;
  const DepthwiseGeometry& g = a.geo;
  if (g.batch * g.out_channels() * g.out_h * g.out_w > 0 && onednn_faster(g, a.dtype, kOneDnnForwardMaxPlane)) {
    at::Tensor y = in_promised_layout(
        at::conv2d(input_relu ? at::relu(plan.x) : plan.x, plan.weight,
                   plan.bias.defined() ? std::optional<at::Tensor>(plan.bias) : std::nullopt, stride, padding,
                   dilation, g.channels),
        g);
    activate_in_place(y, g, a.activation);
    return y;
  }
  allocate_depthwise_forward_output(plan);
  if (plan.out.numel() > 0) FASTBLOCKS_CPU_KERNEL(depthwise_forward, plan.args);
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view activation, double negative_slope, bool input_relu, std::array<bool, 3> output_mask) {
  auto plan = plan_depthwise_backward(grad_out, out, x, weight, bias, stride, padding, dilation,
                                      std::string_view(activation.data(), activation.size()), negative_slope,
                                      input_relu, output_mask, /*allocate_outputs=*/false);
  const auto& a = plan.args;
  const DepthwiseGeometry& g = a.geo;
  const bool nonempty = plan.grad_out.numel() > 0;
  if (nonempty && onednn_faster(g, a.dtype, kOneDnnBackwardMaxPlane)) {
    const at::Tensor xr = input_relu ? at::relu(plan.x) : plan.x;
    at::Tensor gz = plan.grad_out;
    if (plan.needs_preactivation) {  // z recomputed with oneDNN's convolution, as the forward ran it
      const at::Tensor z = in_promised_layout(
          at::conv2d(xr, plan.weight, plan.bias.defined() ? std::optional<at::Tensor>(plan.bias) : std::nullopt,
                     stride, padding, dilation, g.channels),
          g);
      gz = activation_grad(plan.grad_out, z, g, plan.activation);
    } else if (plan.activation.kind != Activation::kNone) {
      gz = activation_grad(plan.grad_out, plan.out, g, plan.activation);
    }
    const int64_t out_channels = g.out_channels();
    auto [gi, gw, gb] = at::convolution_backward(
        gz, xr, plan.weight,
        output_mask[2] ? at::OptionalIntArrayRef(at::IntArrayRef(&out_channels, 1)) : std::nullopt, stride, padding,
        dilation, /*transposed=*/false, /*output_padding=*/{0, 0}, g.channels, output_mask);
    if (output_mask[0]) {
      if (input_relu) gi = at::threshold_backward(gi, plan.x, 0);
      gi = in_promised_layout(gi, g);
    }
    const auto none = [&](const at::TensorOptions& o) { return at::empty({0}, o); };
    return {output_mask[0] ? gi : none(x.options()), output_mask[1] ? gw.contiguous() : none(weight.options()),
            output_mask[2] ? gb : none(x.options())};
  }
  allocate_depthwise_backward_outputs(plan);
  if (nonempty) {
    PreactivationPass pass;
    if (plan.needs_preactivation) {
      pass = plan_preactivation_pass(plan);
      FASTBLOCKS_CPU_KERNEL(depthwise_forward, pass.forward);
      FASTBLOCKS_CPU_KERNEL(epilogue_backward, pass.mask);
    }
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
