"""pyfastblocks-bench on a tiny configuration: its correctness gate, its outputs, its entry points.

No speed is asserted anywhere here. The hidden ``--shapes tiny`` option swaps every shape for a tiny one.
"""
import csv
import datetime
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import child_process_env_and_cwd

import pyfastblocks
from pyfastblocks import bench, ops

TINY = ["--device", "cpu", "--quick", "--shapes", "tiny", "--batch", "2", "--min-run-time", "0.001"]


def _run(tmp_path, *extra):
    out = tmp_path / "out"
    rc = bench.main([*TINY, "--out", str(out), *extra])
    with open(out / "results.json") as f:
        data = json.load(f)
    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    return rc, out, data, csv_rows


def _fake_swap(monkeypatch, swap):
    module = types.ModuleType("pyfastblocks.swap")
    module.swap = swap
    monkeypatch.setitem(sys.modules, "pyfastblocks.swap", module)


def test_tiny_run_writes_csv_json_md_and_png(tmp_path):
    rc, out, data, csv_rows = _run(tmp_path, "--no-compile", "--sections", "kernels")
    assert rc == 0
    rows = data["rows"]
    # add_relu: 2 variants; branch_concat: 1; depthwise_conv2d: 2 layers x 2 variants x (fwd, fwd+bwd).
    assert [r["op"] for r in rows].count("add_relu") == 2
    assert [r["op"] for r in rows].count("branch_concat") == 1
    assert [r["op"] for r in rows].count("depthwise_conv2d") == 8
    assert {r["mode"] for r in rows if r["op"] == "depthwise_conv2d"} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["fused_us"] > 0 and r["eager_us"] > 0 and r["gb_per_s"] > 0
        assert r["compile_us"] is None  # --no-compile
    assert len(csv_rows) == len(rows)
    assert {"op", "variant", "mode", "shape", "status", "fused_us", "speedup_vs_eager", "gb_per_s"} <= set(csv_rows[0])
    assert all(float(r["fused_us"]) > 0 for r in csv_rows)

    env = data["environment"]
    for key in ("date", "device", "torch", "cuda", "pyfastblocks"):
        assert key in env
    assert env["pyfastblocks"]["version"]
    assert data["copy_gbs"] > 0 and data["elapsed_s"] > 0
    assert env["commit"] == pyfastblocks.build_info()["commit"]  # the build's commit, "unknown" without one

    md = (out / "results.md").read_text()
    assert "| op | variant | mode |" in md and env["torch"] in md
    assert f"commit {env['commit']}" in md
    for name in ("speedup_kernels.png", "speedup_models.png", "bandwidth.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        import matplotlib.image

        assert matplotlib.image.imread(str(path)).ndim == 3


def test_gate_trips_on_a_wrong_kernel(tmp_path, monkeypatch, capsys):
    real = ops.add_relu

    def wrong_add_relu(x, residual, scale=None, bias=None, relu=True):
        return real(x, residual, scale, bias, relu) + 0.01  # far beyond fp32 tolerance

    monkeypatch.setattr(ops, "add_relu", wrong_add_relu)
    rc, _, data, csv_rows = _run(tmp_path, "--no-compile", "--sections", "kernels",
                                 "--ops", "add_relu", "branch_concat")
    assert rc == 1
    by_op = {}
    for r in data["rows"]:
        by_op.setdefault(r["op"], []).append(r)
    assert len(by_op["add_relu"]) == 2
    for r in by_op["add_relu"]:
        assert r["status"] == "WRONG"
        assert r["fused_us"] is None and r["speedup_vs_eager"] is None and r["gb_per_s"] is None
        assert r["max_abs_err"] == pytest.approx(0.01, rel=0.1)
    assert all(r["status"] == "ok" for r in by_op["branch_concat"])  # the others are still timed
    assert all(r["fused_us"] == "" for r in csv_rows if r["op"] == "add_relu")
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("WRONG" in line for line in lines)
    out = str(tmp_path / "out")
    assert out in lines[0] and out in lines[-1]  # --out is named first and last too


def test_gate_checks_gradients(tmp_path, monkeypatch):
    real = ops.depthwise_conv2d

    def wrong_backward(*args, **kwargs):
        out = real(*args, **kwargs)
        return out + (out - out.detach())  # right forward, doubled gradients

    monkeypatch.setattr(ops, "depthwise_conv2d", wrong_backward)
    rc, _, data, _ = _run(tmp_path, "--no-compile", "--sections", "kernels", "--ops", "depthwise_conv2d")
    assert rc == 1
    status = {(r["variant"], r["mode"]): r["status"] for r in data["rows"]}
    assert len(status) == 8
    assert all(s == ("ok" if mode == "fwd" else "WRONG") for (_, mode), s in status.items()), status


def test_gate_rejects_a_wrong_activation(tmp_path, monkeypatch):
    real = ops.depthwise_conv2d

    def no_relu(x, weight, bias=None, stride=1, padding=0, dilation=1, activation="none", input_relu=False):
        return real(x, weight, bias, stride, padding, dilation, "none", input_relu)

    monkeypatch.setattr(ops, "depthwise_conv2d", no_relu)
    rc, _, data, _ = _run(tmp_path, "--no-compile", "--sections", "kernels", "--ops", "depthwise_conv2d")
    assert rc == 1
    for r in data["rows"]:
        assert r["status"] == ("WRONG" if r["variant"].endswith("bn+relu") else "ok"), r


def test_compile_baseline_is_timed_and_its_compile_time_reported(tmp_path):
    rc, _, data, _ = _run(tmp_path, "--sections", "kernels", "--ops", "branch_concat")  # one small graph
    assert rc == 0 and len(data["rows"]) == 1
    for r in data["rows"]:
        assert r["compile_us"] > 0 and r["speedup_vs_compile"] > 0
        assert r["compile_s"] > 0
    assert data["compile_total_s"] == pytest.approx(sum(r["compile_s"] for r in data["rows"]))


def test_models_section_times_a_right_swap_and_gates_a_wrong_one(tmp_path, monkeypatch):
    class WrongInTraining(torch.nn.Module):
        """Same outputs as the model in eval (so eval is timed), 10% off in training (so train is refused)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out * 1.1 if self.training else out

    _fake_swap(monkeypatch, lambda model, inplace=False: WrongInTraining(model))
    rc, out, data, _ = _run(tmp_path, "--no-compile", "--sections", "models", "--models", "resnet18")
    assert rc == 1
    rows = {r["mode"]: r for r in data["rows"]}
    assert set(rows) == {"eval", "train"}
    ok, wrong = rows["eval"], rows["train"]
    assert ok["section"] == "models" and ok["variant"] == "resnet18" and ok["status"] == "ok", ok
    assert ok["fused_images_per_s"] > 0 and ok["eager_images_per_s"] > 0 and ok["speedup_vs_eager"] > 0
    assert ok["fused_peak_mb"] is None or ok["fused_peak_mb"] >= 0
    # the frozen column: eval only, checked against the original, its speedups and freeze time reported
    assert ok["frozen_images_per_s"] > 0 and ok["frozen_speedup_vs_eager"] > 0 and ok["freeze_s"] > 0
    assert ok["compile_freezing_us"] is None and ok["compile_s"] is None  # --no-compile
    assert wrong["status"] == "WRONG" and wrong["fused_us"] is None and wrong["fused_images_per_s"] is None, wrong
    assert wrong["frozen_us"] is None and wrong["freeze_s"] is None
    md = (out / "results.md").read_text()
    assert "| family | model | mode |" in md and "WRONG" in md
    assert "frozen img/s" in md and "frozen x eager" in md and "freeze s" in md


def test_models_section_gates_a_wrong_frozen_model(tmp_path, monkeypatch):
    real = pyfastblocks.freeze

    def wrong_freeze(model, x=None, **kwargs):
        frozen = real(model, x, **kwargs)
        return lambda inp: frozen(inp) * 1.1

    _fake_swap(monkeypatch, lambda model, inplace=False: model)
    monkeypatch.setattr(pyfastblocks, "freeze", wrong_freeze)
    rc, _, data, _ = _run(tmp_path, "--no-compile", "--sections", "models", "--models", "resnet18")
    assert rc == 1
    rows = {r["mode"]: r for r in data["rows"]}
    assert rows["eval"]["status"] == "WRONG" and "frozen differs" in rows["eval"]["note"]
    assert rows["eval"]["fused_us"] is None and rows["train"]["status"] == "ok"


def test_models_section_reports_unavailable_without_swap(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyfastblocks.swap", None)  # import of pyfastblocks.swap raises ImportError
    rc, _, data, _ = _run(tmp_path, "--no-compile", "--sections", "models")
    assert rc == 0  # unavailable is not a failure
    (row,) = data["rows"]
    assert row["status"] == "unavailable" and "pyfastblocks.swap" in row["note"]


def test_markdown_table_bolds_speedups_of_at_least_one():
    rows = [bench.Row("add_relu", "a", "1x2", "fp32", "nchw", fused_us=1.0, eager_us=2.0, compile_us=0.5,
                      speedup_vs_eager=2.0, speedup_vs_compile=0.5, gb_per_s=1.0, pct_of_copy=10.0),
            bench.Row("add_relu", "b", "1x2", "fp32", "nchw", status="WRONG", note="differs")]
    table = bench.format_table(rows, 10.0)
    assert "| **2.00** | 0.50 |" in table
    assert "WRONG: differs" in table


def test_check_close_never_passes_nan():
    a = torch.ones(4)
    assert bench.check_close(a, a.clone(), torch.float32)[0]
    assert not bench.check_close(a * math.nan, a, torch.float32)[0]
    assert not bench.check_close((a, a), (a,), torch.float32)[0]


def test_python_dash_m_entry_point():
    env, cwd = child_process_env_and_cwd()
    proc = subprocess.run([sys.executable, "-m", "pyfastblocks.bench", "--help"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--out" in proc.stdout


def _lines(text):
    return [line for line in text.strip().splitlines() if line.strip()]


def test_results_go_to_a_new_folder_named_first_and_last(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rc = bench.main([*TINY, "--no-compile", "--sections", "kernels", "--ops", "add_relu"])
    assert rc == 0
    (folder,) = (tmp_path / "pyfastblocks-bench-results").iterdir()
    stamp = datetime.datetime.strptime(folder.name, "%Y-%m-%dT%H-%M-%SZ").replace(tzinfo=datetime.timezone.utc)
    assert before <= stamp <= datetime.datetime.now(datetime.timezone.utc)  # UTC date-time of the run
    lines = _lines(capsys.readouterr().out)
    named = str(folder.resolve())  # the folder's absolute path (from the current folder's)
    assert named in lines[0] and named in lines[-1], (lines[0], lines[-1])
    names = {"results.csv", "results.json", "results.md", "speedup_kernels.png", "speedup_models.png",
             "bandwidth.png"}
    assert names <= {p.name for p in folder.iterdir()}
    for name in names:
        assert name in lines[-1]
    data = json.loads((folder / "results.json").read_text())
    assert data["complete"] and [r["variant"] for r in data["rows"]] == ["bn+add+relu", "add+relu"]


def test_a_new_results_folder_never_reuses_an_existing_one(tmp_path):
    now = datetime.datetime(2026, 11, 29, 12, 30, 5, tzinfo=datetime.timezone.utc)
    root = str(tmp_path / "results")
    first = bench.new_results_dir(root, now)
    (tmp_path / "results" / "2026-11-29T12-30-05Z" / "keep.txt").write_text("earlier run")
    second = bench.new_results_dir(root, now)
    third = bench.new_results_dir(root, now)
    assert os.path.basename(first) == "2026-11-29T12-30-05Z"
    assert len({first, second, third}) == 3 and all(os.path.isdir(p) for p in (first, second, third))
    assert os.listdir(second) == [] and (tmp_path / "results" / "2026-11-29T12-30-05Z" / "keep.txt").exists()


def test_dry_run_plans_only(tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("--dry-run measured or ran something")

    for module, name in [(bench.timing, "copy_bandwidth_gbs"), (bench.timing, "measure_us"),
                         (bench.timing, "median_us"), (bench.timing, "peak_memory_mb"), (bench.cli, "run_case"),
                         (bench.cli, "run_model"), (bench.cli, "write_rows"), (bench.cli, "write_outputs")]:
        monkeypatch.setattr(module, name, must_not_run)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--dry-run", *TINY]) == 0
    assert list(tmp_path.iterdir()) == []  # no results folder
    lines = _lines(capsys.readouterr().out)
    assert "dry run" in lines[0] and "nothing is measured" in lines[0]
    assert any("copy bandwidth: not measured" in line for line in lines)
    assert any(line.startswith("plan: 15 kernel cases, 2 model runs") for line in lines), lines


def test_a_registered_op_is_benchmarked(tmp_path, monkeypatch):
    from pyfastblocks.bench.cases import Case, OpBench

    def cases(device, dtype, layout, batches, shapes):
        for batch in batches:
            for n in shapes:
                x = torch.randn(batch, n, device=device, dtype=dtype)
                yield Case("relu_demo", "relu", (batch, n), "fp32", layout, lambda x=x: torch.relu(x),
                           lambda x=x: x.clamp_min(0), 2 * x.numel() * x.element_size())

    def plan(batches, shapes, elem):
        return [("fwd", 2 * b * n * elem) for b in batches for n in shapes]

    monkeypatch.setitem(bench.OPS, "relu_demo",
                        OpBench("relu_demo", cases, plan, {"full": [64], "quick": [64], "tiny": [16, 32]},
                                lambda cuda, short: [2]))
    rc, _, data, _ = _run(tmp_path, "--no-compile", "--sections", "kernels", "--ops", "relu_demo")
    assert rc == 0
    assert [(r["op"], r["shape"], r["status"]) for r in data["rows"]] == [("relu_demo", "2x16", "ok"),
                                                                          ("relu_demo", "2x32", "ok")]
