#include "common/depthwise_host.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <string>
#include <vector>

#include "common/activation_host.h"
#include "common/checks.h"
#include "common/epilogue_host.h"
#include "common/depthwise_tiled.h"
#include "common/layout.h"

namespace fastblocks {

namespace {
constexpr const char* kForward = "depthwise_conv2d";
constexpr const char* kBackward = "depthwise_conv2d_backward";

std::string pair_string(at::IntArrayRef v) { return shape_string(v); }

// a * b and a + b in int64, false when they overflow (stride, padding and dilation are any ints the caller passes).
bool mul_fits(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool add_fits(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }

// Checks x, weight and the convolution arguments; returns the geometry (memory order from x).
DepthwiseGeometry make_geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, const char* op) {
  check_defined(x, op, "x");
  FASTBLOCKS_CHECK_ARG(x.dim() == 4, op, "x", "must be 4-D [N, C, H, W], got shape ", shape_string(x.sizes()));
  check_floating_tensor(x, op, "x");
  FASTBLOCKS_CHECK_ARG(x.size(1) > 0, op, "x", "must have at least one channel, got shape ", shape_string(x.sizes()));
  check_same_dtype_device(weight, "weight", x, "x", op);
  const int64_t C = x.size(1);
  FASTBLOCKS_CHECK_ARG(weight.dim() == 4 && weight.size(1) == 1 && weight.size(0) > 0 && weight.size(0) % C == 0 &&
                           weight.size(2) > 0 && weight.size(3) > 0,
                       op, "weight", "must be [C * m, 1, kh, kw] with C = x.size(1) = ", std::to_string(C),
                       " and m >= 1, got shape ", shape_string(weight.sizes()));
  FASTBLOCKS_CHECK_ARG(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, "stride",
                       "must be two positive ints, got ", pair_string(stride));
  FASTBLOCKS_CHECK_ARG(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, op, "dilation",
                       "must be two positive ints, got ", pair_string(dilation));
  FASTBLOCKS_CHECK_ARG(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op, "padding",
                       "must be two non-negative ints, got ", pair_string(padding));
  DepthwiseGeometry g;
  g.batch = x.size(0);
  g.channels = C;
  g.multiplier = weight.size(0) / C;
  g.in_h = x.size(2);
  g.in_w = x.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  // span = in + 2 * pad - dil * (k - 1) - 1, without signed overflow: in + 2 * pad and dil * (k - 1) must fit in
  // int64 (both are then >= 0, so the differences cannot overflow); the kernels' index arithmetic stays within
  // [-pad, in + pad) after that.
  int64_t span[2], extent[2];
  const char* largest[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t in = x.size(2 + i), kernel = weight.size(2 + i);
    int64_t twice_pad = 0, padded = 0, reach = 0;
    FASTBLOCKS_CHECK_ARG(mul_fits(padding[i], 2, &twice_pad) && add_fits(in, twice_pad, &padded), op, "padding",
                         "is too large: input size + 2 * padding overflows int64 (padding ", pair_string(padding),
                         ", input ", shape_string(x.sizes()), ")");
    FASTBLOCKS_CHECK_ARG(mul_fits(dilation[i], kernel - 1, &reach), op, "dilation",
                         "is too large: dilation * (kernel size - 1) overflows int64 (dilation ", pair_string(dilation),
                         ", kernel ", shape_string(weight.sizes().slice(2)), ")");
    span[i] = padded - reach - 1;
    // The extent of a zero-padded plane as the CPU fast paths lay it out (in + 2 * pad rows or columns, plus the
    // kernel's reach and a stride of slack); `largest` names the argument that contributes most to it.
    const int64_t terms[4] = {in, twice_pad, reach, stride[i]};
    const char* names[4] = {"x", "padding", "dilation", "stride"};
    extent[i] = 0;
    bool fits = true;
    int arg_max = 0;
    for (int t = 0; t < 4; ++t) {
      fits = fits && add_fits(extent[i], terms[t], &extent[i]);
      if (terms[t] > terms[arg_max]) arg_max = t;
    }
    largest[i] = names[arg_max];
    if (!fits) extent[i] = -1;
  }
  const int64_t span_h = span[0], span_w = span[1];
  FASTBLOCKS_CHECK_ARG(span_h >= 0 && span_w >= 0, op, "x",
                       "is too small for the kernel: the output size would be <= 0 (input ", shape_string(x.sizes()),
                       ", kernel ", shape_string(weight.sizes().slice(2)), ", padding ", pair_string(padding),
                       ", dilation ", pair_string(dilation), ")");
  // Bound the products the kernels form from the geometry (a padded plane's area times a vector width): each
  // extent, and their product times 64, must fit in int64.
  int64_t area = 0;
  const bool area_fits = extent[0] >= 0 && extent[1] >= 0 && mul_fits(extent[0], extent[1], &area) &&
                         mul_fits(area, 64, &area);
  const int big = extent[0] < 0 || (extent[1] >= 0 && extent[0] >= extent[1]) ? 0 : 1;
  FASTBLOCKS_CHECK_ARG(area_fits, op, largest[big],
                       "is too large: the padded input plane (input + 2 * padding + dilation * (kernel - 1) + stride "
                       "per dim) is too large to index in int64 (input ", shape_string(x.sizes()), ", kernel ",
                       shape_string(weight.sizes().slice(2)), ", stride ", pair_string(stride), ", padding ",
                       pair_string(padding), ", dilation ", pair_string(dilation), ")");
  g.out_h = span_h / g.stride_h + 1;
  g.out_w = span_w / g.stride_w + 1;
  const std::vector<int64_t> out_sizes{g.batch, g.out_channels(), g.out_h, g.out_w};
  int64_t out_numel = 1;
  bool fits = true;
  for (int64_t s : out_sizes) fits = fits && mul_fits(out_numel, s, &out_numel);
  FASTBLOCKS_CHECK_ARG(fits, op, padding[0] > 0 || padding[1] > 0 ? "padding" : "weight",
                       "gives an output ", shape_string(out_sizes), " of more than 2^63 - 1 elements (input ",
                       shape_string(x.sizes()), ", weight ", shape_string(weight.sizes()), ", padding ",
                       pair_string(padding), ")");
  g.channels_last = preferred_channel_order(x) == ChannelOrder::kLast;
  return g;
}

}  // namespace

DepthwiseForwardPlan plan_depthwise_forward(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            std::string_view activation, double negative_slope, bool input_relu,
                                            bool allocate_output) {
  const ActivationSpec act = parse_activation(activation, negative_slope, kForward);
  const DepthwiseGeometry g = make_geometry(x, weight, stride, padding, dilation, kForward);
  DepthwiseForwardPlan plan;
  plan.bias = channel_param(bias, "bias", x, "x", g.out_channels(), kForward);
  plan.x = to_order(x, order_of(g));
  plan.weight = weight.contiguous();
  auto& a = plan.args;
  a.x = plan.x.const_data_ptr();
  a.weight = plan.weight.const_data_ptr();
  a.bias = plan.bias.defined() ? plan.bias.const_data_ptr() : nullptr;
  a.geo = g;
  a.dtype = x.scalar_type();
  a.activation = act;
  a.input_relu = input_relu;
  if (allocate_output) allocate_depthwise_forward_output(plan);
  return plan;
}

void allocate_depthwise_forward_output(DepthwiseForwardPlan& plan) {
  const DepthwiseGeometry& g = plan.args.geo;
  plan.out = empty_in_order({g.batch, g.out_channels(), g.out_h, g.out_w}, plan.x.options(), order_of(g));
  plan.args.out = plan.out.mutable_data_ptr();
}

DepthwiseBackwardPlan plan_depthwise_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& out,
                                              const at::Tensor& x, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation,
                                              std::string_view activation, double negative_slope, bool input_relu,
                                              std::array<bool, 3> output_mask, bool allocate_outputs) {
  const ActivationSpec act = parse_activation(activation, negative_slope, kBackward);
  const DepthwiseGeometry g = make_geometry(x, weight, stride, padding, dilation, kBackward);
  const std::vector<int64_t> out_sizes{g.batch, g.out_channels(), g.out_h, g.out_w};
  check_same_dtype_device(grad_out, "grad_out", x, "x", kBackward);
  FASTBLOCKS_CHECK_ARG(grad_out.sizes() == at::IntArrayRef(out_sizes), kBackward, "grad_out", "must have shape ",
                       shape_string(out_sizes), ", got ", shape_string(grad_out.sizes()));
  DepthwiseBackwardPlan plan;
  plan.activation = act;
  plan.needs_preactivation = !grad_from_output(act);
  const bool reads_out = act.kind != Activation::kNone && !plan.needs_preactivation;
  const bool has_out = out.has_value() && out->defined();
  FASTBLOCKS_CHECK_ARG(has_out || !reads_out, kBackward, "out", "is required with activation \"",
                       activation_name(act.kind), "\" (its gradient is read from the forward's output)");
  const ChannelOrder order = order_of(g);
  if (reads_out) {
    check_same_dtype_device(*out, "out", x, "x", kBackward);
    FASTBLOCKS_CHECK_ARG(out->sizes() == at::IntArrayRef(out_sizes), kBackward, "out", "must have shape ",
                         shape_string(out_sizes), ", got ", shape_string(out->sizes()));
    plan.out = to_order(*out, order);
  }
  if (plan.needs_preactivation) plan.bias = channel_param(bias, "bias", x, "x", g.out_channels(), kBackward);
  plan.x = to_order(x, order);
  plan.grad_out = to_order(grad_out, order);
  plan.weight = weight.contiguous();
  plan.output_mask = output_mask;
  auto& a = plan.args;
  a.grad_out = plan.grad_out.const_data_ptr();
  a.out = plan.out.defined() ? plan.out.const_data_ptr() : nullptr;
  a.x = plan.x.const_data_ptr();
  a.weight = plan.weight.const_data_ptr();
  a.geo = g;
  a.dtype = x.scalar_type();
  a.activation = plan.needs_preactivation ? ActivationSpec{} : act;
  a.input_relu = input_relu;
  if (allocate_outputs) allocate_depthwise_backward_outputs(plan);
  return plan;
}

PreactivationPass plan_preactivation_pass(DepthwiseBackwardPlan& plan) {
  TORCH_INTERNAL_ASSERT(plan.needs_preactivation, "plan_preactivation_pass: the activation's gradient follows from "
                        "the output");
  const DepthwiseGeometry& g = plan.args.geo;
  const ChannelOrder order = order_of(g);
  PreactivationPass pass;
  pass.z = empty_in_order(plan.grad_out.sizes(), plan.grad_out.options(), order);
  pass.masked_grad_out = empty_in_order(plan.grad_out.sizes(), plan.grad_out.options(), order);
  auto& f = pass.forward;
  f.x = plan.x.const_data_ptr();
  f.weight = plan.weight.const_data_ptr();
  f.bias = plan.bias.defined() ? plan.bias.const_data_ptr() : nullptr;
  f.out = pass.z.mutable_data_ptr();
  f.geo = g;
  f.dtype = plan.args.dtype;
  f.activation = ActivationSpec{};
  f.input_relu = plan.args.input_relu;
  pass.mask = activation_grad_args(plan.grad_out, pass.z, pass.masked_grad_out, order, plan.activation);
  plan.args.grad_out = pass.masked_grad_out.const_data_ptr();
  return pass;
}

void allocate_depthwise_backward_outputs(DepthwiseBackwardPlan& plan) {
  const auto& mask = plan.output_mask;
  const DepthwiseGeometry& g = plan.args.geo;
  const auto acc_options = plan.x.options().dtype(accumulation_dtype(plan.x.scalar_type()));
  plan.grad_input = mask[0] ? empty_in_order(plan.x.sizes(), plan.x.options(), order_of(g))
                            : at::empty({0}, plan.x.options());
  plan.grad_weight_acc = at::empty({mask[1] ? g.out_channels() * g.taps() : 0}, acc_options);
  plan.grad_bias = at::empty({mask[2] ? g.out_channels() : 0}, acc_options);
  auto& a = plan.args;
  a.grad_input = mask[0] ? plan.grad_input.mutable_data_ptr() : nullptr;
  a.grad_weight = mask[1] ? plan.grad_weight_acc.mutable_data_ptr() : nullptr;
  a.grad_bias = mask[2] ? plan.grad_bias.mutable_data_ptr() : nullptr;
  if (plan.out.numel() == 0) {  // sums over no outputs are zero; the kernels are not run
    plan.grad_weight_acc.zero_();
    plan.grad_bias.zero_();
    if (mask[0]) plan.grad_input.zero_();
  }
}

void prepare_tiled_backward(DepthwiseBackwardPlan& plan) {
  auto& a = plan.args;
  const int64_t floats = tiled::param_grad_workspace_floats(a);
  if (floats > 0) {
    plan.workspace = at::empty({floats}, plan.x.options().dtype(at::kFloat));
    a.workspace = plan.workspace.mutable_data_ptr();
  }
}

void finish_depthwise_backward(DepthwiseBackwardPlan& plan) {
  plan.grad_weight = plan.args.grad_weight != nullptr
                         ? plan.grad_weight_acc.view(plan.weight.sizes()).to(plan.weight.scalar_type())
                         : at::empty({0}, plan.weight.options());
}

}  // namespace fastblocks
