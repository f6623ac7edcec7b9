#include "common/add_act_host.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "common/activation_host.h"
#include "common/checks.h"
#include "common/epilogue_host.h"
#include "common/layout.h"

namespace fastblocks {

namespace {
constexpr const char* kForward = "add_act";
constexpr const char* kBackward = "add_act_backward";

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

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }
}  // namespace

AddActForwardPlan plan_add_act_forward(const at::Tensor& x, const at::Tensor& residual,
                                       const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias,
                                       std::string_view activation, double negative_slope) {
  const ActivationSpec act = parse_activation(activation, negative_slope, kForward);
  check_activation_tensor(x, kForward, "x");
  check_same_dtype_device(residual, "residual", x, "x", kForward);
  check_same_shape(residual, "residual", x, "x", kForward);

  AddActForwardPlan plan;
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
  a.act = act;
  return plan;
}

AddActBackwardPlan plan_add_act_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& x,
                                         const std::optional<at::Tensor>& residual,
                                         const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias,
                                         std::string_view activation, double negative_slope,
                                         bool compute_param_grads) {
  const ActivationSpec act = parse_activation(activation, negative_slope, kBackward);
  check_activation_tensor(grad_out, kBackward, "grad_out");
  const bool has_x = given(x), has_residual = given(residual);
  // z = x * scale + bias (+ residual) is recomputed for every activation but "none". Without a residual the op
  // is the backward of affine_act with its gradient at the pre-activation in grad_residual (what the BatchNorm
  // tails of pyfastblocks/nn/_tail.py hand to ATen's batch_norm backward).
  if (act.kind != Activation::kNone) {
    FASTBLOCKS_CHECK_ARG(has_x, kBackward, "x", "is required with activation \"", activation_name(act.kind),
                         "\" (its gradient needs the pre-activation, recomputed from the inputs)");
  }
  if (has_x) {
    check_same_dtype_device(*x, "x", grad_out, "grad_out", kBackward);
    check_same_shape(*x, "x", grad_out, "grad_out", kBackward);
  }
  if (has_residual) {
    check_same_dtype_device(*residual, "residual", grad_out, "grad_out", kBackward);
    check_same_shape(*residual, "residual", grad_out, "grad_out", kBackward);
  }

  AddActBackwardPlan plan;
  const int64_t channels = grad_out.size(1);
  plan.scale = channel_param(scale, "scale", grad_out, "grad_out", channels, kBackward);
  plan.bias = channel_param(bias, "bias", grad_out, "grad_out", channels, kBackward);
  const bool want_grad_scale = compute_param_grads && has_x && plan.scale.defined();
  const bool reads_x = act.kind != Activation::kNone || want_grad_scale;

  // The forward's memory order (x's) when x is given, so that grad_x comes back in x's layout.
  const ChannelOrder order = preferred_channel_order(has_x ? *x : grad_out);
  plan.grad_out = to_order(grad_out, order);
  if (reads_x) plan.x = to_order(*x, order);
  if (act.kind != Activation::kNone && has_residual) plan.residual = to_order(*residual, order);

  plan.grad_residual = empty_in_order(grad_out.sizes(), grad_out.options(), order);
  plan.grad_x = plan.scale.defined() ? empty_in_order(grad_out.sizes(), grad_out.options(), order)
                                     : at::empty({0}, grad_out.options());

  auto& a = plan.args;
  finish_epilogue_backward_plan(a, plan.grad_out, plan.scale, plan.bias, order, act, want_grad_scale,
                                compute_param_grads, plan.grad_scale, plan.grad_bias);
  if (reads_x) {
    a.x.count = 1;
    a.x.data[0] = const_cast<void*>(plan.x.const_data_ptr());
    a.x.channel_begin[1] = channels;
  }
  if (plan.residual.defined()) a.residual = plan.residual.const_data_ptr();
  if (plan.scale.defined()) {
    a.grad_x.count = 1;
    a.grad_x.data[0] = plan.grad_x.mutable_data_ptr();
    a.grad_x.channel_begin[1] = channels;
  }
  a.grad_residual = plan.grad_residual.mutable_data_ptr();
  return plan;
}

}  // namespace fastblocks
