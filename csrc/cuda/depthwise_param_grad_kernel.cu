// CUDA weight and bias gradients of fastblocks::depthwise_conv2d: the tiled programs of common/depthwise_tiled.h
// (chunked, fixed-order, deterministic sums), launched by cuda/program.cuh, and for the shapes they do not take a
// generic kernel of one block per (output channel, tap) (deterministic block sums). The input gradient is in
// depthwise_input_grad_kernel.cu.
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

// Block (oc, tap): sum over (n, oh, ow) of the tap's term; tap == taps() is the bias.
template <typename T, bool INPUT_RELU>
__global__ void __launch_bounds__(kThreads)
    depthwise_param_grad_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                acc_t<T>* __restrict__ grad_weight, acc_t<T>* __restrict__ grad_bias,
                                int64_t first_tap, int64_t last_tap, DepthwiseGeometry g,
                                ActivationSpec act) {
  using acc = acc_t<T>;
  __shared__ acc scratch[32];
  const int64_t positions = g.batch * g.out_h * g.out_w;
  // Grid-stride over channels and taps (gridDim.y is at most 65535).
  for (int64_t oc = blockIdx.x; oc < g.out_channels(); oc += gridDim.x) {
    for (int64_t tap = first_tap + blockIdx.y; tap <= last_tap; tap += gridDim.y) {
      acc sum = 0;
      for (int64_t k = threadIdx.x; k < positions; k += blockDim.x) {
        const int64_t ow = k % g.out_w;
        const int64_t rest = k / g.out_w;
        sum += depthwise_param_grad_term<INPUT_RELU>(act, gy, y, x, g, rest / g.out_h, oc, tap, rest % g.out_h, ow);
      }
      sum = block_sum(sum, scratch);
      if (threadIdx.x == 0) {
        if (tap == g.taps()) {
          grad_bias[oc] = sum;
        } else {
          grad_weight[oc * g.taps() + tap] = sum;
        }
      }
    }
  }
}

}  // namespace

void launch_depthwise_param_grad(const DepthwiseBackwardArgs& a, cudaStream_t stream) {
  if (a.grad_weight == nullptr && a.grad_bias == nullptr) return;
  const auto launch = [&](const auto& program) { launch_program(program, stream); };
  if (tiled::with_param_grad_programs(a, launch)) return;
  dispatch_floating(a.dtype, "fastblocks::depthwise_conv2d_backward", [&](auto zero) {
    using T = decltype(zero);
    using acc = acc_t<T>;
    FASTBLOCKS_BOOL_SWITCH(a.input_relu, INPUT_RELU, [&] {
      const DepthwiseGeometry& g = a.geo;
      const int64_t first_tap = a.grad_weight != nullptr ? 0 : g.taps();
      const int64_t last_tap = a.grad_bias != nullptr ? g.taps() : g.taps() - 1;
      const dim3 grid(static_cast<unsigned>(std::min<int64_t>(g.out_channels(), int64_t(1) << 30)),
                      static_cast<unsigned>(std::min<int64_t>(last_tap - first_tap + 1, 65535)));
      depthwise_param_grad_kernel<T, INPUT_RELU><<<grid, kThreads, 0, stream>>>(
          static_cast<const T*>(a.grad_out), static_cast<const T*>(a.out), static_cast<const T*>(a.x),
          static_cast<acc*>(a.grad_weight), static_cast<acc*>(a.grad_bias), first_tap, last_tap, g, a.activation);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace fastblocks::cuda
