// Tensor-level work of fastblocks::add_relu shared by the CPU and CUDA impls: argument checks, the output's
// memory order, allocation, and the plain-data arguments for the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/epilogue_args.h"

namespace fastblocks {

struct AddReluForwardPlan {
  at::Tensor out;
  at::Tensor x, residual, scale, bias;  // as the kernel reads them (reordered/converted copies where needed)
  AddReluForwardArgs args;
};

struct AddReluBackwardPlan {
  at::Tensor grad_x, grad_residual, grad_scale, grad_bias;  // outputs
  at::Tensor grad_out, out, x, scale;                        // as the kernel reads them
  EpilogueBackwardArgs args;
};

AddReluForwardPlan plan_add_relu_forward(const at::Tensor& x, const at::Tensor& residual,
                                         const std::optional<at::Tensor>& scale,
                                         const std::optional<at::Tensor>& bias, bool relu);

AddReluBackwardPlan plan_add_relu_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                           const std::optional<at::Tensor>& x,
                                           const std::optional<at::Tensor>& scale, bool relu,
                                           bool compute_param_grads);

}  // namespace fastblocks
