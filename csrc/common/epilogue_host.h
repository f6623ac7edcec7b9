// Host-side pieces every epilogue op's backward plan shares.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/epilogue_args.h"
#include "common/layout.h"

namespace fastblocks {

// Allocates grad_scale ([C] when want_grad_scale, else [0]) and grad_bias ([C] when compute_param_grads) in
// the accumulation dtype, zeroed when `out` is empty (the kernels then do not run), and fills the fields of
// `a` that do not depend on the op. grad_out and out are already dense in `order`.
void finish_epilogue_backward_plan(EpilogueBackwardArgs& a, const at::Tensor& grad_out, const at::Tensor& out,
                                   const at::Tensor& scale, ChannelOrder order, bool relu, bool want_grad_scale,
                                   bool compute_param_grads, at::Tensor& grad_scale, at::Tensor& grad_bias);

}  // namespace fastblocks
