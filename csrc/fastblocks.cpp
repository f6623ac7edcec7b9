// The fastblocks op library: every schema in one place (impls are registered beside their kernels in cpu/
// and cuda/; fake impls and autograd in pyfastblocks/ops.py), and the Python module pyfastblocks._C.
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's type casters (not torch/extension.h: it pulls in the
                                      // whole C++ frontend, a large share of this file's compile time)
#include <torch/library.h>

#include "cpu/batchnorm_fold_emulation.h"
#include "cpu/depthwise_backend.h"
#include "cpu/depthwise_tiled_emulation.h"
#include "cpu/epilogue_emulation.h"
#include "cpu/kernels.h"
#include "generated/build_config.h"

#ifdef PYFASTBLOCKS_WITH_CUDA
#include "cuda/launchers.h"
#endif

TORCH_LIBRARY(fastblocks, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // Every epilogue takes `activation` (a name of the table in common/activation.h: "none", "relu", "relu6",
  // "leaky_relu", "silu", "hardswish", "gelu", "gelu_tanh") and `negative_slope` (leaky_relu's; ignored by the others).
  // The epilogue backward ops recompute the pre-activation z from the forward's inputs (their outputs are never saved:
  // a model may change them in place), so they take the inputs and the same scale/bias/activation.

  // act(x * scale[c] + bias[c] + residual), channel = dim 1.
  m.def(
      "add_act(Tensor x, Tensor residual, Tensor? scale=None, Tensor? bias=None, str activation=\"relu\","
      " float negative_slope=0.01) -> Tensor",
      tags);
  // g = act'(z) * grad_out. grad_residual = g; grad_x = g * scale ([0] when scale is None: it equals grad_residual).
  // x is required unless activation is "none"; residual None: z = x * scale + bias (the one-input epilogue, g being
  // its gradient at the pre-activation). With compute_param_grads: grad_bias = sum(g) per
  // channel and, when x and scale are given, grad_scale = sum(g * x); both [C] in the accumulation dtype (float64 for
  // float64 data, else float32), else [0].
  m.def(
      "add_act_backward(Tensor grad_out, Tensor? x, Tensor? residual, Tensor? scale, Tensor? bias, str activation,"
      " float negative_slope, bool compute_param_grads)"
      " -> (Tensor grad_x, Tensor grad_residual, Tensor grad_scale, Tensor grad_bias)",
      tags);
  // act(cat(inputs, 1) * scale[c] + bias[c]) in one pass; scale/bias run over the output channels. One input: the
  // conv -> BN -> act tail (pyfastblocks.ops.affine_act).
  m.def(
      "branch_concat(Tensor[] inputs, Tensor? scale=None, Tensor? bias=None, str activation=\"relu\","
      " float negative_slope=0.01) -> Tensor",
      tags);
  // One gradient per branch (channels[i] channels each, in the inputs' memory order): g * scale, or with
  // grad_at_preactivation g itself (the gradient at the pre-activation, which the training path's BatchNorm tails
  // hand to ATen's batch_norm backward). inputs may be empty only with activation "none". With
  // compute_param_grads, grad_bias = sum(g) per channel and, when inputs and scale are given, grad_scale =
  // sum(g * cat(inputs)); both [C] in the accumulation dtype, else [0].
  m.def(
      "branch_concat_backward(Tensor grad_out, SymInt[] channels, Tensor[] inputs, Tensor? scale, Tensor? bias,"
      " str activation, float negative_slope, bool compute_param_grads, bool grad_at_preactivation=False)"
      " -> (Tensor[] grad_inputs, Tensor grad_scale, Tensor grad_bias)",
      tags);
  // act(F.conv2d(relu(x) if input_relu else x, weight, bias, stride, padding, dilation, groups=C));
  // weight [C * m, 1, kh, kw].
  m.def(
      "depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation,"
      " str activation=\"none\", bool input_relu=False, float negative_slope=0.01) -> Tensor",
      tags);
  // Gradients of x, weight (weight's dtype) and bias (accumulation dtype); each [0] unless output_mask asks.
  // `out` (the forward's output) is read for activations whose gradient follows from it (ReLU-like); `bias` is read
  // to recompute the pre-activation for the others (SiLU, GELU, Hardswish, leaky_relu with a negative slope).
  m.def(
      "depthwise_conv2d_backward(Tensor grad_out, Tensor? out, Tensor x, Tensor weight, Tensor? bias, int[2] stride,"
      " int[2] padding, int[2] dilation, str activation, float negative_slope, bool input_relu, bool[3] output_mask)"
      " -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)",
      tags);
  // depthwise_conv2d(x, depthwise_weight, depthwise_bias, ..., depthwise_activation, input_relu), then the 1x1
  // pointwise conv (+ pointwise_bias) and the activation. Composite (csrc/separable_conv2d.cpp).
  m.def(
      "separable_conv2d(Tensor x, Tensor depthwise_weight, Tensor? depthwise_bias, Tensor pointwise_weight,"
      " Tensor? pointwise_bias, int[2] stride, int[2] padding, int[2] dilation, str depthwise_activation=\"none\","
      " str activation=\"none\", bool input_relu=False, float depthwise_negative_slope=0.01,"
      " float negative_slope=0.01) -> Tensor",
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
  namespace py = pybind11;
  m.def("_emulate_tiled_depthwise_forward", &fastblocks::emulate_tiled_depthwise_forward, py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("activation"), py::arg("input_relu"), py::arg("negative_slope") = 0.01);
  m.def("_emulate_tiled_depthwise_backward", &fastblocks::emulate_tiled_depthwise_backward, py::arg("grad_out"),
        py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("activation"), py::arg("input_relu"), py::arg("output_mask"), py::arg("negative_slope") = 0.01);
  // Test hooks: the CUDA backend's epilogue programs run on the CPU (cpu/epilogue_emulation.h).
  m.def("_emulate_add_act", &fastblocks::emulate_add_act);
  m.def("_emulate_add_act_backward", &fastblocks::emulate_add_act_backward);
  m.def("_emulate_branch_concat", &fastblocks::emulate_branch_concat);
  m.def("_emulate_branch_concat_backward", &fastblocks::emulate_branch_concat_backward, py::arg("grad_out"),
        py::arg("channels"), py::arg("inputs"), py::arg("scale"), py::arg("bias"), py::arg("activation"),
        py::arg("negative_slope"), py::arg("compute_param_grads"), py::arg("grad_at_preactivation") = false);
  // Test hook: the CUDA launch of batchnorm_fold(_conv) run on the CPU (cpu/batchnorm_fold_emulation.h).
  m.def("_emulate_batchnorm_fold", &fastblocks::emulate_batchnorm_fold);
}
