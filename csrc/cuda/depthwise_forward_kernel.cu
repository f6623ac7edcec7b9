// CUDA forward of fastblocks::depthwise_conv2d: the tiled programs of common/depthwise_tiled.h (float, half,
// bfloat16; the CPU emulator runs the same programs in the tests), launched by cuda/program.cuh, and the generic
// kernel for the rest (float64; NHWC with a channel multiplier; tiles that do not fit in shared memory): one thread
// per output, its value from the C10_HOST_DEVICE math of common/depthwise.h that the CPU kernels share. The backward
// is in cuda/depthwise_input_grad_kernel.cu and cuda/depthwise_param_grad_kernel.cu (translation units of their
// own: the three compile in parallel).
#include "cuda/kernel_utils.cuh"
#include "cuda/launchers.h"
#include "cuda/program.cuh"

#include <algorithm>

#include <c10/cuda/CUDAException.h>

#include "common/depthwise.h"
#include "common/depthwise_tiled.h"
#include "common/switch.h"

namespace fastblocks::cuda {
namespace {

template <typename T, bool INPUT_RELU>
__global__ void __launch_bounds__(kThreads)
    depthwise_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const acc_t<T>* __restrict__ bias,
                             T* __restrict__ out, DepthwiseGeometry g, ActivationSpec act) {
  using acc = acc_t<T>;
  const int64_t oc = g.out_channels();
  const int64_t numel = g.batch * oc * g.out_h * g.out_w;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Nchw p = unflatten(i, oc, g.out_h, g.out_w, g.channels_last);
    const acc sum = depthwise_sum<INPUT_RELU>(x, w, g, p.n, p.c, p.h, p.w);
    out[i] = static_cast<T>(activate(act, sum + (bias ? bias[p.c] : acc(0))));
  }
}

}  // namespace

void launch_depthwise_forward(const DepthwiseForwardArgs& a, cudaStream_t stream) {
  if (tiled::with_forward_program(a, [&](const auto& program) { launch_program(program, stream); })) return;
  dispatch_floating(a.dtype, "fastblocks::depthwise_conv2d", [&](auto zero) {
    using T = decltype(zero);
    FASTBLOCKS_BOOL_SWITCH(a.input_relu, INPUT_RELU, [&] {
      const DepthwiseGeometry& g = a.geo;
      depthwise_forward_kernel<T, INPUT_RELU>
          <<<grid_for(g.batch * g.out_channels() * g.out_h * g.out_w), kThreads, 0, stream>>>(
              static_cast<const T*>(a.x), static_cast<const T*>(a.weight), static_cast<const acc_t<T>*>(a.bias),
              static_cast<T*>(a.out), g, a.activation);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace fastblocks::cuda
