// CUDA kernel of fastblocks::batchnorm_fold / batchnorm_fold_conv: the program of common/batchnorm_fold.h (one
// thread per element of fold_element; the CPU impl runs the same code over every element, and the emulator runs the
// program itself), launched by cuda/program.cuh.
#include "common/batchnorm_fold.h"
#include "cuda/launchers.h"
#include "cuda/program.cuh"

namespace fastblocks::cuda {

void launch_batchnorm_fold(const BatchNormFoldArgs& args, cudaStream_t stream) {
  with_batchnorm_fold_program(args, [&](const auto& p) { launch_program(p, stream); });
}

}  // namespace fastblocks::cuda
