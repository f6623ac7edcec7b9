#include "common/batchnorm_fold_host.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <string>

#include "common/checks.h"

namespace fastblocks {
namespace {

// A per-channel input: [channels], floating, on ref's device; returned contiguous in the accumulation dtype.
at::Tensor per_channel(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                       int64_t channels, at::ScalarType acc, const char* op) {
  check_defined(t, op, arg);
  FASTBLOCKS_CHECK_ARG(t.dim() == 1 && t.size(0) == channels, op, arg,
                       "must be a 1-D tensor of one value per channel (shape [", std::to_string(channels),
                       "]), got shape ", shape_string(t.sizes()));
  check_floating_tensor(t, op, arg);
  check_same_device(t, arg, ref, ref_arg, op);
  return t.to(acc).contiguous();
}

at::Tensor optional_per_channel(const std::optional<at::Tensor>& t, const char* arg, const at::Tensor& ref,
                                const char* ref_arg, int64_t channels, at::ScalarType acc, const char* op) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return per_channel(*t, arg, ref, ref_arg, channels, acc, op);
}

void check_acc_dtype(at::ScalarType dtype, const char* op) {
  FASTBLOCKS_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble, op, "dtype",
                       "must be float32 or float64 (the accumulation dtype), got ", dtype);
}

void fill_stats(BatchNormFoldPlan& plan, const at::Tensor& mean, const at::Tensor& var,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
                at::ScalarType dtype, int64_t channels, const at::Tensor& ref, const char* ref_arg, const char* op) {
  plan.mean = per_channel(mean, "mean", ref, ref_arg, channels, dtype, op);
  plan.var = per_channel(var, "var", ref, ref_arg, channels, dtype, op);
  plan.weight = optional_per_channel(weight, "weight", ref, ref_arg, channels, dtype, op);
  plan.bias = optional_per_channel(bias, "bias", ref, ref_arg, channels, dtype, op);
  auto& a = plan.args;
  a.mean = plan.mean.const_data_ptr();
  a.var = plan.var.const_data_ptr();
  a.weight = plan.weight.defined() ? plan.weight.const_data_ptr() : nullptr;
  a.bias = plan.bias.defined() ? plan.bias.const_data_ptr() : nullptr;
  a.eps = eps;
  a.channels = channels;
  a.acc = dtype;
}

}  // namespace

BatchNormFoldPlan plan_batchnorm_fold(const at::Tensor& mean, const at::Tensor& var,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      double eps, at::ScalarType dtype) {
  constexpr const char* op = "batchnorm_fold";
  check_acc_dtype(dtype, op);
  check_defined(mean, op, "mean");
  FASTBLOCKS_CHECK_ARG(mean.dim() == 1, op, "mean", "must be a 1-D tensor of one value per channel, got shape ",
                       shape_string(mean.sizes()));
  BatchNormFoldPlan plan;
  fill_stats(plan, mean, var, weight, bias, eps, dtype, mean.size(0), mean, "mean", op);
  plan.first = at::empty({mean.size(0)}, plan.mean.options());
  plan.second = at::empty({mean.size(0)}, plan.mean.options());
  plan.args.scale = plan.first.mutable_data_ptr();
  plan.args.shift = plan.second.mutable_data_ptr();
  return plan;
}

BatchNormFoldPlan plan_batchnorm_fold_conv(const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
                                           const at::Tensor& mean, const at::Tensor& var,
                                           const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias, double eps, at::ScalarType dtype) {
  constexpr const char* op = "batchnorm_fold_conv";
  check_acc_dtype(dtype, op);
  check_defined(conv_weight, op, "conv_weight");
  FASTBLOCKS_CHECK_ARG(conv_weight.dim() >= 1, op, "conv_weight",
                       "must have the output channels in dim 0, got a 0-d tensor");
  check_floating_tensor(conv_weight, op, "conv_weight");
  const int64_t channels = conv_weight.size(0);
  BatchNormFoldPlan plan;
  fill_stats(plan, mean, var, weight, bias, eps, dtype, channels, conv_weight, "conv_weight", op);
  plan.conv_bias = optional_per_channel(conv_bias, "conv_bias", conv_weight, "conv_weight", channels, dtype, op);
  // The weight as stored when it is contiguous or channels_last (output channels outermost, dense): the folded
  // weight keeps its strides; else a contiguous copy.
  const int64_t per = channels > 0 ? conv_weight.numel() / channels : 0;
  const bool as_stored = conv_weight.is_contiguous() ||
                         (conv_weight.dim() == 4 && conv_weight.is_contiguous(at::MemoryFormat::ChannelsLast));
  plan.conv_weight = as_stored ? conv_weight : conv_weight.contiguous();
  plan.first = at::empty_like(plan.conv_weight);
  plan.second = at::empty({channels}, plan.mean.options());
  auto& a = plan.args;
  a.conv_weight = plan.conv_weight.const_data_ptr();
  a.conv_bias = plan.conv_bias.defined() ? plan.conv_bias.const_data_ptr() : nullptr;
  a.folded_weight = plan.first.mutable_data_ptr();
  a.per_channel = per;
  a.weight_dtype = conv_weight.scalar_type();
  a.shift = plan.second.mutable_data_ptr();
  return plan;
}

}  // namespace fastblocks
