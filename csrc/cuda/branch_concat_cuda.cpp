// CUDA impl of fastblocks::branch_concat and fastblocks::branch_concat_backward (schemas in csrc/fastblocks.cpp):
// checks and allocation on the host (common/branch_concat_host.cpp), programs in epilogue_forward_kernel.cu /
// epilogue_backward_kernel.cu, on the current stream under a device guard.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/branch_concat_host.h"
#include "common/checks.h"
#include "cuda/epilogue_backward.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

constexpr const char* kBackward = "branch_concat_backward";

at::Tensor branch_concat_cuda(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                              const std::optional<at::Tensor>& bias, c10::string_view activation,
                              double negative_slope) {
  check_branch_concat_devices(inputs, scale, bias);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  auto plan = plan_branch_concat_forward(inputs, scale, bias, std::string_view(activation.data(), activation.size()),
                                         negative_slope);
  if (plan.out.numel() > 0) {
    cuda::launch_branch_concat_forward(plan.args, c10::cuda::getCurrentCUDAStream(inputs[0].get_device()).stream());
  }
  return plan.out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> branch_concat_backward_cuda(
    const at::Tensor& grad_out, at::IntArrayRef channels, at::TensorList inputs,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, c10::string_view activation,
    double negative_slope, bool compute_param_grads, bool grad_at_preactivation) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string name = "inputs[" + std::to_string(i) + "]";
    check_same_device(inputs[i], name.c_str(), grad_out, "grad_out", kBackward);
  }
  if (scale.has_value() && scale->defined()) check_same_device(*scale, "scale", grad_out, "grad_out", kBackward);
  if (bias.has_value() && bias->defined()) check_same_device(*bias, "bias", grad_out, "grad_out", kBackward);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto plan = plan_branch_concat_backward(grad_out, channels, inputs, scale, bias,
                                          std::string_view(activation.data(), activation.size()), negative_slope,
                                          compute_param_grads, grad_at_preactivation);
  if (plan.grad_out.numel() > 0) run_epilogue_backward(plan.args, plan.grad_out);
  return {plan.grad_inputs, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CUDA, m) {
  m.impl("branch_concat", &branch_concat_cuda);
  m.impl("branch_concat_backward", &branch_concat_backward_cuda);
}

}  // namespace fastblocks
