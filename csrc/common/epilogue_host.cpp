#include "common/epilogue_host.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace fastblocks {

void finish_epilogue_backward_plan(EpilogueBackwardArgs& a, const at::Tensor& grad_out, const at::Tensor& out,
                                   const at::Tensor& scale, ChannelOrder order, bool relu, bool want_grad_scale,
                                   bool compute_param_grads, at::Tensor& grad_scale, at::Tensor& grad_bias) {
  const int64_t channels = out.size(1);
  const auto acc_options = out.options().dtype(accumulation_dtype(out.scalar_type()));
  grad_scale = at::empty({want_grad_scale ? channels : 0}, acc_options);
  grad_bias = at::empty({compute_param_grads ? channels : 0}, acc_options);
  if (out.numel() == 0) {  // sums over no elements are zero
    grad_scale.zero_();
    grad_bias.zero_();
  }
  a.grad_out = grad_out.const_data_ptr();
  a.out = out.const_data_ptr();
  a.scale = scale.defined() ? scale.const_data_ptr() : nullptr;
  a.grad_scale = want_grad_scale ? grad_scale.mutable_data_ptr() : nullptr;
  a.grad_bias = compute_param_grads ? grad_bias.mutable_data_ptr() : nullptr;
  a.view = make_channel_view(out.sizes(), order);
  a.dtype = out.scalar_type();
  a.relu = relu;
}

}  // namespace fastblocks
