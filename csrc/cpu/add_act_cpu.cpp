// CPU impl of fastblocks::add_act and fastblocks::add_act_backward (schemas in csrc/fastblocks.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <string_view>
#include <tuple>

#include "common/add_act_host.h"
#include "cpu/kernels.h"

namespace fastblocks {
namespace {

at::Tensor add_act_cpu(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& scale,
                       const std::optional<at::Tensor>& bias, c10::string_view activation, double negative_slope) {
  auto plan = plan_add_act_forward(x, residual, scale, bias, std::string_view(activation.data(), activation.size()),
                                   negative_slope);
  if (plan.out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(add_act_forward, plan.args);
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_act_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, c10::string_view activation,
    double negative_slope, bool compute_param_grads) {
  auto plan = plan_add_act_backward(grad_out, x, residual, scale, bias,
                                    std::string_view(activation.data(), activation.size()), negative_slope,
                                    compute_param_grads);
  if (plan.grad_out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(epilogue_backward, plan.args);
  }
  return {plan.grad_x, plan.grad_residual, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CPU, m) {
  m.impl("add_act", &add_act_cpu);
  m.impl("add_act_backward", &add_act_backward_cpu);
}

}  // namespace fastblocks
