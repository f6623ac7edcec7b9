"""The zoo sweep's fast subset (``pyfastblocks.bench.sweep``): a few small models of the issue-16 families, swapped,
outputs equal (NCHW and channels_last), and their eager BatchNorm passes gone in eval; the pass counter itself; the
command line."""
import pytest
import torch
from torch import nn

from pyfastblocks.bench import sweep

pytest.importorskip("torchvision")
pytest.importorskip("timm")

SUBSET = [("torchvision", "densenet121"), ("torchvision", "mobilenet_v3_small"), ("torchvision", "regnet_x_400mf"),
          ("torchvision", "googlenet"), ("timm", "efficientnet_b0"), ("timm", "res2net50_26w_4s")]


@pytest.mark.parametrize("source,name", SUBSET, ids=[f"{s}-{n}" for s, n in SUBSET])
def test_sweep_subset(source, name):
    row = sweep.sweep_model(source, name, image=64, batch=1)
    assert row.ok, row.problem
    assert row.has_bn and row.swapped > 0 and row.after["fastblocks"] > 0
    assert row.before["bn"] > 0 and row.after["bn"] == 0, (row.before, row.after, row.left)
    assert row.after["act"] < row.before["act"] / 4, (row.before, row.after, row.left)


def test_pass_counter_kinds():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    counts, _ = sweep.count_passes(m, x)
    assert counts["bn"] == 1 and counts["act"] == 1
    with torch.no_grad(), sweep.PassCounter() as c:
        y = torch.randn(1, 4, 8, 8)
        torch.cat([y, y], 1)
        y + y
        y * torch.rand(1, 4, 1, 1)
        torch.relu(torch.randn(1, 4, 1, 1))  # a 1x1 map: not a feature map
    assert (c.counts["cat"], c.counts["add"], c.counts["gate"], c.counts["act"]) == (1, 1, 1, 0)


def test_totals_and_table():
    rows = [sweep.SweepRow("torchvision", "a", 64, 3, {"bn": 10, "act": 8, "add": 2, "cat": 0, "gate": 0,
                                                       "fastblocks": 0},
                           {"bn": 0, "act": 2, "add": 1, "cat": 0, "gate": 0, "fastblocks": 9}, 0.0, 0.0, 4),
            sweep.SweepRow("timm", "b", 64, 0, {"bn": 0, "act": 4}, {"bn": 0, "act": 4}, 0.0, 0.0, 0)]
    t = sweep.totals(rows)
    assert t["bn"] == (10, 0) and t["act"] == (8, 2) and t["add"] == (2, 1)  # b has no BatchNorm: not counted
    text = sweep.format_totals(rows)
    assert "100.0% removed" in text and "75.0% removed" in text and "torchvision/a (act 2, add 1)" in text
    assert "a" in sweep.format_rows(rows)


def test_help_documents_running_all_models(capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "ALL models" in out and "--quick" in out and "--sections sweep" in out


def test_float64_check_tells_rounding_from_a_wrong_result(monkeypatch):
    import pyfastblocks
    import pyfastblocks.models._fused as fused_module

    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    sweep.randomize_batchnorms(m)
    swapped = pyfastblocks.swap(m)
    x = torch.randn(2, 3, 8, 8)
    err, noise = sweep.float64_error(swapped, x)
    assert err <= sweep.TOLERANCE_F64 and noise <= sweep.TOLERANCE_F64
    real = fused_module.conv_bn_act
    monkeypatch.setattr(fused_module, "conv_bn_act", lambda *a, **k: real(*a, **k) * 1.01)
    err, _ = sweep.float64_error(swapped, x)
    assert err > 1e-3


def test_bench_command_has_a_sweep_section():
    from pyfastblocks.bench import cli

    assert cli.parse_args(["--sections", "sweep"]).sections == ["sweep"]
