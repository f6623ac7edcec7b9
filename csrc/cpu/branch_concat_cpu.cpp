// CPU impl of fastblocks::branch_concat and fastblocks::branch_concat_backward (schemas in csrc/fastblocks.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <string_view>
#include <tuple>
#include <vector>

#include "common/branch_concat_host.h"
#include "cpu/kernels.h"

namespace fastblocks {
namespace {

at::Tensor branch_concat_cpu(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& bias, c10::string_view activation,
                             double negative_slope) {
  auto plan = plan_branch_concat_forward(inputs, scale, bias, std::string_view(activation.data(), activation.size()),
                                         negative_slope);
  if (plan.out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(branch_concat_forward, plan.args);
  }
  return plan.out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> branch_concat_backward_cpu(
    const at::Tensor& grad_out, at::IntArrayRef channels, at::TensorList inputs,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, c10::string_view activation,
    double negative_slope, bool compute_param_grads, bool grad_at_preactivation) {
  auto plan = plan_branch_concat_backward(grad_out, channels, inputs, scale, bias,
                                          std::string_view(activation.data(), activation.size()), negative_slope,
                                          compute_param_grads, grad_at_preactivation);
  if (plan.grad_out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(epilogue_backward, plan.args);
  }
  return {plan.grad_inputs, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CPU, m) {
  m.impl("branch_concat", &branch_concat_cpu);
  m.impl("branch_concat_backward", &branch_concat_backward_cpu);
}

}  // namespace fastblocks
