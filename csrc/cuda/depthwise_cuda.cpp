// CUDA impl of fastblocks::depthwise_conv2d and fastblocks::depthwise_conv2d_backward (schemas in
// csrc/fastblocks.cpp): checks and allocation on the host, kernels in depthwise_forward_kernel.cu,
// depthwise_input_grad_kernel.cu and depthwise_param_grad_kernel.cu (and, for activations
// whose gradient needs the pre-activation, the epilogue backward program that masks grad_out), on the current
// stream under a device guard.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string_view>
#include <tuple>

#include "common/checks.h"
#include "common/depthwise_host.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

constexpr const char* kForward = "depthwise_conv2d";
constexpr const char* kBackward = "depthwise_conv2d_backward";

at::Tensor depthwise_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 c10::string_view activation, bool input_relu, double negative_slope) {
  check_same_device(weight, "weight", x, "x", kForward);
  if (bias.has_value() && bias->defined()) check_same_device(*bias, "bias", x, "x", kForward);
  const c10::cuda::CUDAGuard guard(x.device());
  auto plan = plan_depthwise_forward(x, weight, bias, stride, padding, dilation,
                                     std::string_view(activation.data(), activation.size()), negative_slope,
                                     input_relu);
  if (plan.out.numel() > 0) {
    cuda::launch_depthwise_forward(plan.args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view activation, double negative_slope, bool input_relu, std::array<bool, 3> output_mask) {
  check_same_device(grad_out, "grad_out", x, "x", kBackward);
  if (out.has_value() && out->defined()) check_same_device(*out, "out", x, "x", kBackward);
  check_same_device(weight, "weight", x, "x", kBackward);
  if (bias.has_value() && bias->defined()) check_same_device(*bias, "bias", x, "x", kBackward);
  const c10::cuda::CUDAGuard guard(x.device());
  auto plan = plan_depthwise_backward(grad_out, out, x, weight, bias, stride, padding, dilation,
                                      std::string_view(activation.data(), activation.size()), negative_slope,
                                      input_relu, output_mask);
  if (plan.grad_out.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
    PreactivationPass pass;
    if (plan.needs_preactivation) {
      pass = plan_preactivation_pass(plan);
      cuda::launch_depthwise_forward(pass.forward, stream);
      cuda::launch_epilogue_backward(pass.mask, nullptr, stream);  // elementwise: no workspace
    }
    prepare_tiled_backward(plan);
    cuda::launch_depthwise_input_grad(plan.args, stream);
    cuda::launch_depthwise_param_grad(plan.args, stream);
  }
  finish_depthwise_backward(plan);
  return {plan.grad_input, plan.grad_weight, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
}

}  // namespace fastblocks
