"""Swapped models (pyfastblocks.swap) against the original torchvision/timm model in eager mode and under
torch.compile: eval and one training step, images/s and peak memory, per family.

The same run as `pyfastblocks-bench --sections models` (any pyfastblocks-bench option works here, for example
`python benchmarks/bench_models.py --models resnet mobilenet --out DIR`).
"""
import sys

from pyfastblocks.bench import main

if __name__ == "__main__":
    sys.exit(main(["--sections", "models", *sys.argv[1:]]))
