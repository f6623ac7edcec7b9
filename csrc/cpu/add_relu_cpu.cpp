// CPU impl of fastblocks::add_relu and fastblocks::add_relu_backward (schemas in csrc/fastblocks.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "common/add_relu_host.h"
#include "cpu/kernels.h"

namespace fastblocks {
namespace {

at::Tensor add_relu_cpu(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& scale,
                        const std::optional<at::Tensor>& bias, bool relu) {
  auto plan = plan_add_relu_forward(x, residual, scale, bias, relu);
  if (plan.out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(add_relu_forward, plan.args);
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const std::optional<at::Tensor>& x,
    const std::optional<at::Tensor>& scale, bool relu, bool compute_param_grads) {
  auto plan = plan_add_relu_backward(grad_out, out, x, scale, relu, compute_param_grads);
  if (plan.out.numel() > 0) {
    FASTBLOCKS_CPU_KERNEL(epilogue_backward, plan.args);
  }
  return {plan.grad_x, plan.grad_residual, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CPU, m) {
  m.impl("add_relu", &add_relu_cpu);
  m.impl("add_relu_backward", &add_relu_backward_cpu);
}

}  // namespace fastblocks
