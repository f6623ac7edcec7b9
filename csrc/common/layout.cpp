#include "common/layout.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace fastblocks {

ChannelOrder preferred_channel_order(const at::Tensor& x) {
  if (x.dim() < 3 || x.size(1) <= 1) {
    return ChannelOrder::kFirst;
  }
  bool spatial = false;  // some spatial dim has size > 1
  for (int64_t d = 2; d < x.dim(); ++d) {
    if (x.size(d) > 1) {
      spatial = true;
      if (x.stride(1) >= x.stride(d)) return ChannelOrder::kFirst;
    }
  }
  if (!spatial) {
    // Every spatial dim has size 1: only the strides of those size-1 dims tell the orders apart. As torch's
    // suggest_memory_format (what F.conv2d follows): channels-last only when dim 1 has a smaller stride than each
    // of them, so a plain contiguous [N, C, 1, 1] (strides (C, 1, 1, 1)) stays NCHW and one made channels_last
    // (strides (C, 1, C, C)) stays channels-last.
    for (int64_t d = 2; d < x.dim(); ++d) {
      if (x.stride(1) >= x.stride(d)) return ChannelOrder::kFirst;
    }
  }
  return ChannelOrder::kLast;
}

namespace {
// Dims from innermost to outermost for an order.
std::vector<int64_t> dims_inner_to_outer(int64_t rank, ChannelOrder order) {
  std::vector<int64_t> dims;
  dims.reserve(rank);
  if (order == ChannelOrder::kLast && rank >= 3) {
    dims.push_back(1);
    for (int64_t d = rank - 1; d >= 2; --d) dims.push_back(d);
    dims.push_back(0);
  } else {
    for (int64_t d = rank - 1; d >= 0; --d) dims.push_back(d);
  }
  return dims;
}
}  // namespace

bool is_dense_in_order(const at::Tensor& t, ChannelOrder order) {
  if (t.numel() == 0) {
    return true;
  }
  int64_t expected = 1;
  for (int64_t d : dims_inner_to_outer(t.dim(), order)) {
    if (t.size(d) == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

at::Tensor empty_in_order(at::IntArrayRef sizes, const at::TensorOptions& options, ChannelOrder order) {
  const int64_t rank = static_cast<int64_t>(sizes.size());
  if (order == ChannelOrder::kFirst || rank < 3) {
    return at::empty(sizes, options);
  }
  // Allocate [N, spatial..., C] and view it as [N, C, spatial...].
  std::vector<int64_t> stored{sizes[0]};
  for (int64_t d = 2; d < rank; ++d) stored.push_back(sizes[d]);
  stored.push_back(sizes[1]);
  std::vector<int64_t> to_logical{0, rank - 1};
  for (int64_t d = 1; d < rank - 1; ++d) to_logical.push_back(d);
  return at::empty(stored, options).permute(to_logical);
}

at::Tensor to_order(const at::Tensor& t, ChannelOrder order) {
  if (is_dense_in_order(t, order)) {
    return t;
  }
  return empty_in_order(t.sizes(), t.options(), order).copy_(t);
}

ChannelView make_channel_view(at::IntArrayRef sizes, ChannelOrder order) {
  ChannelView view;
  view.numel = 1;
  for (auto s : sizes) view.numel *= s;
  view.channels = sizes.size() >= 2 ? sizes[1] : 1;
  view.run = 1;
  if (order == ChannelOrder::kFirst) {
    for (size_t d = 2; d < sizes.size(); ++d) view.run *= sizes[d];
  }
  return view;
}

}  // namespace fastblocks
