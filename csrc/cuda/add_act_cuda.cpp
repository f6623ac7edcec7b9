// CUDA impl of fastblocks::add_act and fastblocks::add_act_backward (schemas in csrc/fastblocks.cpp): checks and
// allocation on the host (common/add_act_host.cpp), programs in epilogue_forward_kernel.cu /
// epilogue_backward_kernel.cu, on the current stream under a device guard.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string_view>
#include <tuple>

#include "common/add_act_host.h"
#include "common/checks.h"
#include "cuda/epilogue_backward.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

constexpr const char* kForward = "add_act";
constexpr const char* kBackward = "add_act_backward";

void check_optional_device(const std::optional<at::Tensor>& t, const char* arg, const at::Tensor& ref,
                           const char* ref_arg, const char* op) {
  if (t.has_value() && t->defined()) check_same_device(*t, arg, ref, ref_arg, op);
}

at::Tensor add_act_cuda(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& scale,
                        const std::optional<at::Tensor>& bias, c10::string_view activation, double negative_slope) {
  // Name the argument on the other device (the dispatcher sent us here because one of them is on CUDA).
  check_same_device(residual, "residual", x, "x", kForward);
  check_optional_device(scale, "scale", x, "x", kForward);
  check_optional_device(bias, "bias", x, "x", kForward);
  const c10::cuda::CUDAGuard guard(x.device());
  auto plan = plan_add_act_forward(x, residual, scale, bias, std::string_view(activation.data(), activation.size()),
                                   negative_slope);
  if (plan.out.numel() > 0) {
    cuda::launch_add_act_forward(plan.args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  }
  return plan.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_act_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, c10::string_view activation,
    double negative_slope, bool compute_param_grads) {
  check_optional_device(x, "x", grad_out, "grad_out", kBackward);
  check_optional_device(residual, "residual", grad_out, "grad_out", kBackward);
  check_optional_device(scale, "scale", grad_out, "grad_out", kBackward);
  check_optional_device(bias, "bias", grad_out, "grad_out", kBackward);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto plan = plan_add_act_backward(grad_out, x, residual, scale, bias,
                                    std::string_view(activation.data(), activation.size()), negative_slope,
                                    compute_param_grads);
  if (plan.grad_out.numel() > 0) run_epilogue_backward(plan.args, plan.grad_out);
  return {plan.grad_x, plan.grad_residual, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CUDA, m) {
  m.impl("add_act", &add_act_cuda);
  m.impl("add_act_backward", &add_act_backward_cuda);
}

}  // namespace fastblocks
