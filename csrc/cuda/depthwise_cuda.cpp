// CUDA impl of fastblocks::depthwise_conv2d and fastblocks::depthwise_conv2d_backward (schemas in
// csrc/fastblocks.cpp): checks and allocation on the host, kernels in depthwise_kernel.cu, on the current stream
// under a device guard.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "common/depthwise_host.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

at::Tensor depthwise_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 c10::string_view activation, bool input_relu) {
  check_same_device(weight, "weight", x, "x", "depthwise_conv2d");
  if (bias.has_value() && bias->defined()) check_same_device(*bias, "bias", x, "x", "depthwise_conv2d");
  const c10::cuda::CUDAGuard guard(x.device());
  auto plan = plan_depthwise_forward(x, weight, bias, stride, padding, dilation,
                                     std::string_view(activation.data(), activation.size()), input_relu);
  if (plan.out.numel() > 0) {
    cuda::launch_depthwise_forward(plan.args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    bool input_relu, std::array<bool, 3> output_mask) {
  check_same_device(grad_out, "grad_out", x, "x", "depthwise_conv2d_backward");
  check_same_device(out, "out", x, "x", "depthwise_conv2d_backward");
  check_same_device(weight, "weight", x, "x", "depthwise_conv2d_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  auto plan = plan_depthwise_backward(grad_out, out, x, weight, stride, padding, dilation,
                                      std::string_view(activation.data(), activation.size()), input_relu,
                                      output_mask);
  if (out.numel() > 0) {
    prepare_tiled_backward(plan);
    cuda::launch_depthwise_backward(plan.args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
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
