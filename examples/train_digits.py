#!/usr/bin/env python
"""Train a ResNet and a MobileNet on scikit-learn's bundled digits (1797 8x8 grayscale images, 10 classes) on the
CPU, each as an eager PyTorch model and as its pyfastblocks twin, side by side.

- ResNet: torchvision's ``ResNet(BasicBlock, [1, 1, 1, 1])`` (one block per stage) with a stem scaled for 8x8 inputs
  (1 input channel, 3x3 stride-1 conv, no max-pool), against :class:`pyfastblocks.models.ResNet` built the same way
  and loaded from the eager model's ``state_dict`` (same keys).
- MobileNet: torchvision's ``MobileNetV2`` at width 0.5 with fewer stride-2 stages (8x8 -> 4x4 -> 2x2) and the same
  stem,
  against ``pyfastblocks.swap`` of a copy of it (the same module tree with fused forwards).

Both twins start from identical weights, see the same batches in the same order and use the same optimizer, so
their loss curves should lie on top of each other (they differ only by float rounding) and reach the same test
accuracy. A PNG of the curves is written to ``--out``.

    pip install scikit-learn matplotlib tqdm
    python examples/train_digits.py --epochs 15 --out digits_curves.png

Nothing is downloaded: the digits dataset ships with scikit-learn.
"""
import argparse
import copy
import json
import time
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

import pyfastblocks
import pyfastblocks.models as fbm

MODELS = ("resnet", "mobilenet")


# --------------------------------------------------------------------------------------------------------------
# Data


def load_digits(seed: int, test_fraction: float = 0.2):
    """Standardized ``[N, 1, 8, 8]`` float32 images and int64 labels, split (stratified) into train and test."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(torch.arange(len(y)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=y.numpy())
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[train_idx], (x_test - mean) / std, y[test_idx]


# --------------------------------------------------------------------------------------------------------------
# Models: the eager one and its fused twin, with identical weights


def _stem_8x8(conv: nn.Conv2d) -> nn.Conv2d:
    """A 3x3 stride-1 conv from 1 channel with conv's output channels: keeps the 8x8 resolution."""
    return nn.Conv2d(1, conv.out_channels, 3, 1, 1, bias=False)


def resnet_pair(num_classes: int = 10):
    from torchvision.models.resnet import BasicBlock, ResNet

    eager = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    eager.conv1, eager.maxpool = _stem_8x8(eager.conv1), nn.Identity()
    fused = fbm.ResNet(fbm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    fused.conv1, fused.maxpool = _stem_8x8(fused.conv1), nn.Identity()
    fused.load_state_dict(eager.state_dict())  # torchvision's keys
    return eager, fused


def mobilenet_pair(num_classes: int = 10):
    from torchvision.models import MobileNetV2

    # t (expansion), c (channels), n (blocks), s (stride of the first): 8x8 -> 4x4 -> 2x2
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 2, 2], [6, 64, 2, 1], [6, 96, 1, 2]]
    eager = MobileNetV2(num_classes=num_classes, width_mult=0.5, inverted_residual_setting=setting, dropout=0.0)
    eager.features[0][0] = _stem_8x8(eager.features[0][0])
    fused = pyfastblocks.swap(eager)  # a deep copy with the fused forwards; same parameters
    return eager, fused


PAIRS = {"resnet": resnet_pair, "mobilenet": mobilenet_pair}


# --------------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def train_pair(name: str, epochs: int, batch_size: int, lr: float, seed: int, data, progress: bool) -> Dict:
    """Train the eager model and its fused twin in lock-step on the same batches; per-step losses, per-epoch test
    accuracy and training time of each."""
    from tqdm import tqdm

    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    eager, fused = PAIRS[name]()
    models = {"eager": eager, "fused": fused}
    steps_per_epoch = (len(y_train) + batch_size - 1) // batch_size
    opts = {k: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
            for k, m in models.items()}
    scheds = {k: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=lr, total_steps=epochs * steps_per_epoch)
              for k, o in opts.items()}
    result = {k: {"step_loss": [], "epoch_loss": [], "test_acc": [], "train_seconds": 0.0} for k in models}
    order = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"{name:9s}", unit="step", disable=not progress,
               dynamic_ncols=True)
    for epoch in range(epochs):
        perm = torch.randperm(len(y_train), generator=order)
        sums = {k: 0.0 for k in models}
        for m in models.values():
            m.train()
        for i in range(0, len(y_train), batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            for k, m in models.items():
                start = time.perf_counter()
                opts[k].zero_grad(set_to_none=True)
                loss = F.cross_entropy(m(xb), yb)
                loss.backward()
                opts[k].step()
                scheds[k].step()
                result[k]["train_seconds"] += time.perf_counter() - start
                result[k]["step_loss"].append(loss.item())
                sums[k] += loss.item() * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, eager=f"{result['eager']['step_loss'][-1]:.4f}",
                            fused=f"{result['fused']['step_loss'][-1]:.4f}")
        for k, m in models.items():
            result[k]["epoch_loss"].append(sums[k] / len(y_train))
            result[k]["test_acc"].append(accuracy(m, x_test, y_test))
        bar.write(f"{name} epoch {epoch + 1}/{epochs}: train loss eager {result['eager']['epoch_loss'][-1]:.4f} "
                  f"fused {result['fused']['epoch_loss'][-1]:.4f} | test acc eager "
                  f"{result['eager']['test_acc'][-1]:.4f} fused {result['fused']['test_acc'][-1]:.4f}")
    bar.close()
    return result


def plot(results: Dict[str, Dict], path: str) -> None:
    """Per model: the training loss of every step (top) and, per epoch, the mean training loss and the test
    accuracy (bottom), eager and fused on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"eager": dict(color="tab:blue", lw=2.5, alpha=0.6), "fused": dict(color="tab:orange", lw=1.0, ls="--")}
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7.5), squeeze=False)
    for col, (name, res) in enumerate(results.items()):
        top, bottom = axes[0][col], axes[1][col]
        acc_axis = bottom.twinx()
        for kind, style in styles.items():
            curve = res[kind]
            top.plot(curve["step_loss"], label=f"{kind} (test acc {curve['test_acc'][-1]:.3f})", **style)
            epochs = range(1, len(curve["epoch_loss"]) + 1)
            bottom.plot(epochs, curve["epoch_loss"], marker="o", label=f"{kind} train loss", **style)
            acc_axis.plot(epochs, curve["test_acc"], marker="s", label=f"{kind} test acc",
                          **dict(style, color="tab:green" if kind == "eager" else "tab:red"))
        top.set(yscale="log", title=f"{name}: training loss per step", xlabel="step", ylabel="cross-entropy")
        bottom.set(yscale="log", title=f"{name}: per epoch", xlabel="epoch", ylabel="mean training loss")
        acc_axis.set(ylabel="test accuracy", ylim=(0, 1.02))
        top.legend()
        lines = bottom.get_legend_handles_labels()
        acc_lines = acc_axis.get_legend_handles_labels()
        bottom.legend(lines[0] + acc_lines[0], lines[1] + acc_lines[1], loc="center right", fontsize="small")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    fig.suptitle("digits (8x8): eager PyTorch vs pyfastblocks, same initial weights and batches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: List[str] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)} (default: both)")
    parser.add_argument("--out", default="digits_curves.png", help="PNG of the loss curves")
    parser.add_argument("--json", default=None, help="also write the curves and accuracies as JSON here")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; choose from {MODELS}")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_digits(args.seed)
    print(f"digits: {len(data[1])} train / {len(data[3])} test images, 8x8; torch {torch.__version__}, "
          f"pyfastblocks {pyfastblocks.__version__} ({pyfastblocks.build_info()['cpu_kernels']} CPU kernels), "
          f"{torch.get_num_threads()} threads")
    results = {name: train_pair(name, args.epochs, args.batch_size, args.lr, args.seed, data, not args.no_progress)
               for name in names}

    print(f"\n{'model':10s} {'eager acc':>10s} {'fused acc':>10s} {'max |loss diff|':>16s} "
          f"{'eager s':>8s} {'fused s':>8s}")
    for name, res in results.items():
        diff = max(abs(a - b) for a, b in zip(res["eager"]["step_loss"], res["fused"]["step_loss"]))
        res["max_step_loss_diff"] = diff
        print(f"{name:10s} {res['eager']['test_acc'][-1]:10.4f} {res['fused']['test_acc'][-1]:10.4f} "
              f"{diff:16.2e} {res['eager']['train_seconds']:8.1f} {res['fused']['train_seconds']:8.1f}")
    plot(results, args.out)
    print(f"loss curves: {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    return results


if __name__ == "__main__":
    main()
