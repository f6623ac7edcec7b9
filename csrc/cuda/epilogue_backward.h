// Host side of the shared epilogue backward on CUDA: its workspace, then the programs, on the current stream.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/epilogue_args.h"
#include "common/epilogue_programs.h"
#include "cuda/launchers.h"

namespace fastblocks {

inline void run_epilogue_backward(const EpilogueBackwardArgs& args, const at::Tensor& like) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(like.get_device()).stream();
  const int64_t elems = epilogue_programs::epilogue_backward_workspace(args);
  at::Tensor workspace;
  if (elems > 0) workspace = at::empty({elems}, like.options().dtype(accumulation_dtype(like.scalar_type())));
  cuda::launch_epilogue_backward(args, elems > 0 ? workspace.mutable_data_ptr() : nullptr, stream);
}

}  // namespace fastblocks
