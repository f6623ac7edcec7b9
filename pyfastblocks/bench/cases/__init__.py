"""The kernels section's ops, one module each, registered by name in ``OPS`` (registration order is the default
``--ops`` order).

A new op is a new module here that builds its :class:`Case` rows and calls ``register(OpBench(...))``, plus one
import line below; a new row family of an existing op is an entry in that op's module (for example
``depthwise.VARIANTS``).
"""
from .base import DTYPE_NAMES, DTYPES, OPS, SHAPE_SET_NAMES, Case, OpBench, register

# Registration order is the default run order.
from . import add_relu, affine_act, branch_concat, depthwise  # noqa: E402,F401  (each registers its op)

__all__ = ["Case", "DTYPES", "DTYPE_NAMES", "OPS", "OpBench", "SHAPE_SET_NAMES", "register"]
