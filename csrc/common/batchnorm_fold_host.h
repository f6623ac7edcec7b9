// Host side of fastblocks::batchnorm_fold / batchnorm_fold_conv (shared by the CPU and CUDA impls): argument
// checks, the inputs in the accumulation dtype, the outputs allocated.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/batchnorm_fold.h"

namespace fastblocks {

struct BatchNormFoldPlan {
  at::Tensor mean, var, weight, bias, conv_weight, conv_bias;  // inputs as the kernel reads them
  at::Tensor first, second;  // outputs: (scale, shift), or (folded weight, folded bias)
  BatchNormFoldArgs args;
};

BatchNormFoldPlan plan_batchnorm_fold(const at::Tensor& mean, const at::Tensor& var,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      double eps, at::ScalarType dtype);

BatchNormFoldPlan plan_batchnorm_fold_conv(const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
                                           const at::Tensor& mean, const at::Tensor& var,
                                           const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias, double eps, at::ScalarType dtype);

}  // namespace fastblocks
