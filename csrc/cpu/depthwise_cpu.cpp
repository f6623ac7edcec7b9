// CPU impl of fastblocks::depthwise_conv2d and fastblocks::depthwise_conv2d_backward (schemas in
// csrc/fastblocks.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "common/depthwise_host.h"
#include "cpu/kernels.h"

namespace fastblocks {
namespace {

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation, bool input_relu) {
  auto plan = plan_depthwise_forward(x, weight, bias, stride, padding, dilation,
                                     std::string_view(activation.data(), activation.size()), input_relu);
  if (plan.out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(depthwise_forward, plan.args);
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    bool input_relu, std::array<bool, 3> output_mask) {
  auto plan = plan_depthwise_backward(grad_out, out, x, weight, stride, padding, dilation,
                                      std::string_view(activation.data(), activation.size()), input_relu,
                                      output_mask);
  if (out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(depthwise_backward, plan.args);
  }
  finish_depthwise_backward(plan);
  return {plan.grad_input, plan.grad_weight, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
}

}  // namespace fastblocks
