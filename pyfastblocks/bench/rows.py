"""One result row (a kernel case, or one mode of one model), as the report, CSV and JSON write it."""
from dataclasses import dataclass, field
from typing import Optional

FAILED = ("WRONG", "error")  # statuses that make the command exit non-zero ("unavailable" does not)


@dataclass
class Row:
    """Kernels: ``op`` / ``variant`` / ``shape``; models: family / model name / input shape. ``fused`` is
    pyfastblocks (the fused op, or the swapped model); ``eager`` and ``compile`` are the baselines. A models
    variant (see ``models.MODEL_VARIANTS``) keyed ``k`` fills ``k_us``, ``k_images_per_s`` and ``k_peak_mb``.
    ``compile_s``: torch.compile's first call (of the compile baseline, for a model)."""
    op: str
    variant: str
    shape: str
    dtype: str
    layout: str
    section: str = "kernels"
    mode: str = "fwd"
    status: str = "ok"
    fused_us: Optional[float] = None
    eager_us: Optional[float] = None
    compile_us: Optional[float] = None
    speedup_vs_eager: Optional[float] = None
    speedup_vs_compile: Optional[float] = None
    gb_per_s: Optional[float] = None
    pct_of_copy: Optional[float] = None
    compile_s: Optional[float] = None
    max_abs_err: Optional[float] = None  # kernels: fused against eager
    max_rel_err: Optional[float] = None  # models: swapped against original (see gate.MODEL_TOLERANCES)
    # models section: images per second and peak memory (MB allocated during one call, weights not counted)
    batch: Optional[int] = None
    fused_images_per_s: Optional[float] = None
    eager_images_per_s: Optional[float] = None
    compile_images_per_s: Optional[float] = None
    fused_peak_mb: Optional[float] = None
    eager_peak_mb: Optional[float] = None
    compile_peak_mb: Optional[float] = None
    # models, eval: torch.compile with Inductor's freezing, and pyfastblocks.freeze (frozen) of the original
    compile_freezing_us: Optional[float] = None
    compile_freezing_images_per_s: Optional[float] = None
    compile_freezing_peak_mb: Optional[float] = None
    speedup_vs_compile_freezing: Optional[float] = None
    compile_freezing_s: Optional[float] = None  # its first call
    frozen_us: Optional[float] = None
    frozen_images_per_s: Optional[float] = None
    frozen_peak_mb: Optional[float] = None
    freeze_s: Optional[float] = None  # pyfastblocks.freeze's own time
    frozen_speedup_vs_eager: Optional[float] = None
    frozen_speedup_vs_compile: Optional[float] = None
    frozen_speedup_vs_compile_freezing: Optional[float] = None
    note: str = field(default="")
