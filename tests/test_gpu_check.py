"""The GPU check (scripts/gpu_check.sh, issue 18) without a GPU, so that it cannot rot between the rare sessions
that have one: its plan (every step bounded, the budgets under the limit, the order), its dry run, its runner on
stand-in steps (timeouts, failures, the summary), the flags it passes to pyfastblocks-bench, the sanitizer
workload's coverage of every kernel, the `cuda` test marker (tests/conftest.py), and benchmarks/gpu_models.py."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import _device_kind, child_process_env_and_cwd

ROOT = Path(__file__).resolve().parent.parent
PLAN_PATH = ROOT / "scripts" / "gpu_check_plan.py"
# The order: the build first, then the most valuable evidence, the model benchmark last.
REQUIRED_ORDER = ["build", "cuda-tests", "memcheck", "racecheck", "kernel-bench", "model-bench"]


def _plan():
    spec = importlib.util.spec_from_file_location("gpu_check_plan", PLAN_PATH)
    plan = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_plan"] = plan  # dataclasses look the module up while the class is built
    spec.loader.exec_module(plan)
    return plan


def _run_check(args=(), env=None, timeout=120):
    env = dict(os.environ if env is None else env)
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------------------
# The plan and the runner


def test_every_step_has_a_time_limit_and_the_limits_add_up_to_under_8_minutes():
    plan = _plan()
    assert [s.id for s in plan.STEPS] == REQUIRED_ORDER
    for s in plan.STEPS:
        assert isinstance(s.budget_s, int) and s.budget_s > 0, s.id
        assert s.command.strip() and s.title and s.why, s.id
    assert plan.TOTAL_LIMIT_S == 480
    assert plan.total_budget_s() == sum(s.budget_s for s in plan.STEPS) < 480
    # Even with every step killed at its budget and slow to die.
    assert plan.worst_case_s() == plan.total_budget_s() + plan.KILL_AFTER_S * len(plan.STEPS) < 480
    assert plan.STEPS[0].required and not any(s.required for s in plan.STEPS[1:])
    assert len(plan.OUT_FILES) <= plan.MAX_OUT_FILES == 8


def test_every_step_command_is_valid_bash():
    for s in _plan().STEPS:
        for what, command in (("command", s.command), ("after", s.after)):
            if command:
                r = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
                assert r.returncode == 0, f"{s.id} {what}: {r.stderr}"
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0


@pytest.mark.parametrize("how", ["--dry-run", "GPU_CHECK_DRY_RUN=1"])
def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, how):
    plan = _plan()
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out))
    # No GPU tools needed: run with a PATH where nvidia-smi and compute-sanitizer cannot be found.
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not re.search(r"cuda|nvidia", p))
    if how == "--dry-run":
        r = _run_check(["--dry-run"], env)
    else:
        r = _run_check([], dict(env, GPU_CHECK_DRY_RUN="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    # Each step in the required order, with its budget and its commands.
    positions = []
    for i, s in enumerate(plan.STEPS, 1):
        header = f"=== [{i}/{len(plan.STEPS)}] {s.id}: {s.title} -- budget {s.budget_s} s"
        assert header in text, header
        positions.append(text.index(header))
        for line in s.command.strip().splitlines():
            assert line.strip() in text, line
    assert positions == sorted(positions)
    assert f"planned total: {plan.total_budget_s()} s of the 480 s limit" in text
    # The files that come back.
    files = re.search(r"files under \$OUT \((\d+) of at most 8\): (.*)", text)
    assert files and int(files.group(1)) == len(files.group(2).split()) <= 8
    assert files.group(2).split() == list(plan.OUT_FILES)
    assert not out.exists(), "the dry run wrote something"


STAND_IN_PLAN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gpu_check_plan", {real!r})
plan = importlib.util.module_from_spec(spec)
sys.modules["gpu_check_plan"] = plan
spec.loader.exec_module(plan)
S = plan.Step
plan.STEPS[:] = {steps}
sys.exit(plan.main(sys.argv[1:]))
"""


def _stand_in(tmp_path, steps: str) -> dict:
    path = tmp_path / "plan.py"
    path.write_text(STAND_IN_PLAN.format(real=str(PLAN_PATH), steps=textwrap.dedent(steps).strip()))
    out = tmp_path / "out"
    return dict(os.environ, OUT=str(out), WORK=str(tmp_path / "work"), GPU_CHECK_PLAN=str(path),
                GPU_CHECK_COMMIT="abc1234")


def test_runner_bounds_each_step_and_goes_on_after_a_timeout_or_a_failure(tmp_path):
    env = _stand_in(tmp_path, """[
        S("build", "stand-in build", 5, "why", "echo built; echo \\"$PY|$NPROC|$WORKERS|$GPU_CHECK_COMMIT\\"",
          required=True),
        S("slow", "sleeps past its budget", 1, "why", "echo starting; sleep 30; echo never"),
        S("fails", "exits 3", 5, "why", "exit 3", after="echo collected > \\"$WORK/after\\""),
        S("last", "still runs", 5, "why", "echo last ran"),
    ]""")
    r = _run_check(env=env, timeout=60)
    text = r.stdout
    assert r.returncode == 0, text + r.stderr
    assert "built" in text and "python3 -P|" in text and "|abc1234" in text
    assert re.search(r"--- \[1/4\] build: ok in [\d.]+ s of 5 s", text)
    slow = re.search(r"--- \[2/4\] slow: TIMEOUT \(killed at 1 s\) in ([\d.]+) s of 1 s", text)
    assert slow and float(slow.group(1)) < 1 + 3 + 2 and "never" not in text  # SIGTERM at 1 s
    assert re.search(r"--- \[3/4\] fails: FAILED \(exit 3\)", text)
    assert (tmp_path / "work" / "after").read_text().strip() == "collected"  # `after` ran despite the failure
    assert "last ran" in text and re.search(r"--- \[4/4\] last: ok", text)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "gpu_check.log", "steps.json"]
    steps = json.loads((out / "steps.json").read_text())
    assert [(s["id"], s["status"]) for s in steps["steps"]] == [("build", 0), ("slow", 124), ("fails", 3),
                                                                ("last", 0)]
    assert steps["commit"] == "abc1234" and steps["total_budget_s"] == 16
    assert "| 2 | `slow`: sleeps past its budget | 1 |" in (out / "README.md").read_text()
    log = (out / "gpu_check.log").read_text()
    assert "starting" in log and "last ran" in log


def test_runner_skips_the_rest_when_the_build_fails(tmp_path):
    env = _stand_in(tmp_path, """[
        S("build", "fails", 5, "why", "echo compiler error; exit 1", required=True),
        S("tests", "needs the build", 5, "why", "echo ran anyway"),
    ]""")
    r = _run_check(env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--- [1/2] build: FAILED (exit 1)" in r.stdout
    assert "--- [2/2] tests: SKIPPED (build failed)" in r.stdout and "ran anyway" not in r.stdout
    steps = json.loads((tmp_path / "out" / "steps.json").read_text())["steps"]
    assert steps[1]["outcome"] == "skipped (build failed)"


def test_merge_bench_keeps_runs_that_were_cut_short(tmp_path):
    """pyfastblocks-bench writes results.json after every case and results.md at the end: a run killed at the
    step's budget still shows the cases it finished."""
    plan = _plan()
    done, cut, empty = tmp_path / "1-done", tmp_path / "2-cut", tmp_path / "3-empty"
    for folder in (done, cut, empty):
        folder.mkdir()
    row = dict(op="add_relu", variant="bn+add+relu", status="ok", speedup_vs_eager=3.5, pct_of_copy=91.0)
    (done / "results.json").write_text(json.dumps({"complete": True, "rows": [row, dict(row, pct_of_copy=55.0)]}))
    (done / "results.md").write_text("table one")
    (cut / "results.json").write_text(json.dumps({"complete": False, "rows": [
        dict(op="depthwise_conv2d", variant="conv", status="ok", fused_us=12.5, speedup_vs_compile=1.25)]}))
    out = tmp_path / "out"
    out.mkdir()
    plan.merge_bench(str(out / "kernels"), [str(cut), str(empty), str(done)])
    merged = json.loads((out / "kernels.json").read_text())["runs"]
    assert [r["run"] for r in merged] == ["1-done", "2-cut", "3-empty"]
    assert len(merged[0]["results"]["rows"]) == 2 and merged[1]["results"]["complete"] is False
    assert "error" in merged[2]
    md = (out / "kernels.md").read_text()
    assert "# 1-done\n\ntable one" in md and "# 3-empty" in md
    assert re.search(r"\| depthwise_conv2d \| conv \|.*\| 12\.5 \|", md)
    # The summary's headlines read the merged runs.
    summary = plan.report(str(out), str(tmp_path / "no-steps.tsv"))
    assert "kernels 1-done add_relu: 2 cases, 3.50x eager, 55-91% of copy bandwidth" in summary
    assert "kernels 2-cut depthwise_conv2d: 1 cases" in summary and "1.25x torch.compile" in summary
    assert "models.json: missing" in summary


@pytest.mark.slow
def test_the_kernel_bench_flags_are_pyfastblocks_bench_flags():
    """Each kernel benchmark run of the plan, as a pyfastblocks-bench --dry-run on the CPU: the CLI takes the flags."""
    plan = _plan()
    env, cwd = child_process_env_and_cwd()
    for name, flags in plan.BENCH_RUNS:
        args = [sys.executable, "-P", "-m", "pyfastblocks.bench", *plan.BENCH_COMMON.split(), *flags.split(),
                "--device", "cpu", "--min-run-time", "0.01", "--dry-run"]
        r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{name}: {r.stdout[-2000:]}{r.stderr[-2000:]}"


# ------------------------------------------------------------------------------------------------------------
# The sanitizer workload


def _workload(*args, timeout=300):
    env, cwd = child_process_env_and_cwd()
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sanitizer_workload.py"), *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_sanitizer_workload_picks_every_kernel():
    """Every tiled depthwise program (by the emulator's choice), the generic kernels, and every path of the
    epilogue kernels, for each dtype, is launched by some case."""
    r = _workload("--list")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "not picked by any case: none" in r.stdout
    for name in ("nhwc_forward<half,vec8,5x5s2>", "nchw_input_grad<bfloat16,dynamic>", "param_grad_finish",
                 "nhwc_forward<float,vec1,dynamic>", "generic_param_grad<double>",
                 "rows_reduce<half,vec1>", "branch_concat_forward<float,vec4,per_element>",
                 "add_act_backward<bfloat16,vec8,row_vector>", "planes_reduce<double,vec2>", "reduce_finish<double>"):
        assert name in r.stdout, name


def test_sanitizer_workload_runs_on_the_cpu():
    """The same cases through the ops on the CPU: every case's arguments are valid (a mistake here would cost the
    GPU check its two sanitizer steps)."""
    r = _workload("--device", "cpu", "--one-activation")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"sanitizer workload done: \d+ runs of \d+ cases", r.stdout)


# ------------------------------------------------------------------------------------------------------------
# The `cuda` marker


# (The tests of the marker keep "cuda" out of their names, parameters and calls: they are CPU tests, which the
# GPU check's `pytest -m cuda` need not run.)
HAS_GPU = torch.cuda.is_available()
DEVICE_KINDS = [
    ("cuda", "cuda"), ("cuda:1", "cuda"), (torch.device("cuda"), "cuda"), (("cuda", torch.float16), "cuda"),
    ("cpu", "cpu"), (torch.device("cpu"), "cpu"), (("cpu", torch.bfloat16), "cpu"), (torch.zeros(1), "cpu"),
    ({"x": torch.zeros(1), "residual": torch.zeros(1)}, "cpu"), ("nchw", None), ("cudaish", None), (3, None),
    (torch.zeros(1, device="meta"), None),
]


def test_device_kind_of_parameters():
    for value, kind in DEVICE_KINDS:
        assert _device_kind(value) == kind, value


def test_device_kind_of_fake_gpu_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(2, device=torch.device("cuda"))
    assert _device_kind(fake) == "cuda"
    assert _device_kind({"x": torch.zeros(1), "residual": fake}) == "cuda"


COLLECTOR = """
import inspect, json, os

def pytest_collection_finish(session):
    rows = []
    for item in session.items:
        skips = [m for m in item.iter_markers("skip")] + [m for m in item.iter_markers("skipif") if m.args and m.args[0] is True]
        reasons = " ".join(str(m.kwargs.get("reason", "")) for m in skips)
        params = getattr(getattr(item, "callspec", None), "params", {})
        try:
            source = inspect.getsource(item.function)
        except Exception:
            source = ""
        rows.append({"id": item.nodeid, "cuda": item.get_closest_marker("cuda") is not None,
                     "skipped": bool(skips), "cuda_skip": "cuda" in reasons.lower(),
                     "cpu_param": any(isinstance(v, str) and v == "cpu" for v in params.values()),
                     "cuda_in_source": "cuda" in source})
    with open(os.environ["CUDA_MARKER_DUMP"], "w") as f:
        json.dump(rows, f)
"""


@pytest.mark.slow
def test_marker_selects_the_gpu_tests_and_no_cpu_test(tmp_path):
    (tmp_path / "cuda_marker_collector.py").write_text(COLLECTOR)
    env, cwd = child_process_env_and_cwd()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    env["CUDA_MARKER_DUMP"] = str(tmp_path / "items.json")
    # -P and a cwd outside the tree: the child imports the pyfastblocks these tests import, as gpu_check.sh's does
    # (`python -m pytest` from the root would put the uncompiled source folder first on sys.path).
    r = subprocess.run([sys.executable, "-P", "-m", "pytest", "--collect-only", "-q", "-p", "cuda_marker_collector",
                        "-p", "no:cacheprovider", "--rootdir", str(ROOT), str(ROOT / "tests")], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "items.json").read_text())
    assert len(rows) > 1000
    marked = [row for row in rows if row["cuda"]]
    # CUDA in the name or a parameter id, or skipped here for want of CUDA: a CUDA test.
    for row in rows:
        if "cuda" in row["id"].lower() or row["cuda_skip"]:
            assert row["cuda"], row["id"]
    # A test parametrized on the CPU device is a CPU test, unless it needs CUDA besides (a second device kind).
    for row in marked:
        assert not row["cpu_param"] or row["cuda_skip"], row["id"]
    known = {"test_cuda_matches_cpu", "test_cuda_matches_the_emulator", "test_cuda_past_int32_elements",
             "test_cuda_op_runs_on_the_current_stream", "test_cuda_threads_with_their_own_streams",
             "test_gradscaler_training_cuda", "test_cuda_misaligned_storage_offset"}
    assert known <= {row["id"].split("::")[-1].split("[")[0] for row in marked}
    if not HAS_GPU:
        # Here `pytest -m cuda` runs next to nothing: only CPU tests with an extra CUDA branch, which they skip.
        runs_here = [row for row in marked if not row["skipped"]]
        assert len(runs_here) <= 5 and all(row["cuda_in_source"] for row in runs_here), runs_here


# ------------------------------------------------------------------------------------------------------------
# benchmarks/gpu_models.py


@pytest.mark.slow
def test_gpu_models_smoke_on_the_cpu(tmp_path):
    """The model benchmark's every part but torch.compile, at tiny sizes on the CPU (~30-60 s on 2 cores)."""
    env, cwd = child_process_env_and_cwd()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_models.py"), "--device", "cpu", "--batch", "2",
                        "--size", "64", "--quick", "--time-budget", "900", "--out", str(tmp_path)],
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "models.json").read_text())
    assert res["complete"] and res["env"]["settings"]["batch"] == 2
    assert [row["model"] for row in res["eval"]] == ["resnet50", "inception_v3", "legacy_xception",
                                                     "mobilenetv1_100", "mobilenet_v2", "efficientnet_b0"]
    for row in res["eval"] + res["train"]:
        assert row["status"] == "ok", row
        assert row["eager_ms"] > 0 and row["swapped_ms"] > 0 and row["speedup_vs_eager"] > 0
        assert row["blocks_swapped"] > 0, row["model"]
    assert next(row for row in res["eval"] if row["model"] == "inception_v3")["image"] == 75  # its minimum
    assert [row["model"] for row in res["train"]] == ["resnet50", "mobilenet_v2"]
    for variant in ("swapped", "eager"):
        split = res["profile"][variant]
        assert 0 <= split["outside_conv_gemm_pct"] <= 100 and split["conv_gemm_ms"] > 0
        assert any(k["conv_gemm"] for k in split["kernels"]) and any(not k["conv_gemm"] for k in split["kernels"])
    assert res["compile"] == [] and any("torch.compile" in s for s in res["skipped"])
    md = (tmp_path / "models.md").read_text()
    for heading in ("## Eval", "## Time outside convolution/GEMM", "## Training step"):
        assert heading in md


KERNEL_CLASSES = [
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", True),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_relu_f16_32x32_128x2_nn_align8>", True),
    ("ampere_fp16_s16816gemm_fp16_64x64_sliced1x2_ldg8_f2f_stages_64x5_tn", True),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __half, float>", True),
    ("void fastblocks::cuda::(anonymous namespace)::tiled_program_kernel<fastblocks::tiled::NhwcForward<>>", True),
    ("mkldnn::_convolution_pointwise", True), ("aten::addmm", True),
    ("void cudnn::ops::nchwToNhwcKernel<__half, __half, float, false, true>", False),
    ("void cudnn::bn_fw_inf_1C11_kernel_NHWC<__half, float, true, 1>", False),
    ("void fastblocks::cuda::(anonymous namespace)::add_relu_forward_kernel<c10::Half, 8>", False),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::Half>>", False),
    ("void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::Half>", False),
    ("Memcpy DtoD (Device -> Device)", False), ("aten::max_pool2d_with_indices", False),
]


def test_profile_split_classifies_kernel_names(gpu_models):
    for name, conv_gemm in KERNEL_CLASSES:
        assert gpu_models.is_conv_gemm(name) == conv_gemm, name


@pytest.fixture(scope="module")
def gpu_models():
    spec = importlib.util.spec_from_file_location("gpu_models", ROOT / "benchmarks" / "gpu_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
