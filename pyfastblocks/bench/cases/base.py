"""What a kernel case is, and the registry of ops the kernels section measures."""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
SHAPE_SET_NAMES = ("full", "quick", "tiny")  # "tiny" is for the tests (hidden --shapes option)


@dataclass
class Case:
    """One kernel measurement: ``fused`` and ``eager`` are the timed calls (each returns a tensor or a tuple).

    ``compiled`` builds the timed call of the torch.compile baseline from a compile function (default: compile
    ``eager`` itself); ``to_eager`` maps the fused outputs onto the eager ones before the check (for example the
    gradient of a BatchNorm-folded weight onto the gradient of the raw one); ``scaled_tolerance`` makes the
    absolute tolerance relative to each output's largest magnitude (convolutions: a k x k sum, or a gradient
    summed over the batch, rounds in proportion to its terms).
    """
    op: str
    variant: str
    shape: tuple
    dtype: str
    layout: str
    fused: Callable[[], Any]
    eager: Callable[[], Any]
    bytes_moved: int
    mode: str = "fwd"
    compiled: Optional[Callable[[Callable], Callable[[], Any]]] = None
    to_eager: Optional[Callable[[Tuple[torch.Tensor, ...]], Tuple[torch.Tensor, ...]]] = None
    scaled_tolerance: bool = False


@dataclass
class EvalBatchNorm:
    """An eval BatchNorm's random parameters and statistics for ``channels`` channels (float32), and their fold:
    ``F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps) == x * scale[c] + shift[c]``."""
    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float

    @classmethod
    def random(cls, channels: int, device: torch.device, eps: float = 1e-5) -> "EvalBatchNorm":
        return cls(torch.rand(channels, device=device) + 0.5, torch.randn(channels, device=device),
                   torch.randn(channels, device=device) * 0.1, torch.rand(channels, device=device) + 0.5, eps)

    @property
    def scale(self) -> torch.Tensor:
        return self.weight * torch.rsqrt(self.running_var + self.eps)

    @property
    def shift(self) -> torch.Tensor:
        return self.bias - self.running_mean * self.scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The eager eval BatchNorm of ``x``."""
        return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                              0.0, self.eps)


# cases(device, dtype, layout, batches, shapes) -> the op's cases, in row order
CasesFn = Callable[[torch.device, torch.dtype, str, List[int], Sequence], Iterator[Case]]
# plan(batches, shapes, element size in bytes) -> (mode, bytes moved) of every case ``cases`` yields, in order
PlanFn = Callable[[List[int], Sequence, int], List[Tuple[str, int]]]


@dataclass
class OpBench:
    """One op of the kernels section: its cases, its plan (the same cases, counted without allocating), the
    shapes of each shape set, and its defaults where the command line does not choose.

    ``cuda_dtypes``: dtypes measured on CUDA by default (CPU: float32). ``batches(cuda, short)``: default batch
    sizes (``short``: --quick or the tests' tiny shapes).
    """
    name: str
    cases: CasesFn
    plan: PlanFn
    shapes: Dict[str, Sequence]
    batches: Callable[[bool, bool], List[int]]
    cuda_dtypes: Tuple[torch.dtype, ...] = (torch.float16,)

    def __post_init__(self):
        missing = [s for s in SHAPE_SET_NAMES if s not in self.shapes]
        if missing:
            raise ValueError(f"OpBench {self.name!r}: shapes has no {missing} set")

    def default_dtypes(self, cuda: bool) -> List[torch.dtype]:
        return list(self.cuda_dtypes) if cuda else [torch.float32]


OPS: Dict[str, OpBench] = {}  # name -> OpBench, in registration order (the default --ops order)


def register(op: OpBench) -> OpBench:
    """Adds ``op`` to the kernels section (``--ops`` choices and default)."""
    if op.name in OPS:
        raise ValueError(f"an op named {op.name!r} is already registered")
    OPS[op.name] = op
    return op


def elementwise_batches(cuda: bool, short: bool) -> List[int]:
    """Default batches of the memory-bound epilogue ops (add_relu, branch_concat)."""
    return [8] if short else [32, 64]


# helpers the case modules share


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def fwd_bwd(fwd: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor):
    """Forward, then the gradients of ``inputs`` for the output gradient ``grad``: (out, *grads)."""
    out = fwd(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def call(fn: Callable, *args) -> Callable[[], Any]:
    return lambda: fn(*args)


def call_fwd_bwd(fwd: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor) -> Callable[[], Any]:
    return lambda: fwd_bwd(fwd, inputs, grad)
