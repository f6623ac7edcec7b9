// fastblocks::separable_conv2d: the depthwise step (fastblocks::depthwise_conv2d, bias + activation + input ReLU
// in its kernel) followed by the pointwise 1x1 convolution as one GEMM with its bias (and, for ReLU, the
// activation: at::_addmm_activation, cuBLASLt's RELU_BIAS epilogue on CUDA; other activations through the epilogue
// op) on the channels_last view.
// Registered as CompositeImplicitAutograd: autograd, fake tensors, torch.compile and export see the depthwise
// op and ATen ops it is made of, so it needs no backward or fake impl of its own.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_addmm_activation.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/mm.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

#include "common/activation_host.h"
#include "common/checks.h"

namespace fastblocks {
namespace {

// FASTBLOCKS_CHECK_ARG adds the "fastblocks::" prefix.
constexpr const char* kOp = "separable_conv2d";

at::Tensor depthwise_op(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        c10::string_view activation, bool input_relu, double negative_slope) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastblocks::depthwise_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view, bool,
                                         double)>();
  return op.call(x, weight, bias, stride, padding, dilation, activation, input_relu, negative_slope);
}

// act(y) for any activation of the table: fastblocks::branch_concat with one input and no scale/bias (autograd,
// fake tensors and every device come with the op).
at::Tensor activation_op(const at::Tensor& y, c10::string_view activation, double negative_slope) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastblocks::branch_concat", "")
                       .typed<at::Tensor(at::TensorList, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, c10::string_view, double)>();
  return op.call({y}, std::nullopt, std::nullopt, activation, negative_slope);
}

// One size for a message: its value, or "s" when symbolic.
std::string sym_int_string(const c10::SymInt& v) {
  const auto value = v.maybe_as_int();
  return value.has_value() ? std::to_string(*value) : std::string("s");
}

// The pointwise step's activation: ReLU in place (the convolution / GEMM output is not saved by its backward), the
// others through the epilogue op.
at::Tensor apply_activation(at::Tensor y, const ActivationSpec& act, c10::string_view name, double negative_slope) {
  if (act.kind == Activation::kNone) return y;
  if (act.kind == Activation::kReLU) return y.relu_();
  return activation_op(y, name, negative_slope);
}

at::Tensor separable_conv2d(const at::Tensor& x, const at::Tensor& depthwise_weight,
                            const std::optional<at::Tensor>& depthwise_bias, const at::Tensor& pointwise_weight,
                            const std::optional<at::Tensor>& pointwise_bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view depthwise_activation,
                            c10::string_view activation, bool input_relu, double depthwise_negative_slope,
                            double negative_slope) {
  const ActivationSpec act =
      parse_activation(std::string_view(activation.data(), activation.size()), negative_slope, kOp);
  parse_activation(std::string_view(depthwise_activation.data(), depthwise_activation.size()),
                   depthwise_negative_slope, kOp, "depthwise_activation", "depthwise_negative_slope");
  // The depthwise step's tensors, checked here so that errors name this op's arguments (depthwise_conv2d would
  // call them 'weight' and 'bias'). Sizes are SymInts: the composite also runs on fake tensors with symbolic
  // shapes (torch.compile, export). stride/padding/dilation keep their names: depthwise_conv2d checks them.
  check_defined(x, kOp, "x");
  FASTBLOCKS_CHECK_ARG(x.dim() == 4, kOp, "x", "must be 4-D [N, C, H, W], got shape ", sym_shape_string(x.sym_sizes()));
  check_floating_tensor(x, kOp, "x");
  FASTBLOCKS_CHECK_ARG(x.sym_size(1) > 0, kOp, "x", "must have at least one channel, got shape ",
                       sym_shape_string(x.sym_sizes()));
  check_same_dtype_device(depthwise_weight, "depthwise_weight", x, "x", kOp);
  const c10::SymInt channels = x.sym_size(1);
  FASTBLOCKS_CHECK_ARG(depthwise_weight.dim() == 4 && depthwise_weight.sym_size(1) == 1 &&
                           depthwise_weight.sym_size(0) > 0 && depthwise_weight.sym_size(0) % channels == 0 &&
                           depthwise_weight.sym_size(2) > 0 && depthwise_weight.sym_size(3) > 0,
                       kOp, "depthwise_weight", "must be [C * m, 1, kh, kw] with C = x.size(1) = ",
                       sym_int_string(channels), " and m >= 1, got shape ",
                       sym_shape_string(depthwise_weight.sym_sizes()));
  if (depthwise_bias.has_value() && depthwise_bias->defined()) {
    const at::Tensor& b = *depthwise_bias;
    FASTBLOCKS_CHECK_ARG(b.dim() == 1 && b.sym_size(0) == depthwise_weight.sym_size(0), kOp, "depthwise_bias",
                         "must be a 1-D tensor of one value per depthwise output channel (shape ",
                         sym_shape_string(depthwise_weight.sym_sizes().slice(0, 1)), "), got shape ",
                         sym_shape_string(b.sym_sizes()));
    FASTBLOCKS_CHECK_ARG(b.device() == x.device(), kOp, "depthwise_bias", "must be on the device of 'x' (",
                         x.device(), "), got ", b.device());
    FASTBLOCKS_CHECK_ARG(b.scalar_type() == x.scalar_type() || b.scalar_type() == at::kFloat, kOp, "depthwise_bias",
                         "must have the dtype of 'x' (", x.scalar_type(), ") or float32, got ", b.scalar_type());
  }
  check_defined(pointwise_weight, kOp, "pointwise_weight");
  FASTBLOCKS_CHECK_ARG(pointwise_weight.dim() == 4 && pointwise_weight.sym_size(2) == 1 &&
                           pointwise_weight.sym_size(3) == 1,
                       kOp, "pointwise_weight", "must be [C_out, C_mid, 1, 1], got shape ",
                       sym_shape_string(pointwise_weight.sym_sizes()));
  FASTBLOCKS_CHECK_ARG(pointwise_weight.scalar_type() == x.scalar_type(), kOp, "pointwise_weight",
                       "must have the dtype of 'x' (", x.scalar_type(), "), got ", pointwise_weight.scalar_type());
  FASTBLOCKS_CHECK_ARG(pointwise_weight.device() == x.device(), kOp, "pointwise_weight",
                       "must be on the device of 'x' (", x.device(), "), got ", pointwise_weight.device());
  if (pointwise_bias.has_value() && pointwise_bias->defined()) {
    const auto dtype = pointwise_bias->scalar_type();
    FASTBLOCKS_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                         kOp, "pointwise_bias", "must have a floating dtype (float32, float64, float16 or bfloat16), got ",
                         dtype);
  }
  const at::Tensor mid = depthwise_op(x, depthwise_weight, depthwise_bias, stride, padding, dilation,
                                      depthwise_activation, input_relu, depthwise_negative_slope);
  const c10::SymInt c_mid = mid.sym_size(1), c_out = pointwise_weight.sym_size(0);
  FASTBLOCKS_CHECK_ARG(pointwise_weight.sym_size(1) == c_mid, kOp, "pointwise_weight",
                       "must have as many input channels as the depthwise step has outputs (C * multiplier)");
  std::optional<at::Tensor> pw_bias;
  if (pointwise_bias.has_value() && pointwise_bias->defined()) {
    FASTBLOCKS_CHECK_ARG(pointwise_bias->dim() == 1 && pointwise_bias->sym_size(0) == c_out, kOp, "pointwise_bias",
                         "must be [C_out], one value per output channel of 'pointwise_weight'");
    FASTBLOCKS_CHECK_ARG(pointwise_bias->device() == x.device(), kOp, "pointwise_bias", "must be on the device of 'x' (",
                         x.device(), "), got ", pointwise_bias->device());
    pw_bias = pointwise_bias->to(x.scalar_type());
  }
  if (!mid.is_contiguous(at::MemoryFormat::ChannelsLast) || mid.is_contiguous()) {
    // NCHW: the library's 1x1 convolution (a batched GEMM over [C_mid, H*W] planes).
    return apply_activation(at::conv2d(mid, pointwise_weight, pw_bias), act, activation, negative_slope);
  }
  // channels_last: [N*H*W, C_mid] x [C_mid, C_out] as one GEMM; the result viewed back is channels_last.
  const c10::SymInt n = mid.sym_size(0), h = mid.sym_size(2), w = mid.sym_size(3);
  const at::Tensor rows = mid.permute({0, 2, 3, 1}).reshape_symint({n * h * w, c_mid});
  const at::Tensor wt = pointwise_weight.reshape_symint({c_out, c_mid}).t();
  at::Tensor out;
  // _addmm_activation has no derivative: it serves inference only.
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (rows.requires_grad() || wt.requires_grad() || (pw_bias.has_value() && pw_bias->requires_grad()));
  if (pw_bias.has_value() && act.kind == Activation::kReLU && !needs_grad) {
    out = at::_addmm_activation(*pw_bias, rows, wt, 1, 1, /*use_gelu=*/false);
  } else {
    out = apply_activation(pw_bias.has_value() ? at::addmm(*pw_bias, rows, wt) : at::mm(rows, wt), act, activation,
                           negative_slope);
  }
  return out.view_symint({n, h, w, c_out}).permute({0, 3, 1, 2});
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CompositeImplicitAutograd, m) {
  m.impl("separable_conv2d", &separable_conv2d);
}

}  // namespace fastblocks
