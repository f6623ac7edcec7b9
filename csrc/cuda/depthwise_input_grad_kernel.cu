// CUDA input gradient of fastblocks::depthwise_conv2d: the tiled input-gradient program of common/depthwise_tiled.h
// (gathered input gradients), launched by cuda/program.cuh, and for the shapes it does not take a generic kernel of
// one thread per input (a gather, no atomics). The weight/bias gradients are in depthwise_param_grad_kernel.cu: two
// files so that the two halves of the backward compile in parallel (one file took 115 s of a 4-minute build).
#include "cuda/kernel_utils.cuh"
#include "cuda/launchers.h"
#include "cuda/program.cuh"

#include <c10/cuda/CUDAException.h>

#include "common/depthwise.h"
#include "common/depthwise_tiled.h"
#include "common/switch.h"

namespace fastblocks::cuda {
namespace {

template <typename T, bool INPUT_RELU>
__global__ void __launch_bounds__(kThreads)
    depthwise_input_grad_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                const T* __restrict__ w, T* __restrict__ gi, DepthwiseGeometry g,
                                ActivationSpec act) {
  const int64_t numel = g.batch * g.channels * g.in_h * g.in_w;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Nchw p = unflatten(i, g.channels, g.in_h, g.in_w, g.channels_last);
    gi[i] = static_cast<T>(depthwise_input_grad<INPUT_RELU>(act, gy, y, x, w, g, p.n, p.c, p.h, p.w));
  }
}

}  // namespace

void launch_depthwise_input_grad(const DepthwiseBackwardArgs& a, cudaStream_t stream) {
  if (a.grad_input == nullptr) return;
  const auto launch = [&](const auto& program) { launch_program(program, stream); };
  if (tiled::with_input_grad_program(a, launch)) return;
  dispatch_floating(a.dtype, "fastblocks::depthwise_conv2d_backward", [&](auto zero) {
    using T = decltype(zero);
    FASTBLOCKS_BOOL_SWITCH(a.input_relu, INPUT_RELU, [&] {
      const DepthwiseGeometry& g = a.geo;
      depthwise_input_grad_kernel<T, INPUT_RELU><<<grid_for(g.batch * g.channels * g.in_h * g.in_w), kThreads, 0, stream>>>(
          static_cast<const T*>(a.grad_out), static_cast<const T*>(a.out), static_cast<const T*>(a.x),
          static_cast<const T*>(a.weight), static_cast<T*>(a.grad_input), g, a.activation);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace fastblocks::cuda
