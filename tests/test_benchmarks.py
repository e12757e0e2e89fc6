"""The benchmark scripts run end to end at tiny sizes on CPU (speed is never asserted here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import skip_unless_triton_interprets

from gna_diffusers import load_preset
from gna_diffusers.config import dense_step_count

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the module runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kernel_bench_tiny_writes_json_and_markdown(tmp_path):
    skip_unless_triton_interprets()
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


def test_kernel_bench_profile_runs_each_case_once_and_writes_nothing(tmp_path, capsys):
    """--profile (for ncu): the tuned triton kernel and the dense baseline once each, no result files."""
    skip_unless_triton_interprets()
    assert load("kernel_bench").main(["--tiny", "--device", "cpu", "--profile", "--cases", "3-D",
                                      "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny 3-D +text: profiled triton KernelConfig(" in out and "and math" in out
    assert not list(tmp_path.iterdir())


def test_kernel_bench_floors_need_no_gpu(capsys):
    assert load("kernel_bench").main(["--floors"]) == 0
    out = capsys.readouterr().out
    assert "| flux-4k +text" in out and "9.56x" in out  # the simulator's FLOP bound with 512 text keys


def test_kernel_bench_refuses_paper_shapes_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        load("kernel_bench").main(["--device", "cpu"])
    assert "need a CUDA GPU; use --tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_suite_tiny_runs_end_to_end_and_feeds_the_readme(tmp_path):
    skip_unless_triton_interprets()
    sys.path.insert(0, str(BENCHMARKS))  # gpu_suite imports kernel_bench as a sibling script
    suite = load("gpu_suite")
    assert suite.main(["--tiny", "--device", "cpu", "--output", str(tmp_path)]) == 0
    (results_path,) = tmp_path.glob("cpu-*.json")
    results = json.loads(results_path.read_text())
    assert results["suite"] == "gpu" and len(results["kernel"]["rows"]) == len(suite.kernel_bench.TINY_CASES)
    for row in results["models"]:
        assert row["dense_step_ms"] > 0 and row["gna_step_ms"] > 0
        schedule = row["end_to_end"]
        assert schedule["dense_warmup_steps"] == dense_step_count(load_preset(row["preset"]), schedule["steps"])
    assert suite.newest_results(tmp_path) == results_path

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{suite.MARKERS[0]}\nold text\n{suite.MARKERS[1]}\n\nrest\n")
    suite.update_readme(readme, results_path)
    text = readme.read_text()
    assert "old text" not in text and "| tiny FLUX 64x64" in text and text.endswith("rest\n")
    assert "Measured on **cpu" in text
    # A second part of the same run (other models, no kernels): the README table merges both parts.
    assert suite.main(["--tiny", "--device", "cpu", "--output", str(tmp_path), "--models", "wan", "--no-kernels"]) == 0
    part = tmp_path / f"{results['stem']}-wan.json"
    assert json.loads(part.read_text())["kernel"]["rows"] == []
    suite.update_readme(readme, part)
    text = readme.read_text()
    assert "| tiny FLUX 64x64" in text and "| tiny Wan 64x64x9" in text and "tiny 2-D" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    suite.update_readme(readme, folder=empty)
    assert "H100 figures are pending" in readme.read_text() and "| tiny FLUX" not in readme.read_text()


def test_a_failing_model_case_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch, capsys):
    """A lent device's minutes are scarce: a case that fails (out of memory, say) is recorded with its error, the
    part's other cases still run, the exit status says so, and the README lists it until a part measures it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    suite = load("gpu_suite")
    failing, measured = {"tiny FLUX 64x64"}, []

    def run_model(case, device, tiny):
        if case.name in failing:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        measured.append(case.name)
        return {"case": case.name, "model": case.model, "preset": case.preset, "grid": [3, 4, 4], "text_tokens": 8,
                "dense_step_ms": 2.0, "gna_step_ms": 1.0, "speedup_per_step": 2.0,
                "end_to_end": {"dense_warmup_steps": 1, "steps": 4, "speedup": 1.5},
                "peak_memory_gib": {"dense": None, "gna": None}, "paper_b200_end_to_end": None, "targets": None}

    monkeypatch.setattr(suite, "run_model", run_model)
    part_args = ["--tiny", "--device", "cpu", "--output", str(tmp_path), "--no-kernels", "--models"]
    assert suite.main([*part_args, "flux,wan"]) == 1
    assert measured == ["tiny Wan 64x64x9"]
    error = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert f"tiny FLUX 64x64: failed: {error}" in capsys.readouterr().out
    (part,) = tmp_path.glob("cpu-*.json")
    assert json.loads(part.read_text())["failures"] == [{"case": "tiny FLUX 64x64", "error": error}]
    readme = tmp_path / "README.md"
    readme.write_text(f"{suite.MARKERS[0]}\n{suite.MARKERS[1]}\n")
    suite.update_readme(readme, part)
    assert f"Not measured: tiny FLUX 64x64 ({error})." in readme.read_text()
    failing.clear()
    assert suite.main([*part_args, "flux"]) == 0  # a later part of the run measures it
    suite.update_readme(readme, next(tmp_path.glob("cpu-*-flux.json")))
    assert "Not measured" not in readme.read_text() and "| tiny FLUX 64x64" in readme.read_text()


@pytest.mark.slow
def test_suite_parts_without_kernels_take_the_kernel_rows_of_kernel_bench(tmp_path):
    """On a 10-minute device call: kernel_bench in one call, the model parts with --no-kernels in others;
    the README table still has the kernel rows (kernel_bench's file of the same GPU and day)."""
    skip_unless_triton_interprets()
    sys.path.insert(0, str(BENCHMARKS))
    suite = load("gpu_suite")
    assert suite.kernel_bench.main(["--tiny", "--device", "cpu", "--reps", "1", "--cases", "3-D", "--output",
                                    str(tmp_path)]) == 0
    (kernel_path,) = tmp_path.glob("kernel-cpu-*.json")
    kernel = json.loads(kernel_path.read_text())
    assert kernel["suite"] == "kernel" and [row["case"] for row in kernel["rows"]] == ["tiny 3-D +text"]
    assert suite.main(["--tiny", "--device", "cpu", "--output", str(tmp_path), "--models", "flux", "--no-kernels"]) == 0
    (part,) = tmp_path.glob("cpu-*-flux.json")
    merged = suite.merged_results(part, tmp_path)
    assert [row["case"] for row in merged["kernel"]["rows"]] == ["tiny 3-D +text"] and merged["merged"]
    readme = tmp_path / "README.md"
    readme.write_text(f"{suite.MARKERS[0]}\n{suite.MARKERS[1]}\n")
    suite.update_readme(readme, part)
    assert "| tiny 3-D +text" in readme.read_text() and "| tiny FLUX 64x64" in readme.read_text()


def test_every_suite_case_names_one_family_its_preset_is_for(monkeypatch):
    """The GPU suite builds each case's transformer from its name alone (random weights): the name must pick one
    family (hunyuanvideo-community's HunyuanImage repositories are not HunyuanVideo) and the case's preset be that
    family's; the full-size config must build (on meta) and take the case's size."""
    from gna_diffusers.harness.models import family_named, on_meta

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # gpu_suite imports kernel_bench as a sibling script
    for case in load("gpu_suite").MODEL_CASES:
        family = family_named(case.model)
        assert family.PATCH.family == load_preset(case.preset).family, case.name
        config, grid = family.full_size(case.model) if hasattr(family, "full_size") else (family.FULL_CONFIG, None)
        on_meta(family.PATCH.transformer_class, config)
        (grid or family.latent_grid)(case.height, case.width, case.frames)


def test_every_device_call_part_runs_its_cases_and_every_case_has_a_part(monkeypatch):
    """Each ``suite "..."`` part of benchmarks/device_call.sh names parts of case names that each pick a case (as
    gpu_suite's --models matches them), and every model case is in some part: a lent device's minutes are not spent
    on a part that stops at its argument check, nor is a case never run, nor run by two ``models`` parts (``first``
    repeats ``models1``'s bars on purpose)."""
    import re

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cases = [f"{case.name} {case.model}".lower() for case in load("gpu_suite").MODEL_CASES]
    parts, part = [], None
    for line in (BENCHMARKS / "device_call.sh").read_text().splitlines():
        part = (re.match(r"\s+(\w+)\)", line) or [None, part])[1]
        parts += [(part, names) for names in re.findall(r'^\s+(?:\w+\) )?suite "([^"]+)"', line)]
    assert {part for part, _ in parts} >= {"first", "models1", "models11"}, parts
    covered, owner = set(), {}
    for part, names in parts:
        for name in names.split(","):
            matched = {case for case in cases if name.strip().lower() in case}
            assert matched, f"{part}: {name!r} matches no model case"
            covered |= matched
            for case in matched if part.startswith("models") else ():
                assert owner.setdefault(case, part) == part, f"{case!r} runs in {owner[case]} and in {part}"
    assert covered == set(cases)


STUB_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
    *kernel_bench*) exit 1 ;;  # a failing step: the next ones still run, the call's status says it failed
    *) exit 0 ;;
esac
"""


def run_device_call(tmp_path: Path, part: str, seconds: int) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    """benchmarks/device_call.sh PART in a copy of the repo with stand-ins for the device's python3 and nvidia-smi
    (each call's arguments are logged) and one carried wheel; DEVICE_CALL_SECONDS shortens the call's deadline."""
    import os
    import shutil
    import stat

    repo, bin_dir, out = tmp_path / "repo", tmp_path / "bin", tmp_path / "out"
    (repo / "benchmarks").mkdir(parents=True)
    for name in ("device_call.sh", "device_setup.sh"):
        shutil.copy(BENCHMARKS / name, repo / "benchmarks" / name)
    (repo / ".whl").mkdir()
    (repo / ".whl" / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    bin_dir.mkdir()
    for name, text in (("python3", STUB_PYTHON), ("nvidia-smi", "#!/usr/bin/env bash\necho stub-gpu\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "CALLS": str(calls),
           "DEVICE_CALL_SECONDS": str(seconds)}
    result = subprocess.run(["bash", "benchmarks/device_call.sh", part], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.exists() else [], out


def test_device_call_first_runs_the_bars_then_the_tests_and_a_failed_step_stops_none(tmp_path):
    result, calls, out = run_device_call(tmp_path, "first", 540)
    steps = [call for call in calls if call.startswith(("benchmarks/", "-m pytest"))]  # not set-up's pip, version
    assert [call.split()[0 if call.startswith("benchmarks/") else 1] for call in steps] == [
        "benchmarks/kernel_bench.py", "benchmarks/gpu_suite.py", "pytest"], calls
    assert '--cases flux-4k +text,hunyuan 30x48x80 +text' in steps[0]
    assert "--models flux.1-dev,768x1280x117 --no-kernels --no-readme" in steps[1]
    assert result.returncode == 1  # the kernel step failed
    assert {path.name for path in out.iterdir()} == {"setup.log", "kernels.log", "models.log", "tests.log"}
    assert "stub-gpu" in (out / "setup.log").read_text()


def test_device_call_skips_steps_past_its_deadline_and_says_so(tmp_path):
    result, calls, out = run_device_call(tmp_path, "first", 20)
    assert not [call for call in calls if "benchmarks/" in call or "pytest" in call]
    assert result.returncode == 1
    assert "no time left for 'python3 -m pytest" in (out / "tests.log").read_text()
