"""examples/train_digits.py: a two-epoch run of the real script (eager and fused ResNet and MobileNet on scikit-learn's
digits), and the one-step check that makes its "the curves agree" meaningful.

Training amplifies float rounding: after a few dozen SGD steps the eager and fused twins follow visibly different
(equally good) trajectories, the MobileNet sooner than the ResNet (eager against eager reproduces bit for bit, so
that is rounding, not noise in the data order). So the per-step comparison is made on the first steps and on the
gradients of one step, and the two-epoch curves are compared as curves (per-epoch means). The >= 95% test accuracy
is for the full run (15 epochs, the script's default), not for these two epochs.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_digits.py")

pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (pip install '.[test]')")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")


def _env():
    env = dict(os.environ)
    # the package as the tests import it (an in-place build or an installed one)
    import pyfastblocks

    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(pyfastblocks.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    png, js = out / "curves.png", out / "curves.json"
    proc = subprocess.run(
        [sys.executable, EXAMPLE, "--epochs", "2", "--out", str(png), "--json", str(js), "--threads", "1"],
        env=_env(), cwd=str(out), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return png, json.loads(js.read_text()), proc.stdout + proc.stderr


def test_two_epoch_run_writes_png_and_reports(two_epochs):
    png, results, log = two_epochs
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert set(results) == {"resnet", "mobilenet"}
    for name in results:
        assert f"{name} epoch 2/2" in log
    assert "eager acc" in log and "fused acc" in log


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_two_epoch_curves_agree(two_epochs, name):
    _, results, _ = two_epochs
    eager, fused = results[name]["eager"], results[name]["fused"]
    assert len(eager["step_loss"]) == len(fused["step_loss"]) == 2 * 23  # 1437 images, batch 64
    # identical weights, batches and optimizer: the first steps agree to rounding
    for a, b in zip(eager["step_loss"][:3], fused["step_loss"][:3]):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (eager["step_loss"][:3], fused["step_loss"][:3])
    # then as curves: per-epoch mean training losses within 15% of each other, both falling well below the start
    for a, b in zip(eager["epoch_loss"], fused["epoch_loss"]):
        assert abs(a - b) <= 0.15 * max(a, b) + 0.01, (eager["epoch_loss"], fused["epoch_loss"])
    for curve in (eager, fused):
        assert curve["epoch_loss"][-1] < 0.3 * curve["step_loss"][0]
    if name == "resnet":  # the ResNet is already accurate after two epochs (its eval BatchNorm has settled)
        assert min(eager["test_acc"][-1], fused["test_acc"][-1]) >= 0.9
        assert abs(eager["test_acc"][-1] - fused["test_acc"][-1]) <= 0.05


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_one_step_same_loss_and_gradients(name):
    """The twins of the example compute the same loss and gradients (training mode, batch statistics). In float64,
    where both are exact up to rounding: in float32 the gradients of a freshly initialized network through
    train-mode BatchNorm are ill-conditioned (eager float32 itself is ~1e-3 off float64 on some of them)."""
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import train_digits

        torch.manual_seed(0)
        eager, fused = (m.double().train() for m in train_digits.PAIRS[name]())
        x_train, y_train, _, _ = train_digits.load_digits(0)
        xb, yb = x_train[:64].double(), y_train[:64]
        losses = []
        for m in (eager, fused):
            loss = F.cross_entropy(m(xb), yb)
            loss.backward()
            losses.append(loss.item())
    finally:
        sys.path.pop(0)
        torch.set_num_threads(threads)
    assert abs(losses[0] - losses[1]) < 1e-10
    grads_e = {n: p.grad for n, p in eager.named_parameters()}
    grads_f = {n: p.grad for n, p in fused.named_parameters()}
    assert grads_e.keys() == grads_f.keys()
    scale = max(g.abs().max().item() for g in grads_e.values())
    for n, g in grads_e.items():
        # some biases (a BatchNorm's shift right before another convolution + BatchNorm) have a gradient of exactly
        # zero in exact arithmetic: rounding noise on both sides, hence the absolute part
        torch.testing.assert_close(grads_f[n], g, rtol=1e-7, atol=1e-10 * scale, msg=lambda m, n=n: f"{name} {n}: {m}")
