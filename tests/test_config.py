import pytest

from gna_diffusers import ConfigError, GNAConfig, list_presets, load_config, load_preset
from gna_diffusers.cli import main
from gna_diffusers.config import LayerPattern, dense_step_count, layer_patterns
from gna_diffusers.sim import simulate


def test_every_shipped_preset_validates():
    names = list_presets()
    assert {"flux-4k", "flux-2k", "flux-4k-conservative", "hunyuan-video-720p", "hunyuan-video-720p-129f",
            "hunyuan-video-720p-conservative"} <= set(names)
    for name in names:
        config = load_preset(name)
        assert config.description


@pytest.mark.parametrize("name, steps, dense", [("flux-4k", 28, 9), ("hunyuan-video-720p", 50, 15)])
def test_paper_presets_keep_the_papers_dense_warmup(name, steps, dense):
    assert dense_step_count(load_preset(name), steps) == dense


@pytest.mark.parametrize("name", ["flux-4k", "hunyuan-video-720p"])
def test_paper_presets_are_perfectly_block_sparse(name):
    config = load_preset(name)
    tiles = {2: ((8, 16), (8, 16)), 3: ((2, 8, 8), (2, 8, 8))}[len(config.base_grid)]
    result = simulate(config.base_grid, config.window, config.stride, q_tile=tiles[0], kv_tile=tiles[1])
    assert result.perfectly_block_sparse and result.density < 0.1


BASE = "family: flux\nbase_grid: [64, 64]\nwindow: [16, 16]\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("family: flux\nbase_grid: [64, 64\n", r"(?s)bad.yaml: invalid YAML: .*line 2"),
        (BASE + "windw: 3\n", r"bad.yaml: windw: unknown key\n\(allowed top-level keys: family, base_grid"),
        (BASE + "stride: [32, 4]\n", r"bad.yaml: stride\[0\]=32 is larger than window\[0\]=16"),
        (BASE.replace("flux", "sdxl"), r"bad.yaml: family: unknown family 'sdxl'; allowed: flux, hunyuan-video"),
        (BASE + "dense_steps: -2\n", r"bad.yaml: dense_steps: must be a step count >= 0"),
        (BASE + "dense_steps: 1.5\n", r"bad.yaml: dense_steps: a fraction of the steps must be < 1"),
        (BASE + "window: [16, 1]\n", r"window\[1\]=1: must be >= 2, or -1"),
        (BASE.replace("[16, 16]", "[16, 16, 16]"), r"window has 3 entries but base_grid has 2"),
        (BASE + "overrides: [{blocks: triple}]\n",
         r"overrides\[0\].blocks: unknown block type 'triple'.*allowed: double, single"),
        (BASE + 'dense_layers: [{blocks: single, layers: "3-1"}]\n',
         r"dense_layers.0.layers: layer range '3-1' ends before it starts"),
        ("- just a list\n", r"bad.yaml: expected a mapping of keys"),
        ("family: any\nwindow: [8, 8]\n", r"window: per-dimension values need base_grid"),
        ("family: any\nwindow: -1\ndense_layers: [{blocks: double}]\n", r"need a model family, not 'any'"),
    ],
)
def test_broken_yaml_files_give_one_clear_message(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read preset file"):
        load_config(tmp_path / "nope.yaml")


def test_layer_patterns_apply_overrides_then_dense_layers():
    config = GNAConfig(
        family="flux", base_grid=[64, 64], window=8, stride=4,
        overrides=[{"blocks": "single", "layers": "0-3,7", "window": [16, 16]}],
        dense_layers=[{"blocks": "single", "layers": 7}, {"blocks": "double"}],
    )
    patterns = layer_patterns(config, {"double": 2, "single": 8})
    assert all(patterns[("double", i)].dense for i in range(2))
    assert patterns[("single", 2)] == LayerPattern(False, (16, 16), (4, 4), (1, 1))
    assert patterns[("single", 5)] == LayerPattern(False, (8, 8), (4, 4), (1, 1))
    assert patterns[("single", 7)].dense


def test_resolution_adaptation_keeps_sparsity_and_tile_alignment():
    flux_4k = LayerPattern(False, (80, 80), (16, 16), (1, 1))
    assert flux_4k.resolve((256, 256), (256, 256)) == flux_4k
    assert flux_4k.resolve((256, 256), (128, 128)) == LayerPattern(False, (40, 40), (8, 8), (1, 1))
    wide = flux_4k.resolve((256, 256), (256, 128))  # a 2:1 image: only the short side shrinks
    assert wide.window == (80, 40) and wide.stride == (16, 8)
    assert flux_4k.resolve((256, 256), (40, 64)).window == (16, 24)  # 12.5 -> 16, 20 -> 24: multiples of 8
    whole = LayerPattern(False, (-1, 24), (1, 8), (1, 1)).resolve((30, 48), (33, 45))
    assert whole.window[0] == 33 and whole.window[1] % 8 == 0
    anywhere = LayerPattern(False, (-1,), (1,), (1,)).resolve(None, (3, 5, 7))
    assert anywhere.window == (3, 5, 7)  # no base grid: one value for every dimension, unscaled
    assert LayerPattern(False, (8,), (4,), (1,)).resolve(None, (6, 64)).window == (6, 8)
    with pytest.raises(ConfigError, match="preset is for a 2-D grid"):
        flux_4k.resolve((256, 256), (4, 64, 64))


def test_cli_presets_list_show_validate(capsys, tmp_path):
    assert main(["presets", "list"]) == 0
    out = capsys.readouterr().out
    assert "| flux-4k " in out and "90.2%" in out and "hunyuan-video-720p-129f" in out
    assert main(["presets", "show", "hunyuan-video-720p"]) == 0
    assert "stride: [16, 8, 8]" in capsys.readouterr().out
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(BASE)
    bad.write_text(BASE + "stride: 99\n")
    assert main(["presets", "validate", str(good)]) == 0
    assert "is a valid flux preset" in capsys.readouterr().out
    assert main(["presets", "validate", str(bad)]) == 2
    assert "stride[0]=99 is larger than window[0]=16" in capsys.readouterr().err
    assert main(["presets", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert f"unknown preset 'nope'; shipped presets: {', '.join(list_presets())}" in err
