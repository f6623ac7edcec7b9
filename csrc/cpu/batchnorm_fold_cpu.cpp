// CPU impl of fastblocks::batchnorm_fold and fastblocks::batchnorm_fold_conv (schemas in csrc/fastblocks.cpp):
// common/batchnorm_fold.h's per-channel math, once per channel (elementwise: the result does not depend on the
// thread count).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "common/batchnorm_fold_host.h"
#include "cpu/program_emulator.h"
#include "cpu/batchnorm_fold_emulation.h"

namespace fastblocks {
namespace {

// Channel by channel (each channel's fold once, then its weights): the same values as fold_element, which the
// CUDA kernel runs per element.
template <typename acc_t, typename weight_t>
void run_fold(const BatchNormFoldArgs& a) {
  const int64_t per = a.folded_weight != nullptr ? a.per_channel : 0;
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(per, 1));
  at::parallel_for(0, a.channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const FoldedChannel<acc_t> f = fold_channel<acc_t>(a, c);
      if (a.scale != nullptr) static_cast<acc_t*>(a.scale)[c] = f.scale;
      static_cast<acc_t*>(a.shift)[c] = f.shift;
      if (per > 0) {
        const weight_t* w = static_cast<const weight_t*>(a.conv_weight) + c * per;
        weight_t* out = static_cast<weight_t*>(a.folded_weight) + c * per;
        for (int64_t k = 0; k < per; ++k) out[k] = static_cast<weight_t>(static_cast<acc_t>(w[k]) * f.scale);
      }
    }
  });
}

template <typename acc_t>
void run_fold_for_weight(const BatchNormFoldArgs& a) {
  if (a.folded_weight == nullptr) return run_fold<acc_t, acc_t>(a);
  switch (a.weight_dtype) {
    case at::kFloat: return run_fold<acc_t, float>(a);
    case at::kDouble: return run_fold<acc_t, double>(a);
    case at::kHalf: return run_fold<acc_t, c10::Half>(a);
    case at::kBFloat16: return run_fold<acc_t, c10::BFloat16>(a);
    default: TORCH_CHECK(false, "fastblocks::batchnorm_fold_conv: unsupported weight dtype ", a.weight_dtype);
  }
}

void run(const BatchNormFoldPlan& plan) {
  if (fold_elements(plan.args) == 0) return;
  if (plan.args.acc == at::kDouble) return run_fold_for_weight<double>(plan.args);
  run_fold_for_weight<float>(plan.args);
}

std::tuple<at::Tensor, at::Tensor> batchnorm_fold_cpu(const at::Tensor& mean, const at::Tensor& var,
                                                      const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias, double eps,
                                                      at::ScalarType dtype) {
  auto plan = plan_batchnorm_fold(mean, var, weight, bias, eps, dtype);
  run(plan);
  return {plan.first, plan.second};
}

std::tuple<at::Tensor, at::Tensor> batchnorm_fold_conv_cpu(const at::Tensor& conv_weight,
                                                           const std::optional<at::Tensor>& conv_bias,
                                                           const at::Tensor& mean, const at::Tensor& var,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias, double eps,
                                                           at::ScalarType dtype) {
  auto plan = plan_batchnorm_fold_conv(conv_weight, conv_bias, mean, var, weight, bias, eps, dtype);
  run(plan);
  return {plan.first, plan.second};
}

void emulate(BatchNormFoldPlan& plan) {
  for (auto* t : {&plan.first, &plan.second}) {
    if (t->numel() > 0) t->fill_(std::numeric_limits<double>::quiet_NaN());
  }
  if (fold_elements(plan.args) == 0) return;
  std::vector<std::string> names;
  with_batchnorm_fold_program(plan.args, [&](const auto& p) { emulate_program(p, names); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> emulate_batchnorm_fold(const std::optional<at::Tensor>& conv_weight,
                                                          const std::optional<at::Tensor>& conv_bias,
                                                          const at::Tensor& mean, const at::Tensor& var,
                                                          const std::optional<at::Tensor>& weight,
                                                          const std::optional<at::Tensor>& bias, double eps,
                                                          at::ScalarType dtype) {
  TORCH_CHECK(mean.device().is_cpu(), "_emulate_batchnorm_fold: the emulator runs on CPU tensors");
  auto plan = conv_weight.has_value() && conv_weight->defined()
                  ? plan_batchnorm_fold_conv(*conv_weight, conv_bias, mean, var, weight, bias, eps, dtype)
                  : plan_batchnorm_fold(mean, var, weight, bias, eps, dtype);
  emulate(plan);
  return {plan.first, plan.second};
}

TORCH_LIBRARY_IMPL(fastblocks, CPU, m) {
  m.impl("batchnorm_fold", &batchnorm_fold_cpu);
  m.impl("batchnorm_fold_conv", &batchnorm_fold_conv_cpu);
}

}  // namespace fastblocks
