"""Small helpers the family tests share."""

import contextlib
import json
import warnings

import torch


def undo_leftover_routes() -> list[str]:
    """Restore every module attribute GNA still routes (an installation not removed) and name them."""
    from gna_diffusers import route

    leftover = list(route._ROUTED)
    for module, attribute in leftover:
        setattr(module, attribute, getattr(module, attribute).original)
    route._ROUTED.clear()
    return [f"{module.__name__}.{attribute}" for module, attribute in leftover]


def assert_whole_windows_reproduce(pipe, family: str, generate, stock: torch.Tensor, tolerance: float = 1e-5,
                                   **config) -> None:
    """Under whole-extent windows (``window: -1``, and any other ``config`` fields) ``generate()`` gives ``stock``
    within ``tolerance``, and GNA says nothing (the layout was understood)."""
    from gna_diffusers import GNAConfig, enabled

    with no_gna_warnings(), enabled(pipe, GNAConfig(family=family, window=-1, **config)):
        assert max_diff(generate(), stock) <= tolerance


def assert_round_trip(transformer, family: str, inputs: dict, check=None, sparse_window: int = 2) -> torch.Tensor:
    """The three checks every family's transformer passes on one set of ``inputs``: under whole-extent windows GNA
    reproduces the stock output within 1e-5, says nothing, and ``check(handle)`` holds (e.g. which processors it
    installed); a ``sparse_window`` changes the output by more than 1e-3; after removal the output is the stock
    one, bit for bit. Runs the transformer four times (stock, whole, sparse, removed). Returns the stock output."""
    from gna_diffusers import GNAConfig, enabled

    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with no_gna_warnings(), enabled(transformer, GNAConfig(family=family, window=-1)) as handle:
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
            if check is not None:
                check(handle)
        with enabled(transformer, GNAConfig(family=family, window=sparse_window)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
        assert torch.equal(transformer(**inputs)[0], stock)  # removed: bit-identical
    return stock


def assert_equals_masked_stock(transformer, family: str, inputs: dict, grid, window, stride, mask_stock,
                               tolerance: float = 1e-5) -> None:
    """GNA with ``window`` and ``stride`` (on a preset whose base grid is ``grid``) gives the output of the stock
    transformer whose attention ``mask_stock()`` has masked independently (e.g. with brute_force's joint_mask)."""
    from gna_diffusers import GNAConfig, enabled

    config = GNAConfig(family=family, base_grid=list(grid), window=list(window), stride=list(stride))
    with torch.no_grad():
        with enabled(transformer, config):
            routed = transformer(**inputs)[0]
        mask_stock()
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= tolerance


def skip_unless_triton_interprets() -> None:
    """Skip the calling test where the Triton interpreter cannot run the kernel (triton missing, or triton < 3.7
    with numpy >= 2.4: ``triton_gna.interpreter_problem``), with the reason."""
    import pytest

    from gna_diffusers.backends import triton_gna

    problem = triton_gna._IMPORT_ERROR or triton_gna.interpreter_problem()
    if problem is not None:
        pytest.skip(problem)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference between two tensors of one shape."""
    return (a - b).abs().max().item()


@contextlib.contextmanager
def no_gna_warnings():
    """Inside: any warning of gna_diffusers' (its messages start with "gna") fails the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        yield


def harness_loads(monkeypatch, family, pipes) -> None:
    """Make ``compare`` / ``sweep`` load ``pipes`` (one pipeline for any model name, or a dict name -> pipeline) as
    pretrained models of ``family`` (its patches/ module): tiny pipelines that have no folder to load from."""
    import gna_diffusers.harness.runner as runner
    from gna_diffusers.harness.models import Model

    def load(name, device, dtype):
        pipe = pipes[name] if isinstance(pipes, dict) else pipes
        return Model(name, family, pipe, pipe.transformer, "pretrained")

    monkeypatch.setattr(runner, "load_pipeline", load)


def random_weights_report(module, model: str, size: list[str], tmp_path, monkeypatch) -> dict:
    """The report of ``compare --random-weights --model <model>`` at ``size`` (its CLI arguments), the family
    ``module``'s full-size config swapped for its tiny transformer's and its text for 8 tokens."""
    from gna_diffusers.cli import main

    monkeypatch.setattr(module, "FULL_CONFIG", dict(module.tiny_transformer().config))
    monkeypatch.setattr(module, "TEXT_TOKENS", 8)
    assert main(["compare", "--random-weights", "--model", model, *size, "--repeats", "1",
                 "--output", str(tmp_path)]) == 0
    return json.loads((tmp_path / "report.json").read_text())
