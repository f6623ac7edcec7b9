#include "common/branch_concat_host.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <string>

#include "common/activation_host.h"
#include "common/checks.h"
#include "common/epilogue_host.h"
#include "common/layout.h"

namespace fastblocks {

namespace {
constexpr const char* kForward = "branch_concat";
constexpr const char* kBackward = "branch_concat_backward";

std::string input_name(size_t i) { return "inputs[" + std::to_string(i) + "]"; }

// inputs[i] agrees with inputs[0] in dtype, device and every dim but 1.
void check_inputs(at::TensorList inputs, const char* op) {
  FASTBLOCKS_CHECK_ARG(!inputs.empty(), op, "inputs", "must hold at least one tensor");
  FASTBLOCKS_CHECK_ARG(inputs.size() <= static_cast<size_t>(kMaxBranches), op, "inputs", "may hold at most ",
                       std::to_string(kMaxBranches), " tensors, got ", std::to_string(inputs.size()));
  const at::Tensor& x0 = inputs[0];
  check_defined(x0, op, "inputs[0]");
  FASTBLOCKS_CHECK_ARG(x0.dim() >= 2, op, "inputs[0]", "must have rank >= 2 with channels in dim 1, got shape ",
                       shape_string(x0.sizes()));
  check_floating_tensor(x0, op, "inputs[0]");
  for (size_t i = 1; i < inputs.size(); ++i) {
    const std::string name = input_name(i);
    check_same_dtype_device(inputs[i], name.c_str(), x0, "inputs[0]", op);
    bool same = inputs[i].dim() == x0.dim();
    for (int64_t d = 0; same && d < x0.dim(); ++d) same = d == 1 || inputs[i].size(d) == x0.size(d);
    FASTBLOCKS_CHECK_ARG(same, op, name.c_str(), "must match 'inputs[0]' ", shape_string(x0.sizes()),
                         " in every dim but 1, got ", shape_string(inputs[i].sizes()));
  }
}

// The first input with more than one channel decides the memory order (mirrored by pyfastblocks/_layout.py).
ChannelOrder inputs_order(at::TensorList inputs) {
  for (const auto& t : inputs) {
    if (t.size(1) > 1) return preferred_channel_order(t);
  }
  return ChannelOrder::kFirst;
}

std::vector<int64_t> with_channels(at::IntArrayRef sizes, int64_t channels) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out[1] = channels;
  return out;
}
}  // namespace

void check_branch_concat_devices(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& bias) {
  FASTBLOCKS_CHECK_ARG(!inputs.empty(), kForward, "inputs", "must hold at least one tensor");
  check_defined(inputs[0], kForward, "inputs[0]");
  for (size_t i = 1; i < inputs.size(); ++i) {
    check_same_device(inputs[i], input_name(i).c_str(), inputs[0], "inputs[0]", kForward);
  }
  if (scale.has_value() && scale->defined()) check_same_device(*scale, "scale", inputs[0], "inputs[0]", kForward);
  if (bias.has_value() && bias->defined()) check_same_device(*bias, "bias", inputs[0], "inputs[0]", kForward);
}

BranchConcatForwardPlan plan_branch_concat_forward(at::TensorList inputs, const std::optional<at::Tensor>& scale,
                                                   const std::optional<at::Tensor>& bias,
                                                   std::string_view activation, double negative_slope) {
  const ActivationSpec act = parse_activation(activation, negative_slope, kForward);
  check_inputs(inputs, kForward);
  const at::Tensor& x0 = inputs[0];
  BranchConcatForwardPlan plan;
  const ChannelOrder order = inputs_order(inputs);
  auto& a = plan.args;
  a.inputs.count = static_cast<int>(inputs.size());
  int64_t channels = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    plan.inputs.push_back(to_order(inputs[i], order));
    a.inputs.data[i] = const_cast<void*>(plan.inputs.back().const_data_ptr());
    a.inputs.channel_begin[i] = channels;
    channels += inputs[i].size(1);
  }
  a.inputs.channel_begin[inputs.size()] = channels;
  plan.scale = channel_param(scale, "scale", x0, "inputs[0]", channels, kForward);
  plan.bias = channel_param(bias, "bias", x0, "inputs[0]", channels, kForward);
  const auto sizes = with_channels(x0.sizes(), channels);
  plan.out = empty_in_order(sizes, x0.options(), order);
  a.out = plan.out.mutable_data_ptr();
  a.scale = plan.scale.defined() ? plan.scale.const_data_ptr() : nullptr;
  a.bias = plan.bias.defined() ? plan.bias.const_data_ptr() : nullptr;
  a.view = make_channel_view(sizes, order);
  a.dtype = x0.scalar_type();
  a.act = act;
  return plan;
}

BranchConcatBackwardPlan plan_branch_concat_backward(const at::Tensor& grad_out, at::IntArrayRef channels,
                                                     at::TensorList inputs, const std::optional<at::Tensor>& scale,
                                                     const std::optional<at::Tensor>& bias,
                                                     std::string_view activation, double negative_slope,
                                                     bool compute_param_grads, bool grad_at_preactivation) {
  const ActivationSpec act = parse_activation(activation, negative_slope, kBackward);
  check_defined(grad_out, kBackward, "grad_out");
  FASTBLOCKS_CHECK_ARG(grad_out.dim() >= 2, kBackward, "grad_out",
                       "must have rank >= 2 with channels in dim 1, got shape ", shape_string(grad_out.sizes()));
  check_floating_tensor(grad_out, kBackward, "grad_out");
  FASTBLOCKS_CHECK_ARG(!channels.empty() && channels.size() <= static_cast<size_t>(kMaxBranches), kBackward,
                       "channels", "must list 1 to ", std::to_string(kMaxBranches), " channel counts, got ",
                       std::to_string(channels.size()));
  int64_t total = 0;
  for (int64_t c : channels) {
    FASTBLOCKS_CHECK_ARG(c >= 0, kBackward, "channels", "must be non-negative, got ", shape_string(channels));
    total += c;
  }
  FASTBLOCKS_CHECK_ARG(total == grad_out.size(1), kBackward, "channels", "must add up to grad_out.size(1) = ",
                       std::to_string(grad_out.size(1)), ", got ", shape_string(channels));
  FASTBLOCKS_CHECK_ARG(inputs.empty() || inputs.size() == channels.size(), kBackward, "inputs",
                       "must be empty or hold one tensor per branch (", std::to_string(channels.size()), "), got ",
                       std::to_string(inputs.size()));
  // z = cat(inputs) * scale + bias is recomputed for every activation but "none".
  FASTBLOCKS_CHECK_ARG(!inputs.empty() || act.kind == Activation::kNone, kBackward, "inputs",
                       "are required with activation \"", activation_name(act.kind),
                       "\" (its gradient needs the pre-activation, recomputed from the inputs)");

  BranchConcatBackwardPlan plan;
  const int64_t C = grad_out.size(1);
  plan.scale = channel_param(scale, "scale", grad_out, "grad_out", C, kBackward);
  plan.bias = channel_param(bias, "bias", grad_out, "grad_out", C, kBackward);
  // The forward's memory order (its inputs') when they are given.
  const ChannelOrder order = inputs.empty() ? preferred_channel_order(grad_out) : inputs_order(inputs);
  plan.grad_out = to_order(grad_out, order);
  const bool want_grad_scale = compute_param_grads && !inputs.empty() && plan.scale.defined();
  const bool reads_x = act.kind != Activation::kNone || want_grad_scale;

  auto& a = plan.args;
  a.grad_x.count = static_cast<int>(channels.size());
  int64_t begin = 0;
  for (size_t i = 0; i < channels.size(); ++i) {
    const auto sizes = with_channels(grad_out.sizes(), channels[i]);
    plan.grad_inputs.push_back(empty_in_order(sizes, grad_out.options(), order));
    a.grad_x.data[i] = plan.grad_inputs.back().mutable_data_ptr();
    a.grad_x.channel_begin[i] = begin;
    if (reads_x) {
      const std::string name = input_name(i);
      check_same_dtype_device(inputs[i], name.c_str(), grad_out, "grad_out", kBackward);
      FASTBLOCKS_CHECK_ARG(inputs[i].sizes() == at::IntArrayRef(sizes), kBackward, name.c_str(), "must have shape ",
                           shape_string(sizes), ", got ", shape_string(inputs[i].sizes()));
      plan.inputs.push_back(to_order(inputs[i], order));
      a.x.data[i] = const_cast<void*>(plan.inputs.back().const_data_ptr());
      a.x.channel_begin[i] = begin;
    }
    begin += channels[i];
  }
  a.grad_x.channel_begin[channels.size()] = begin;
  if (reads_x) {
    a.x.count = a.grad_x.count;
    a.x.channel_begin[channels.size()] = begin;
  }
  finish_epilogue_backward_plan(a, plan.grad_out, plan.scale, plan.bias, order, act, want_grad_scale,
                                compute_param_grads, plan.grad_scale, plan.grad_bias);
  a.grad_x_scaled = !grad_at_preactivation;
  return plan;
}

}  // namespace fastblocks
