// CUDA impl of fastblocks::add_relu and fastblocks::add_relu_backward (schemas in csrc/fastblocks.cpp):
// checks and allocation on the host, kernels in add_relu_kernel.cu, on the current stream under a device guard.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/add_relu_host.h"
#include "common/checks.h"
#include "cuda/epilogue_backward.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

at::Tensor add_relu_cuda(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& bias, bool relu) {
  // Name the argument on the other device (the dispatcher sent us here because one of them is on CUDA).
  check_same_device(residual, "residual", x, "x", "add_relu");
  if (scale.has_value() && scale->defined()) check_same_device(*scale, "scale", x, "x", "add_relu");
  if (bias.has_value() && bias->defined()) check_same_device(*bias, "bias", x, "x", "add_relu");
  const c10::cuda::CUDAGuard guard(x.device());
  auto plan = plan_add_relu_forward(x, residual, scale, bias, relu);
  if (plan.out.numel() > 0) {
    cuda::launch_add_relu_forward(plan.args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_relu_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, const std::optional<at::Tensor>& x,
    const std::optional<at::Tensor>& scale, bool relu, bool compute_param_grads) {
  check_same_device(grad_out, "grad_out", out, "out", "add_relu_backward");
  if (x.has_value() && x->defined()) check_same_device(*x, "x", out, "out", "add_relu_backward");
  if (scale.has_value() && scale->defined()) check_same_device(*scale, "scale", out, "out", "add_relu_backward");
  const c10::cuda::CUDAGuard guard(out.device());
  auto plan = plan_add_relu_backward(grad_out, out, x, scale, relu, compute_param_grads);
  if (plan.out.numel() > 0) {
    run_epilogue_backward(plan.args, out, cuda::launch_add_relu_backward_elementwise);
  }
  return {plan.grad_x, plan.grad_residual, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CUDA, m) {
  m.impl("add_relu", &add_relu_cuda);
  m.impl("add_relu_backward", &add_relu_backward_cuda);
}

}  // namespace fastblocks
