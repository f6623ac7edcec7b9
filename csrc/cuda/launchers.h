// Host entry points of the CUDA kernels. Plain data in, no ATen: the .cu files stay free of heavy headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/add_relu_args.h"

namespace fastblocks::cuda {

void launch_add_relu_forward(const AddReluForwardArgs& args, cudaStream_t stream);

// Partial sums per channel the backward reduction uses; its workspace is 2 * partials * channels values of the
// accumulation type. 0 when the backward computes no per-channel sums.
int64_t add_relu_backward_partials(const AddReluBackwardArgs& args, int device);
void launch_add_relu_backward(const AddReluBackwardArgs& args, void* workspace, int64_t partials, int device,
                              cudaStream_t stream);

// The __CUDA_ARCH_LIST__ this file was compiled for, e.g. "900".
const char* compiled_cuda_archs();

}  // namespace fastblocks::cuda
