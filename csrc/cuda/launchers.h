// Host entry points of the CUDA kernels. Plain data in, no ATen: the .cu files stay free of heavy headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/batchnorm_fold.h"
#include "common/depthwise.h"
#include "common/epilogue_args.h"

namespace fastblocks::cuda {

// epilogue_forward_kernel.cu
void launch_add_act_forward(const AddActForwardArgs& args, cudaStream_t stream);
void launch_branch_concat_forward(const BranchConcatForwardArgs& args, cudaStream_t stream);

// epilogue_backward_kernel.cu: the backward of every epilogue, elementwise or with per-channel sums. `workspace`
// holds epilogue_programs::epilogue_backward_workspace(args) values of the accumulation type.
void launch_epilogue_backward(const EpilogueBackwardArgs& args, void* workspace, cudaStream_t stream);

// depthwise_forward_kernel.cu; the backward's halves (each returns at once when its gradients are not asked for):
// depthwise_input_grad_kernel.cu and depthwise_param_grad_kernel.cu.
void launch_depthwise_forward(const DepthwiseForwardArgs& args, cudaStream_t stream);
void launch_depthwise_input_grad(const DepthwiseBackwardArgs& args, cudaStream_t stream);
void launch_depthwise_param_grad(const DepthwiseBackwardArgs& args, cudaStream_t stream);

// batchnorm_fold_kernel.cu: fastblocks::batchnorm_fold / batchnorm_fold_conv, one launch.
void launch_batchnorm_fold(const BatchNormFoldArgs& args, cudaStream_t stream);

// build_info.cu: the __CUDA_ARCH_LIST__ the device code was compiled for, e.g. "800,860,900".
const char* compiled_cuda_archs();

}  // namespace fastblocks::cuda
