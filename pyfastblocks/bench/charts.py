"""PNG charts of a run: speedup_kernels.png, speedup_models.png, bandwidth.png (matplotlib, Agg)."""
import os
from typing import List

from .rows import Row


def _short_label(r: Row) -> str:
    if r.section == "models":
        return f"{r.variant} {r.mode} {r.shape}"
    return f"{r.op} {r.variant} {r.mode} {r.shape}"


def _legend_outside(ax) -> None:
    # Right of the axes, so that it never hides a bar (savefig's tight bounding box makes room for it).
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)


def write_charts(rows: List[Row], copy_gbs: float, out_dir: str) -> List[str]:
    """speedup_kernels.png, speedup_models.png (x eager and x compile per row, line at 1) and bandwidth.png
    (GB/s per kernel row against the measured copy bandwidth). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def speedup_chart(selected, title, path):
        fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * max(1, len(selected))))
        if selected:
            ys = list(range(len(selected)))
            eager = [r.speedup_vs_eager or 0.0 for r in selected]
            comp = [r.speedup_vs_compile or 0.0 for r in selected]
            if any(r.speedup_vs_compile is not None for r in selected):
                ax.barh([y - 0.2 for y in ys], eager, height=0.4, label="x eager")
                ax.barh([y + 0.2 for y in ys], comp, height=0.4, label="x torch.compile")
            else:
                ax.barh(ys, eager, height=0.6, label="x eager (torch.compile not run)")
            ax.set_yticks(ys)
            ax.set_yticklabels([_short_label(r) for r in selected], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(1.0, color="black", linewidth=1)
            ax.set_xlabel("speedup of pyfastblocks (higher is better; 1 = same speed)")
            _legend_outside(ax)
        else:
            ax.text(0.5, 0.5, "no timed rows", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        ax.set_title(title)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    kernels = [r for r in rows if r.section == "kernels" and r.status == "ok"]
    models = [r for r in rows if r.section == "models" and r.status == "ok"]
    speedup_chart(kernels, "kernels: speedup per op and shape", os.path.join(out_dir, "speedup_kernels.png"))
    speedup_chart(models, "models: swapped model speedup (images/s)", os.path.join(out_dir, "speedup_models.png"))

    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * max(1, len(kernels))))
    if kernels:
        ys = list(range(len(kernels)))
        ax.barh(ys, [r.gb_per_s for r in kernels], height=0.6, label="pyfastblocks GB/s")
        ax.set_yticks(ys)
        ax.set_yticklabels([_short_label(r) for r in kernels], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(copy_gbs, color="red", linestyle="--", label=f"copy bandwidth {copy_gbs:.0f} GB/s")
        ax.set_xlabel("GB/s (bytes moved at least / fused time)")
        _legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "no timed rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("kernels: bandwidth against a device-to-device copy")
    path = os.path.join(out_dir, "bandwidth.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
