"""The benchmark scripts run end to end at tiny sizes on CPU (speed is never asserted here)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the module runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kernel_bench_tiny_writes_json_and_markdown(tmp_path):
    assert load("kernel_bench").main(["--tiny", "--device", "cpu", "--reps", "1", "--output", str(tmp_path)]) == 0
    (report_path,) = tmp_path.glob("kernel-cpu-*.json")
    report = json.loads(report_path.read_text())
    assert report["environment"]["device"].startswith("cpu") and report["heads"] == 2
    for row in report["rows"]:
        assert set(row["ms"]) == {"math", "flex", "triton"} and all(ms > 0 for ms in row["ms"].values())
        assert row["triton_vs_flex_max_abs_err"] < 1e-4
        assert row["flop_bound"] >= row["tile_bound"] > 1
    markdown = report_path.with_suffix(".md").read_text()
    assert "| tiny 3-D +text" in markdown and "triton TFLOP/s" in markdown


def test_kernel_bench_refuses_paper_shapes_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        load("kernel_bench").main(["--device", "cpu"])
    assert "need a CUDA GPU; use --tiny" in capsys.readouterr().err
