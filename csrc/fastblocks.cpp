// The fastblocks op library: every schema in one place (impls are registered beside their kernels in cpu/
// and cuda/; fake impls and autograd in pyfastblocks/ops.py), and the Python module pyfastblocks._C.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/batchnorm_fold_emulation.h"
#include "cpu/depthwise_backend.h"
#include "cpu/depthwise_tiled_emulation.h"
#include "cpu/kernels.h"
#include "generated/build_config.h"

#ifdef PYFASTBLOCKS_WITH_CUDA
#include "cuda/launchers.h"
#endif

TORCH_LIBRARY(fastblocks, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // relu(x * scale[c] + bias[c] + residual), channel = dim 1; relu=False leaves out the activation.
  m.def("add_relu(Tensor x, Tensor residual, Tensor? scale=None, Tensor? bias=None, bool relu=True) -> Tensor",
        tags);
  // From the forward's output (its sign is the ReLU mask). grad_x is empty ([0]) when scale is None (it then
  // equals grad_residual). With compute_param_grads, grad_bias = sum(g) per channel and, when x is given (it
  // needs scale), grad_scale = sum(g * x); both [C] in the accumulation dtype (float64 for float64 data, else
  // float32), else empty.
  m.def(
      "add_relu_backward(Tensor grad_out, Tensor out, Tensor? x, Tensor? scale, bool relu, bool compute_param_grads)"
      " -> (Tensor grad_x, Tensor grad_residual, Tensor grad_scale, Tensor grad_bias)",
      tags);
  // act(cat(inputs, 1) * scale[c] + bias[c]) in one pass; scale/bias run over the output channels.
  m.def("branch_concat(Tensor[] inputs, Tensor? scale=None, Tensor? bias=None, bool relu=True) -> Tensor", tags);
  // One gradient per branch (channels[i] channels each, in out's memory order). With compute_param_grads,
  // grad_bias = sum(g) per channel and, when the inputs are given, grad_scale = sum(g * cat(inputs)); both [C] in
  // the accumulation dtype, else empty.
  m.def(
      "branch_concat_backward(Tensor grad_out, Tensor out, SymInt[] channels, Tensor[] inputs, Tensor? scale, bool relu,"
      " bool compute_param_grads) -> (Tensor[] grad_inputs, Tensor grad_scale, Tensor grad_bias)",
      tags);
  // F.conv2d(relu(x) if input_relu else x, weight, bias, stride, padding, dilation, groups=C), then the
  // activation ("none", "relu", "relu6"); weight [C * m, 1, kh, kw].
  m.def(
      "depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation,"
      " str activation=\"none\", bool input_relu=False) -> Tensor",
      tags);
  // Gradients of x, weight (weight's dtype) and bias (accumulation dtype); each [0] unless output_mask asks.
  m.def(
      "depthwise_conv2d_backward(Tensor grad_out, Tensor out, Tensor x, Tensor weight, int[2] stride,"
      " int[2] padding, int[2] dilation, str activation, bool input_relu, bool[3] output_mask)"
      " -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)",
      tags);
  // depthwise_conv2d(x, depthwise_weight, depthwise_bias, ..., depthwise_activation, input_relu), then the 1x1
  // pointwise conv (+ pointwise_bias) and the activation. Composite (csrc/separable_conv2d.cpp).
  m.def(
      "separable_conv2d(Tensor x, Tensor depthwise_weight, Tensor? depthwise_bias, Tensor pointwise_weight,"
      " Tensor? pointwise_bias, int[2] stride, int[2] padding, int[2] dilation, str depthwise_activation=\"none\","
      " str activation=\"none\", bool input_relu=False) -> Tensor",
      tags);
  // A BatchNorm's statistics (running or batch) folded into per-channel (scale, shift), all [C] in dtype (the
  // accumulation dtype: float32 or float64): scale = weight / sqrt(var + eps), shift = bias - mean * scale
  // (weight / bias None: 1 / 0). One launch on CUDA (csrc/common/batchnorm_fold.h).
  m.def(
      "batchnorm_fold(Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps, ScalarType dtype)"
      " -> (Tensor scale, Tensor shift)",
      tags);
  // The same folded into the convolution before the BatchNorm: weight = conv_weight * scale[o] (conv_weight's
  // dtype and strides, o = dim 0), bias = shift + conv_bias * scale ([C] in dtype). One launch on CUDA.
  m.def(
      "batchnorm_fold_conv(Tensor conv_weight, Tensor? conv_bias, Tensor mean, Tensor var, Tensor? weight,"
      " Tensor? bias, float eps, ScalarType dtype) -> (Tensor weight, Tensor bias)",
      tags);
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = PYFASTBLOCKS_BUILD_VERSION;
  info["torch_version"] = PYFASTBLOCKS_BUILD_TORCH_VERSION;
#ifdef PYFASTBLOCKS_WITH_CUDA
  info["cuda_compiled"] = true;
  info["cuda_version"] = PYFASTBLOCKS_BUILD_TORCH_CUDA_VERSION;
  info["cuda_archs_requested"] = PYFASTBLOCKS_BUILD_CUDA_ARCHS;
  info["cuda_archs"] = fastblocks::cuda::compiled_cuda_archs();
#else
  info["cuda_compiled"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs_requested"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
  info["cpu_kernels"] = fastblocks::cpu::cpu_kernel_capability();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyfastblocks kernels (ops are registered in torch.ops.fastblocks)";
  m.def("build_info", &build_info, "How this extension was built, and which CPU kernels it runs");
  m.def("_set_cpu_depthwise_backend", &fastblocks::set_cpu_depthwise_backend);
  m.def("_cpu_depthwise_backend", &fastblocks::cpu_depthwise_backend);
  // Test hooks: the CUDA backend's tiled depthwise programs run on the CPU (cpu/depthwise_tiled_emulation.h).
  m.def("_emulate_tiled_depthwise_forward", &fastblocks::emulate_tiled_depthwise_forward);
  m.def("_emulate_tiled_depthwise_backward", &fastblocks::emulate_tiled_depthwise_backward);
  // Test hook: the CUDA launch of batchnorm_fold(_conv) run on the CPU (cpu/batchnorm_fold_emulation.h).
  m.def("_emulate_batchnorm_fold", &fastblocks::emulate_batchnorm_fold);
}
