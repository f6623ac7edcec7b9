// CUDA kernel of fastblocks::batchnorm_fold / batchnorm_fold_conv: one thread per element of
// common/batchnorm_fold.h's fold_element (the CPU impl runs the same code over every element), grid-stride.
#include "cuda/launchers.h"

#include <algorithm>

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/batchnorm_fold.h"

namespace fastblocks::cuda {
namespace {

constexpr int kFoldThreads = 256;

template <typename acc_t, typename weight_t>
__global__ void __launch_bounds__(kFoldThreads) batchnorm_fold_kernel(BatchNormFoldArgs a, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kFoldThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kFoldThreads + threadIdx.x; i < n; i += stride) {
    fold_element<acc_t, weight_t>(a, i);
  }
}

template <typename acc_t, typename weight_t>
void launch(const BatchNormFoldArgs& a, cudaStream_t stream) {
  const int64_t n = fold_elements(a);
  const int64_t blocks = std::min<int64_t>((n + kFoldThreads - 1) / kFoldThreads, 65535);
  batchnorm_fold_kernel<acc_t, weight_t><<<static_cast<unsigned>(blocks), kFoldThreads, 0, stream>>>(a, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void launch_for_weight(const BatchNormFoldArgs& a, cudaStream_t stream) {
  if (a.folded_weight == nullptr) return launch<acc_t, acc_t>(a, stream);
  switch (a.weight_dtype) {
    case c10::ScalarType::Float: return launch<acc_t, float>(a, stream);
    case c10::ScalarType::Double: return launch<acc_t, double>(a, stream);
    case c10::ScalarType::Half: return launch<acc_t, c10::Half>(a, stream);
    case c10::ScalarType::BFloat16: return launch<acc_t, c10::BFloat16>(a, stream);
    default: TORCH_CHECK(false, "fastblocks::batchnorm_fold_conv: unsupported weight dtype ", a.weight_dtype);
  }
}

}  // namespace

void launch_batchnorm_fold(const BatchNormFoldArgs& args, cudaStream_t stream) {
  if (args.acc == c10::ScalarType::Double) return launch_for_weight<double>(args, stream);
  launch_for_weight<float>(args, stream);
}

}  // namespace fastblocks::cuda
