// CUDA impl of fastblocks::branch_concat and fastblocks::branch_concat_backward (schemas in csrc/fastblocks.cpp):
// checks and allocation on the host, kernels in branch_concat_kernel.cu / epilogue_backward_kernel.cu, on the
// current stream under a device guard.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/branch_concat_host.h"
#include "common/checks.h"
#include "cuda/epilogue_backward.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

at::Tensor branch_concat_cuda(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                              const std::optional<at::Tensor>& bias, bool relu) {
  check_branch_concat_devices(inputs, scale, bias);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  auto plan = plan_branch_concat_forward(inputs, scale, bias, relu);
  if (plan.out.numel() > 0) {
    cuda::launch_branch_concat_forward(plan.args, c10::cuda::getCurrentCUDAStream(inputs[0].get_device()).stream());
  }
  return plan.out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> branch_concat_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, at::IntArrayRef channels, at::TensorList inputs,
    const std::optional<at::Tensor>& scale, bool relu, bool compute_param_grads) {
  check_same_device(grad_out, "grad_out", out, "out", "branch_concat_backward");
  for (const auto& t : inputs) check_same_device(t, "inputs", out, "out", "branch_concat_backward");
  if (scale.has_value() && scale->defined()) check_same_device(*scale, "scale", out, "out", "branch_concat_backward");
  const c10::cuda::CUDAGuard guard(out.device());
  auto plan = plan_branch_concat_backward(grad_out, out, channels, inputs, scale, relu, compute_param_grads);
  if (plan.out.numel() > 0) {
    run_epilogue_backward(plan.args, out, cuda::launch_branch_concat_backward_elementwise);
  }
  return {plan.grad_inputs, plan.grad_scale, plan.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CUDA, m) {
  m.impl("branch_concat", &branch_concat_cuda);
  m.impl("branch_concat_backward", &branch_concat_backward_cuda);
}

}  // namespace fastblocks
