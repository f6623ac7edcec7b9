// Tensor-level work of fastblocks::branch_concat shared by the CPU and CUDA impls: argument checks, the
// output's memory order, allocation, and the plain-data arguments for the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <vector>

#include "common/epilogue_args.h"

namespace fastblocks {

struct BranchConcatForwardPlan {
  at::Tensor out;
  std::vector<at::Tensor> inputs;  // as the kernel reads them (reordered copies where needed)
  at::Tensor scale, bias;
  BranchConcatForwardArgs args;
};

struct BranchConcatBackwardPlan {
  std::vector<at::Tensor> grad_inputs;
  at::Tensor grad_scale, grad_bias;
  at::Tensor grad_out, scale, bias;
  std::vector<at::Tensor> inputs;
  EpilogueBackwardArgs args;
};

BranchConcatForwardPlan plan_branch_concat_forward(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                                                   const std::optional<at::Tensor>& bias,
                                                   std::string_view activation, double negative_slope);

// `inputs` may be empty only with activation "none" (then grad_scale is not computed either).
BranchConcatBackwardPlan plan_branch_concat_backward(const at::Tensor& grad_out, at::IntArrayRef channels,
                                                     at::TensorList inputs, const std::optional<at::Tensor>& scale,
                                                     const std::optional<at::Tensor>& bias,
                                                     std::string_view activation, double negative_slope,
                                                     bool compute_param_grads, bool grad_at_preactivation = false);

// Device checks that name the argument on the other device (called first by the CUDA impl).
void check_branch_concat_devices(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& bias);

}  // namespace fastblocks
