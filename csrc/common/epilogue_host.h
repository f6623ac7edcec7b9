// Host-side pieces every epilogue op's backward plan shares.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/epilogue_args.h"
#include "common/layout.h"

namespace fastblocks {

// Allocates grad_scale ([C] when want_grad_scale, else [0]) and grad_bias ([C] when compute_param_grads) in
// the accumulation dtype, zeroed when grad_out is empty (the kernels then do not run), and fills the fields of
// `a` that do not depend on the op. grad_out is already dense in `order`.
void finish_epilogue_backward_plan(EpilogueBackwardArgs& a, const at::Tensor& grad_out, const at::Tensor& scale,
                                   const at::Tensor& bias, ChannelOrder order, const ActivationSpec& act,
                                   bool want_grad_scale, bool compute_param_grads, at::Tensor& grad_scale,
                                   at::Tensor& grad_bias);

// The one-input epilogue without scale or bias, for ops that apply an activation outside their own kernels:
// y = act(y) in place, and grad = act'(v) * grad_out with v the pre-activation (or the output, where the activation's
// gradient follows from it). Every tensor dense in `order`, of one shape.
BranchConcatForwardArgs activation_inplace_args(at::Tensor& y, ChannelOrder order, const ActivationSpec& act);
EpilogueBackwardArgs activation_grad_args(const at::Tensor& grad_out, const at::Tensor& v, at::Tensor& grad,
                                          ChannelOrder order, const ActivationSpec& act);

}  // namespace fastblocks
