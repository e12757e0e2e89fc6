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
