// CUDA backward of every epilogue op (fastblocks::add_act_backward, fastblocks::branch_concat_backward, and the
// activation masks of depthwise_conv2d): the programs of common/epilogue_programs.h (elementwise, or the fixed-order
// reducing ones and their finish), launched by cuda/program.cuh. The CPU emulator runs the same programs in the tests.
#include "common/epilogue_programs.h"
#include "cuda/launchers.h"
#include "cuda/program.cuh"

namespace fastblocks::cuda {

void launch_epilogue_backward(const EpilogueBackwardArgs& a, void* workspace, cudaStream_t stream) {
  epilogue_programs::with_epilogue_backward_programs(a, workspace,
                                                     [&](const auto& p) { launch_program(p, stream); });
}

}  // namespace fastblocks::cuda
