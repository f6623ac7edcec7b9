"""pyfastblocks-bench: fused ops and swapped models against eager PyTorch and torch.compile, measured in one run.

Sections:

- kernels: each op on the shapes of the networks it serves (ResNet-50 block tails for add_relu, InceptionV3
  module tails for branch_concat, MobileNet v1 and Xception depthwise 3x3 layers for depthwise_conv2d, bare and
  with BatchNorm + ReLU, forward and forward+backward), against the eager PyTorch code a torchvision model runs
  and against torch.compile of that same code.
- models: per family, the model after ``pyfastblocks.swap`` against the original in eager mode and under
  torch.compile, in eval and for one training step (SGD), as images/s and peak memory. Runs only where
  ``pyfastblocks.swap`` can be imported; otherwise the section is reported as unavailable.

Every case is checked first: the fused result (outputs, and gradients for backward cases) must equal the eager
one within the dtype's tolerance, or no speed is reported for it (the row says WRONG and the command exits
non-zero). Times are medians of torch.utils.benchmark measurements after warm-up; torch.compile's compile time
(its first call) is reported in its own column, never inside the timings. Bandwidth is bytes moved (inputs read
once + output written once, + weights for convolutions) over the fused time, also shown as % of a
device-to-device copy measured in the same run. Results (results.csv, results.json, results.md, PNG charts) go to
a new folder ``pyfastblocks-bench-results/<UTC date-time>/`` or to ``--out DIR``.

Modules: ``cli`` (the command), ``cases/`` (one module per op, registered in ``cases.OPS``), ``kernels`` (one
case: gate, then timing), ``models`` (the models section, its columns in ``models.MODEL_VARIANTS``), ``gate``
(tolerances and checks), ``timing``, ``estimate``, ``environment``, ``report`` (Markdown/CSV/JSON), ``charts``
(PNG).
"""
from .cases import DTYPES, OPS, Case, OpBench, register
from .cli import main, new_results_dir, parse_args
from .gate import GRADIENT_TOLERANCES, MODEL_TOLERANCES, TOLERANCES, check_close
from .kernels import run_case
from .models import MODEL_SETS, MODEL_VARIANTS, ModelVariant, run_model
from .report import format_models_table, format_report, format_table, write_outputs, write_rows
from .rows import FAILED, Row
from .timing import copy_bandwidth_gbs, measure_us, median_us, peak_memory_mb

__all__ = [
    "Case", "DTYPES", "FAILED", "GRADIENT_TOLERANCES", "MODEL_SETS", "MODEL_TOLERANCES", "MODEL_VARIANTS",
    "ModelVariant", "OPS", "OpBench", "Row", "TOLERANCES", "check_close", "copy_bandwidth_gbs", "format_models_table",
    "format_report", "format_table", "main", "measure_us", "median_us", "new_results_dir", "parse_args",
    "peak_memory_mb", "register", "run_case", "run_model", "write_outputs", "write_rows",
]
