"""GNA under diffusers' Ulysses context parallelism, on CPU with two gloo processes: each family's tiny
transformer sharded over 2 ranks gives single-process GNA's output, whichever of apply() and
enable_parallelism() comes first (Qwen-Image with a padded batch: its key mask is sharded too); ring
attention is refused clearly.

What this cannot cover: NCCL, GPU timing and overlap, more than 2 ranks, and diffusers' unified
ring + Ulysses mode (refused like ring)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gna_diffusers.parallel import global_order

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(family: str):
    from gna_diffusers import GNAConfig

    if family == "flux":
        return GNAConfig(family="flux", base_grid=[8, 8], window=[2, 4], stride=[1, 2])
    if family == "qwen-image":
        return GNAConfig(family="qwen-image", base_grid=[4, 6], window=[2, 2])
    return GNAConfig(family="wan", base_grid=[4, 4, 4], window=[2, 2, 2])


def inputs_for(family: str, transformer):
    from gna_diffusers.patches import flux, qwen_image, wan

    if family == "flux":
        return flux.transformer_inputs(transformer, (8, 8), text=6, batch=2)
    if family == "qwen-image":
        return qwen_image.transformer_inputs(transformer, (4, 6), text=6, batch=2, valid_text=(3, 6))
    return wan.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2)


def worker(rank: int, world: int, port: int, family: str, folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # diffusers finds its device through the accelerator API: point it at the CPU (gloo).
    torch.accelerator.device_count = lambda: world
    torch._C._get_accelerator = lambda: torch.device("cpu")
    from diffusers import ContextParallelConfig

    from gna_diffusers import ConfigError, apply, remove
    from gna_diffusers.patches import FAMILY_MODULES

    module = FAMILY_MODULES[family]
    results = {}
    for order in ("apply-first", "parallel-first"):
        transformer = module.tiny_transformer()
        inputs = inputs_for(family, transformer)
        with torch.no_grad():
            if order == "apply-first":
                results["stock"] = transformer(**inputs)[0].clone()
                apply(transformer, config_for(family))
                results["single"] = transformer(**inputs)[0].clone()
                transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            else:
                transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
                apply(transformer, config_for(family))
            results[order] = torch.as_tensor(transformer(**inputs)[0]).clone()
        remove(transformer)
    ring = module.tiny_transformer()
    apply(ring, config_for(family))
    try:
        ring.enable_parallelism(config=ContextParallelConfig(ring_degree=world))
        results["ring"] = "accepted"
    except ConfigError as error:
        results["ring"] = str(error)
    if rank == 0:
        torch.save(results, os.path.join(folder, f"{family}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("family", ["flux", "wan", "qwen-image"])
def test_ulysses_degree_2_equals_single_process_gna(family, tmp_path):
    mp.spawn(worker, args=(2, free_port(), family, str(tmp_path)), nprocs=2)
    results = torch.load(tmp_path / f"{family}.pt")
    assert (results["single"] - results["stock"]).abs().max() > 1e-3  # the windows are sparse: GNA ran
    for order in ("apply-first", "parallel-first"):
        torch.testing.assert_close(results[order], results["single"], atol=1e-5, rtol=1e-5)
    assert "Ulysses context parallelism only" in results["ring"]


def test_global_order_puts_rank_major_shards_back_in_sequence_order():
    # 2 ranks, each [text (2), image (3)]: rank-major t0 t0 i0 i0 i0 t1 t1 i1 i1 i1 -> t t t t i i i i i i
    assert global_order(2, 2, 3).tolist() == [0, 1, 5, 6, 2, 3, 4, 7, 8, 9]
