// Tensor-level work of fastblocks::add_act shared by the CPU and CUDA impls: argument checks, the output's memory
// order, allocation, and the plain-data arguments for the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "common/epilogue_args.h"

namespace fastblocks {

struct AddActForwardPlan {
  at::Tensor out;
  at::Tensor x, residual, scale, bias;  // as the kernel reads them (reordered/converted copies where needed)
  AddActForwardArgs args;
};

struct AddActBackwardPlan {
  at::Tensor grad_x, grad_residual, grad_scale, grad_bias;  // outputs
  at::Tensor grad_out, x, residual, scale, bias;            // as the kernel reads them
  EpilogueBackwardArgs args;
};

AddActForwardPlan plan_add_act_forward(const at::Tensor& x, const at::Tensor& residual,
                                       const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias,
                                       std::string_view activation, double negative_slope);

AddActBackwardPlan plan_add_act_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& x,
                                         const std::optional<at::Tensor>& residual,
                                         const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias,
                                         std::string_view activation, double negative_slope,
                                         bool compute_param_grads);

}  // namespace fastblocks
