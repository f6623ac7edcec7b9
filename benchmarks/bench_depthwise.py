"""depthwise_conv2d on the MobileNet v1 and Xception (middle flow) 3x3 layers against PyTorch's
conv2d(groups=C), bare and with BatchNorm + ReLU, forward and forward+backward, eager and torch.compile.

The same run as `pyfastblocks-bench --sections kernels --ops depthwise_conv2d` (any pyfastblocks-bench option
works here: `python benchmarks/bench_depthwise.py --quick --out DIR`).
"""
import sys

from pyfastblocks.bench import main

if __name__ == "__main__":
    sys.exit(main(["--sections", "kernels", "--ops", "depthwise_conv2d", *sys.argv[1:]]))
