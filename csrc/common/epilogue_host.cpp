#include "common/epilogue_host.h"

#include <ATen/ops/empty.h>

#include "common/checks.h"

namespace fastblocks {

void finish_epilogue_backward_plan(EpilogueBackwardArgs& a, const at::Tensor& grad_out, const at::Tensor& scale,
                                   const at::Tensor& bias, ChannelOrder order, const ActivationSpec& act,
                                   bool want_grad_scale, bool compute_param_grads, at::Tensor& grad_scale,
                                   at::Tensor& grad_bias) {
  const int64_t channels = grad_out.size(1);
  const auto acc_options = grad_out.options().dtype(accumulation_dtype(grad_out.scalar_type()));
  grad_scale = at::empty({want_grad_scale ? channels : 0}, acc_options);
  grad_bias = at::empty({compute_param_grads ? channels : 0}, acc_options);
  if (grad_out.numel() == 0) {  // sums over no elements are zero
    grad_scale.zero_();
    grad_bias.zero_();
  }
  a.grad_out = grad_out.const_data_ptr();
  a.scale = scale.defined() ? scale.const_data_ptr() : nullptr;
  a.bias = bias.defined() ? bias.const_data_ptr() : nullptr;
  a.grad_scale = want_grad_scale ? grad_scale.mutable_data_ptr() : nullptr;
  a.grad_bias = compute_param_grads ? grad_bias.mutable_data_ptr() : nullptr;
  a.view = make_channel_view(grad_out.sizes(), order);
  a.dtype = grad_out.scalar_type();
  a.act = act;
}

BranchConcatForwardArgs activation_inplace_args(at::Tensor& y, ChannelOrder order, const ActivationSpec& act) {
  BranchConcatForwardArgs a;
  a.inputs.count = 1;
  a.inputs.data[0] = y.mutable_data_ptr();  // read and written element by element in place
  a.inputs.channel_begin[1] = y.size(1);
  a.out = y.mutable_data_ptr();
  a.view = make_channel_view(y.sizes(), order);
  a.dtype = y.scalar_type();
  a.act = act;
  return a;
}

EpilogueBackwardArgs activation_grad_args(const at::Tensor& grad_out, const at::Tensor& v, at::Tensor& grad,
                                          ChannelOrder order, const ActivationSpec& act) {
  EpilogueBackwardArgs a;
  a.grad_out = grad_out.const_data_ptr();
  a.x.count = 1;
  a.x.data[0] = const_cast<void*>(v.const_data_ptr());
  a.x.channel_begin[1] = v.size(1);
  a.grad_residual = grad.mutable_data_ptr();
  a.view = make_channel_view(grad_out.sizes(), order);
  a.dtype = grad_out.scalar_type();
  a.act = act;
  return a;
}

}  // namespace fastblocks
