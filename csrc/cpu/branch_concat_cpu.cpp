// CPU impl of fastblocks::branch_concat and fastblocks::branch_concat_backward (schemas in csrc/fastblocks.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/branch_concat_host.h"
#include "cpu/kernels.h"

namespace fastblocks {
namespace {

at::Tensor branch_concat_cpu(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& bias, bool relu) {
  auto plan = plan_branch_concat_forward(inputs, scale, bias, relu);
  if (plan.out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(branch_concat_forward, plan.args);
  }
  return plan.out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> branch_concat_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, at::IntArrayRef channels, at::TensorList inputs,
    const std::optional<at::Tensor>& scale, bool relu, bool compute_param_grads) {
  auto plan = plan_branch_concat_backward(grad_out, out, channels, inputs, scale, relu, compute_param_grads);
  if (plan.out.numel() > 0) {
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
