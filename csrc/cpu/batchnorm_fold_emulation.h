// A test hook: the CUDA launch of fastblocks::batchnorm_fold / batchnorm_fold_conv (cuda/batchnorm_fold_kernel.cu)
// run on the CPU, block by block and thread by thread (each thread's grid-stride loop over fold_element of
// common/batchnorm_fold.h), outputs NaN-filled first. Exposed as pyfastblocks._C._emulate_batchnorm_fold;
// tests/test_batchnorm_fold.py compares it with the CPU impl. conv_weight None: batchnorm_fold, else
// batchnorm_fold_conv.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fastblocks {

std::tuple<at::Tensor, at::Tensor> emulate_batchnorm_fold(const std::optional<at::Tensor>& conv_weight,
                                                          const std::optional<at::Tensor>& conv_bias,
                                                          const at::Tensor& mean, const at::Tensor& var,
                                                          const std::optional<at::Tensor>& weight,
                                                          const std::optional<at::Tensor>& bias, double eps,
                                                          at::ScalarType dtype);

}  // namespace fastblocks
