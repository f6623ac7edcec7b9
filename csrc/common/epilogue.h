// The epilogue every pyfastblocks op ends with: per-channel scale and bias (a folded BatchNorm), then an
// activation; and its gradient. Written once as templates over the value type, so the same code runs as
// float/double on the CPU and the GPU (C10_HOST_DEVICE) and as at::vec::Vectorized in the CPU vector loops
// (cpu/vec_math.h specializes ElementMath for Vectorized).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace fastblocks {

enum class Activation : int8_t { kNone = 0, kReLU = 1, kReLU6 = 2 };

// Scalar primitives. NaN propagates as in torch.relu / F.relu6 (a NaN input gives a NaN output).
template <typename V>
struct ElementMath {
  C10_HOST_DEVICE static V zero() { return V(0); }
  C10_HOST_DEVICE static V relu(V v) { return v < V(0) ? V(0) : v; }
  C10_HOST_DEVICE static V relu6(V v) { return v < V(0) ? V(0) : (v > V(6) ? V(6) : v); }
  // The gradient passes where the output is inside the activation's linear range.
  C10_HOST_DEVICE static V relu_grad(V grad, V out) { return out > V(0) ? grad : V(0); }
  C10_HOST_DEVICE static V relu6_grad(V grad, V out) { return (out > V(0) && out < V(6)) ? grad : V(0); }
};

template <Activation A, typename V>
C10_HOST_DEVICE inline V activate(V v) {
  if constexpr (A == Activation::kReLU) {
    return ElementMath<V>::relu(v);
  } else if constexpr (A == Activation::kReLU6) {
    return ElementMath<V>::relu6(v);
  } else {
    return v;
  }
}

// d(activation)/d(input) applied to `grad`, decided from the saved output alone.
template <Activation A, typename V>
C10_HOST_DEVICE inline V activation_grad(V grad, V out) {
  if constexpr (A == Activation::kReLU) {
    return ElementMath<V>::relu_grad(grad, out);
  } else if constexpr (A == Activation::kReLU6) {
    return ElementMath<V>::relu6_grad(grad, out);
  } else {
    return grad;
  }
}

// Run-time activation, for kernels where the activation is applied once per output and a template parameter
// would only multiply the instantiations.
template <typename V>
C10_HOST_DEVICE inline V activate(Activation a, V v) {
  return a == Activation::kReLU ? ElementMath<V>::relu(v) : (a == Activation::kReLU6 ? ElementMath<V>::relu6(v) : v);
}
template <typename V>
C10_HOST_DEVICE inline V activation_grad(Activation a, V grad, V out) {
  return a == Activation::kReLU ? ElementMath<V>::relu_grad(grad, out)
                                : (a == Activation::kReLU6 ? ElementMath<V>::relu6_grad(grad, out) : grad);
}

// act(v * scale + bias + addend): the whole fused tail of a block.
template <Activation A, typename V>
C10_HOST_DEVICE inline V epilogue(V v, V scale, V bias, V addend) {
  return activate<A>(v * scale + bias + addend);
}

template <Activation A, typename V>
C10_HOST_DEVICE inline V epilogue(V v, V scale, V bias) {
  return activate<A>(v * scale + bias);
}

// Accumulation type: float for float/half/bfloat16, double for double (kept for float64 tests).
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

}  // namespace fastblocks
