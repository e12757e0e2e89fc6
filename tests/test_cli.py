import json

from gna_diffusers.cli import main


def test_sim_prints_the_table(capsys):
    assert main(["sim", "--grid", "30,48,80", "--window", "18,24,24", "--stride", "16,8,8",
                 "--q-tile", "2,8,8", "--kv-tile", "2,8,8"]) == 0
    out = capsys.readouterr().out
    assert "11.11x" in out and "| yes" in out and "72900" in out


def test_sim_paper_json(capsys):
    assert main(["sim", "--paper", "--json"]) == 0
    rows = {row["config"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["flux-4k"]["partial_pairs"] == 0
    assert round(rows["flux-4k stride 1"]["tile_bound"], 2) == 7.51


def test_sim_bad_window_is_one_clear_error(capsys):
    assert main(["sim", "--grid", "30,48,80", "--window", "18,24,90"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gna-diffusers sim: error: window[2]=90") and "Traceback" not in err


def test_sim_needs_grid_and_window(capsys):
    assert main(["sim"]) == 2
    assert "--grid and --window" in capsys.readouterr().err


def backend_rows(out: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in out.splitlines()[2:] if line.startswith("| ")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}


def test_backends_says_which_run_here_why_not_and_what_auto_picks(capsys, monkeypatch):
    """On this CPU (the tests interpret triton): every backend runs an fp32 call and auto takes the reference; a
    bfloat16 call is refused by triton's interpreter with the reason; without the interpreter triton needs CUDA."""
    import torch

    from gna_diffusers.backends import triton_gna

    assert main(["backends", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = backend_rows(out)
    assert list(rows) == ["reference", "flex", "triton"]  # auto's order on a CPU first
    assert rows["reference"] == ["yes", ""] and "auto picks: reference" in out
    assert f"torch {torch.__version__}" in out and "diffusers 0.42" in out
    assert main(["backends", "--device", "cpu", "--dtype", "bf16"]) == 0
    assert backend_rows(capsys.readouterr().out)["triton"][1].startswith("bfloat16 under the Triton interpreter")
    monkeypatch.setattr(triton_gna, "_interpreting", lambda: False)
    assert main(["backends", "--device", "cpu"]) == 0
    assert backend_rows(capsys.readouterr().out)["triton"] == [
        "no", "needs a CUDA device (or TRITON_INTERPRET=1 set before importing triton, for CPU tests)"]


def test_backends_on_a_missing_gpu_is_one_line_with_the_fix(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["backends", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().endswith("leave out --device to check the CPU")


def test_families_lists_every_supported_family_with_its_presets(capsys):
    from gna_diffusers.patches import PATCHES, omnigen

    assert main(["families"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == set(PATCHES)
    assert "HunyuanVideoFramepackTransformer3DModel" in rows["hunyuan-video"] and "z-image-2k" in rows["z-image"]
    assert "tiny-skyreels-v2" in rows["skyreels-v2"]
    cells = {family: [cell.strip() for cell in row.split("|")[4:6]] for family, row in rows.items()}
    assert cells["flux3"] == ["none", "yes"] and cells["wan-animate2"] == ["none", "yes"]
    # compare refuses OmniGen's weights without torchvision (which CI lacks)
    assert cells["omnigen"] == (["none", "no: --random-weights"] if omnigen.WEIGHTS_GAP else ["tiny-omnigen", "yes"])
    assert cells["flux"] == ["tiny-flux", "yes"]


def test_our_type_errors_are_one_line_and_another_librarys_keep_their_traceback(monkeypatch, capsys):
    """UnsupportedModelError (a TypeError) is one line, as every error of ours; a TypeError raised in another
    library (here: an argument transformers' mask helper did not know, as transformers 5.0 under diffusers 0.42)
    is a bug or a version mismatch, so it propagates with its traceback instead of reading like a user error."""
    import pytest

    from gna_diffusers import UnsupportedModelError, cli

    def unsupported(args):
        raise UnsupportedModelError("gna_diffusers.apply: no GNA patch for UNet2DConditionModel")

    monkeypatch.setattr(cli, "_cmd_sim", unsupported)
    assert main(["sim", "--paper"]) == 2
    assert capsys.readouterr().err == ("gna-diffusers sim: error: gna_diffusers.apply: no GNA patch for "
                                       "UNet2DConditionModel\n")

    def foreign(args):
        return sorted([1], key=lambda item, extra: item)  # a TypeError raised by Python's sorted, not by us

    monkeypatch.setattr(cli, "_cmd_sim", foreign)
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        main(["sim", "--paper"])
