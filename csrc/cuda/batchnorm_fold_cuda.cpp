// CUDA impl of fastblocks::batchnorm_fold and fastblocks::batchnorm_fold_conv (schemas in csrc/fastblocks.cpp):
// the shared host plan, then one launch (batchnorm_fold_kernel.cu) on the current stream under a device guard.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/batchnorm_fold_host.h"
#include "common/checks.h"
#include "cuda/launchers.h"

namespace fastblocks {
namespace {

void launch(const BatchNormFoldPlan& plan, const at::Tensor& ref) {
  if (fold_elements(plan.args) == 0) return;
  cuda::launch_batchnorm_fold(plan.args, c10::cuda::getCurrentCUDAStream(ref.get_device()).stream());
}

std::tuple<at::Tensor, at::Tensor> batchnorm_fold_cuda(const at::Tensor& mean, const at::Tensor& var,
                                                       const std::optional<at::Tensor>& weight,
                                                       const std::optional<at::Tensor>& bias, double eps,
                                                       at::ScalarType dtype) {
  check_defined(mean, "batchnorm_fold", "mean");
  const c10::cuda::CUDAGuard guard(mean.device());
  auto plan = plan_batchnorm_fold(mean, var, weight, bias, eps, dtype);
  launch(plan, mean);
  return {plan.first, plan.second};
}

std::tuple<at::Tensor, at::Tensor> batchnorm_fold_conv_cuda(const at::Tensor& conv_weight,
                                                            const std::optional<at::Tensor>& conv_bias,
                                                            const at::Tensor& mean, const at::Tensor& var,
                                                            const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& bias, double eps,
                                                            at::ScalarType dtype) {
  check_defined(conv_weight, "batchnorm_fold_conv", "conv_weight");
  const c10::cuda::CUDAGuard guard(conv_weight.device());
  auto plan = plan_batchnorm_fold_conv(conv_weight, conv_bias, mean, var, weight, bias, eps, dtype);
  launch(plan, conv_weight);
  return {plan.first, plan.second};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks, CUDA, m) {
  m.impl("batchnorm_fold", &batchnorm_fold_cuda);
  m.impl("batchnorm_fold_conv", &batchnorm_fold_conv_cuda);
}

}  // namespace fastblocks
