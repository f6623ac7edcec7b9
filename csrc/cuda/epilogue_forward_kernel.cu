// CUDA forwards of fastblocks::add_act and fastblocks::branch_concat: the programs of common/epilogue_programs.h
// (the CPU emulator runs the same programs in the tests), launched by cuda/program.cuh.
#include "common/epilogue_programs.h"
#include "cuda/launchers.h"
#include "cuda/program.cuh"

namespace fastblocks::cuda {

void launch_add_act_forward(const AddActForwardArgs& a, cudaStream_t stream) {
  epilogue_programs::with_add_act_forward_program(a, [&](const auto& p) { launch_program(p, stream); });
}

void launch_branch_concat_forward(const BranchConcatForwardArgs& a, cudaStream_t stream) {
  epilogue_programs::with_branch_concat_forward_program(a, [&](const auto& p) { launch_program(p, stream); });
}

}  // namespace fastblocks::cuda
