#include "common/add_relu_host.h"

#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/epilogue_host.h"
#include "common/layout.h"

namespace fastblocks {

namespace {
constexpr const char* kForward = "add_relu";
constexpr const char* kBackward = "add_relu_backward";

void check_activation_tensor(const at::Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  FASTBLOCKS_CHECK_ARG(t.dim() >= 2, op, arg, "must have rank >= 2 with channels in dim 1, got shape ",
                       shape_string(t.sizes()));
  check_floating_tensor(t, op, arg);
}

void check_same_shape(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                      const char* op) {
  FASTBLOCKS_CHECK_ARG(t.sizes() == ref.sizes(), op, arg, "must have the shape of '", ref_arg, "' ",
                       shape_string(ref.sizes()), " (no broadcasting), got ", shape_string(t.sizes()));
}
}  // namespace

AddReluForwardPlan plan_add_relu_forward(const at::Tensor& x, const at::Tensor& residual,
                                         const std::optional<at::Tensor>& scale,
                                         const std::optional<at::Tensor>& bias, bool relu) {
  check_activation_tensor(x, kForward, "x");
  check_same_dtype_device(residual, "residual", x, "x", kForward);
  check_same_shape(residual, "residual", x, "x", kForward);

  AddReluForwardPlan plan;
  const int64_t channels = x.size(1);
  plan.scale = channel_param(scale, "scale", x, "x", channels, kForward);
  plan.bias = channel_param(bias, "bias", x, "x", channels, kForward);

  const ChannelOrder order = preferred_channel_order(x);
  plan.out = empty_in_order(x.sizes(), x.options(), order);
  plan.x = to_order(x, order);
  plan.residual = to_order(residual, order);

  auto& a = plan.args;
  a.x = plan.x.const_data_ptr();
  a.residual = plan.residual.const_data_ptr();
  a.out = plan.out.mutable_data_ptr();
  a.scale = plan.scale.defined() ? plan.scale.const_data_ptr() : nullptr;
  a.bias = plan.bias.defined() ? plan.bias.const_data_ptr() : nullptr;
  a.view = make_channel_view(x.sizes(), order);
  a.dtype = x.scalar_type();
  a.relu = relu;
  return plan;
}

AddReluBackwardPlan plan_add_relu_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                           const std::optional<at::Tensor>& x,
                                           const std::optional<at::Tensor>& scale, bool relu,
                                           bool compute_param_grads) {
  check_activation_tensor(out, kBackward, "out");
  check_same_dtype_device(grad_out, "grad_out", out, "out", kBackward);
  check_same_shape(grad_out, "grad_out", out, "out", kBackward);

  AddReluBackwardPlan plan;
  const int64_t channels = out.size(1);
  plan.scale = channel_param(scale, "scale", out, "out", channels, kBackward);
  // x is read only for grad_scale = sum(g * x), and is only meaningful together with a scale.
  const bool has_x = x.has_value() && x->defined();
  FASTBLOCKS_CHECK_ARG(!has_x || plan.scale.defined(), kBackward, "x",
                       "is only used for the gradient of 'scale': pass it together with 'scale', or pass None");
  const bool want_grad_scale = compute_param_grads && has_x;

  const ChannelOrder order = preferred_channel_order(out);
  plan.out = to_order(out, order);
  plan.grad_out = to_order(grad_out, order);
  if (want_grad_scale) {
    check_same_dtype_device(*x, "x", out, "out", kBackward);
    check_same_shape(*x, "x", out, "out", kBackward);
    plan.x = to_order(*x, order);
  }

  plan.grad_residual = empty_in_order(out.sizes(), out.options(), order);
  plan.grad_x = plan.scale.defined() ? empty_in_order(out.sizes(), out.options(), order) : at::empty({0}, out.options());

  auto& a = plan.args;
  finish_epilogue_backward_plan(a, plan.grad_out, plan.out, plan.scale, order, relu, want_grad_scale,
                                compute_param_grads, plan.grad_scale, plan.grad_bias);
  if (want_grad_scale) {
    a.x.count = 1;
    a.x.data[0] = const_cast<void*>(plan.x.const_data_ptr());
    a.x.channel_begin[1] = channels;
  }
  if (plan.scale.defined()) {
    a.grad_x.count = 1;
    a.grad_x.data[0] = plan.grad_x.mutable_data_ptr();
    a.grad_x.channel_begin[1] = channels;
  }
  a.grad_residual = plan.grad_residual.mutable_data_ptr();
  return plan;
}

}  // namespace fastblocks
