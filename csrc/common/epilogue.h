// The epilogue every pyfastblocks op ends with: per-channel scale and bias (a folded BatchNorm), maybe an addend,
// then an activation from the table in common/activation.h; and the accumulation type the kernels compute in.
#pragma once

#include <c10/macros/Macros.h>

#include "common/activation.h"

namespace fastblocks {

// act(v * scale + bias + addend): the whole fused tail of a block (Act: a functor of common/activation.h).
template <typename Act, typename V>
C10_HOST_DEVICE inline V epilogue(V v, V scale, V bias, V addend, V slope) {
  return Act::value(v * scale + bias + addend, slope);
}

template <typename Act, typename V>
C10_HOST_DEVICE inline V epilogue(V v, V scale, V bias, V slope) {
  return Act::value(v * scale + bias, slope);
}

// The input ReLU of the depthwise prologue (Xception's pre-activation), NaN propagating like torch.relu.
template <typename V>
C10_HOST_DEVICE inline V relu(V v) {
  return ReLUAct::value(v, v);
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
