// Host side of the shared epilogue backward on CUDA: the elementwise kernel of the op when no per-channel sums
// are wanted, else the reducing kernels with their workspace.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/epilogue_args.h"
#include "cuda/launchers.h"

namespace fastblocks {

inline void run_epilogue_backward(const EpilogueBackwardArgs& args, const at::Tensor& out,
                                  void (*elementwise)(const EpilogueBackwardArgs&, cudaStream_t)) {
  const int device = out.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int64_t partials = cuda::epilogue_backward_partials(args, device);
  if (partials == 0) {
    elementwise(args, stream);
    return;
  }
  const at::Tensor workspace =
      at::empty({2 * partials * args.view.channels}, out.options().dtype(accumulation_dtype(out.scalar_type())));
  cuda::launch_epilogue_backward_reduce(args, workspace.mutable_data_ptr(), partials, device, stream);
}

}  // namespace fastblocks
