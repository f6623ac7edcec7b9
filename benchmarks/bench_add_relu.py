"""add_relu on ResNet-50's block-tail shapes against eager PyTorch and torch.compile.

The benchmark itself lives in pyfastblocks/bench/ (so the installed `pyfastblocks-bench` command runs it
anywhere); this script is the add_relu part of it from a checkout: `python benchmarks/bench_add_relu.py [--quick]
...` (any pyfastblocks-bench option; a later `--ops`/`--sections` overrides the defaults here).
"""
import sys

from pyfastblocks.bench import main

if __name__ == "__main__":
    sys.exit(main(["--sections", "kernels", "--ops", "add_relu", *sys.argv[1:]]))
