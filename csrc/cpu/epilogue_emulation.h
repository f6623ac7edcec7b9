// Test hooks: the CUDA backend's epilogue programs (common/epilogue_programs.h) run on the CPU by the emulator
// (cpu/program_emulator.h), with the ops' own host plans. Exposed as pyfastblocks._C._emulate_*; each returns the
// op's outputs and the names of the programs that ran (tests/test_epilogue_programs.py compares them with float64
// references, and on a machine with CUDA with the GPU's results).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastblocks {

std::tuple<at::Tensor, std::vector<std::string>> emulate_add_act(const at::Tensor& x, const at::Tensor& residual,
                                                                 const std::optional<at::Tensor>& scale,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 const std::string& activation, double negative_slope);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<std::string>> emulate_add_act_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, const std::string& activation,
    double negative_slope, bool compute_param_grads);

std::tuple<at::Tensor, std::vector<std::string>> emulate_branch_concat(const std::vector<at::Tensor>& inputs,
                                                                       const std::optional<at::Tensor>& scale,
                                                                       const std::optional<at::Tensor>& bias,
                                                                       const std::string& activation,
                                                                       double negative_slope);

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, std::vector<std::string>> emulate_branch_concat_backward(
    const at::Tensor& grad_out, const std::vector<int64_t>& channels, const std::vector<at::Tensor>& inputs,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, const std::string& activation,
    double negative_slope, bool compute_param_grads, bool grad_at_preactivation);

}  // namespace fastblocks
