// Host entry points of the CUDA kernels. Plain data in, no ATen: the .cu files stay free of heavy headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/batchnorm_fold.h"
#include "common/depthwise.h"
#include "common/epilogue_args.h"

namespace fastblocks::cuda {

// add_relu_kernel.cu
void launch_add_relu_forward(const AddReluForwardArgs& args, cudaStream_t stream);
// The backward without per-channel sums (grad_residual, grad_x in the output's layout).
void launch_add_relu_backward_elementwise(const EpilogueBackwardArgs& args, cudaStream_t stream);

// branch_concat_kernel.cu
void launch_branch_concat_forward(const BranchConcatForwardArgs& args, cudaStream_t stream);
// The backward without per-channel sums (one gradient tensor per branch).
void launch_branch_concat_backward_elementwise(const EpilogueBackwardArgs& args, cudaStream_t stream);

// epilogue_backward_kernel.cu: the backward with per-channel sums, for every epilogue.
// Partial sums per channel its workspace holds (2 * partials * channels values of the accumulation type);
// 0 when args.reduces() is false.
int64_t epilogue_backward_partials(const EpilogueBackwardArgs& args, int device);
void launch_epilogue_backward_reduce(const EpilogueBackwardArgs& args, void* workspace, int64_t partials, int device,
                                     cudaStream_t stream);

// depthwise_kernel.cu
void launch_depthwise_forward(const DepthwiseForwardArgs& args, cudaStream_t stream);
void launch_depthwise_backward(const DepthwiseBackwardArgs& args, cudaStream_t stream);

// batchnorm_fold_kernel.cu: fastblocks::batchnorm_fold / batchnorm_fold_conv, one launch.
void launch_batchnorm_fold(const BatchNormFoldArgs& args, cudaStream_t stream);

// build_info.cu: the __CUDA_ARCH_LIST__ the device code was compiled for, e.g. "800,860,900".
const char* compiled_cuda_archs();

}  // namespace fastblocks::cuda
