// A test hook: the CUDA backend's tiled depthwise programs (common/depthwise_tiled.h) run on the CPU, block by
// block and phase by phase, thread by thread, with NaN-filled and bounds-checked shared memory. Exposed as
// pyfastblocks._C._emulate_tiled_depthwise_{forward,backward}; tests/test_depthwise_tiled.py compares them with
// float64 references. Each returns the programs it ran ("generic" where none applies: that output is undefined).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastblocks {

std::tuple<at::Tensor, std::vector<std::string>> emulate_tiled_depthwise_forward(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, const std::string& activation, bool input_relu,
    double negative_slope);

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<std::string>> emulate_tiled_depthwise_backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
    const std::string& activation, bool input_relu, std::array<bool, 3> output_mask, double negative_slope);

}  // namespace fastblocks
