"""The README describes what the code ships: a row per family in the families table, a row per preset in the
presets table (dense-check aside: it is a test preset, named in the text), every family in the preset file's list."""

import re
from pathlib import Path

from gna_diffusers import list_presets
from gna_diffusers.patches import PATCHES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ROWS = set(re.findall(r"^\| `([a-z0-9.\-]+)` \|", README, re.M))


def test_every_family_has_a_row():
    assert set(PATCHES) <= ROWS


def test_every_preset_has_a_row():
    assert set(list_presets()) - {"dense-check"} <= ROWS and "dense-check" in README


def test_the_preset_file_example_lists_every_family():
    (families,) = re.findall(r"^family: flux +# (.+)$", README, re.M)
    assert set(families.split(" | ")) == set(PATCHES)


def test_the_preset_file_example_names_each_familys_block_types():
    """Every family whose blocks are not the one type ``blocks`` is named after its own block types."""
    (line,) = re.findall(r"^dense_layers: .+# block types: (.+)$", README, re.M)
    named = {family: types for types, families in re.findall(r"([a-z, ]+?) \(([^)]+)\)", line)
             for family in re.split(r",\s*", families)}
    for family, patch in PATCHES.items():
        if tuple(patch.blocks) != ("blocks",) and family != "wan":
            assert named.get(family, "").strip(" ;") == ", ".join(patch.blocks), family
