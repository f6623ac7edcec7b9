// Tensor-level work of fastblocks::depthwise_conv2d shared by the CPU and CUDA impls: argument checks, output
// size and memory order, allocation, the plain-data arguments for the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string_view>

#include "common/depthwise.h"
#include "common/epilogue_args.h"
#include "common/layout.h"

namespace fastblocks {

// The memory order of x, out and their gradients.
inline ChannelOrder order_of(const DepthwiseGeometry& g) {
  return g.channels_last ? ChannelOrder::kLast : ChannelOrder::kFirst;
}

struct DepthwiseForwardPlan {
  at::Tensor out, x, weight, bias;
  DepthwiseForwardArgs args;
};

struct DepthwiseBackwardPlan {
  at::Tensor grad_input, grad_weight, grad_bias;  // outputs ([0] when not wanted)
  at::Tensor grad_weight_acc;                     // the kernel's accumulation-dtype weight gradient
  at::Tensor grad_out, out, x, weight, bias;
  at::Tensor workspace;  // prepare_tiled_backward
  std::array<bool, 3> output_mask{};
  // The activation of the forward. When its gradient needs the pre-activation (!grad_from_output), the kernels'
  // args.activation is "none" and args.grad_out must first become act'(z) * grad_out: see PreactivationPass.
  ActivationSpec activation;
  bool needs_preactivation = false;
  DepthwiseBackwardArgs args;
};

DepthwiseForwardPlan plan_depthwise_forward(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            std::string_view activation, double negative_slope, bool input_relu,
                                            bool allocate_output = true);
void allocate_depthwise_forward_output(DepthwiseForwardPlan& plan);

// `out` (the forward's output) is read for activations whose gradient follows from it (grad_from_output) and may
// be None otherwise; `bias` (the forward's) is read only to recompute the pre-activation for the others.
DepthwiseBackwardPlan plan_depthwise_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& out,
                                              const at::Tensor& x, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation,
                                              std::string_view activation, double negative_slope, bool input_relu,
                                              std::array<bool, 3> output_mask, bool allocate_outputs = true);

// For an activation whose gradient needs the pre-activation z (SiLU, GELU, Hardswish, ...): the backward recomputes
// z with the forward kernels (no activation) instead of the forward saving it, then masks grad_out with act'(z) in
// one elementwise pass; the plan then runs as for "none". A device impl runs `forward` (z), then `mask` (the
// epilogue backward kernel), then the plan's kernels. Made by plan_preactivation_pass, which points the plan's
// args at the masked grad_out.
struct PreactivationPass {
  at::Tensor z, masked_grad_out;
  DepthwiseForwardArgs forward;
  EpilogueBackwardArgs mask;
};
PreactivationPass plan_preactivation_pass(DepthwiseBackwardPlan& plan);

// The workspace of the tiled CUDA weight-gradient programs (common/depthwise_tiled.h): their per-chunk partial sums.
// Called by the CUDA impl and by the CPU emulator of those programs.
void prepare_tiled_backward(DepthwiseBackwardPlan& plan);

// The planned kernels' outputs, for a plan made with allocate_outputs = false (a caller that may compute them
// another way decides after planning: unused outputs are not allocated).
void allocate_depthwise_backward_outputs(DepthwiseBackwardPlan& plan);

// After the kernels: grad_weight in the weight's dtype and shape.
void finish_depthwise_backward(DepthwiseBackwardPlan& plan);

}  // namespace fastblocks
