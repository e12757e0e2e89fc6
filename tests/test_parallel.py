"""GNA under diffusers' context parallelism, on CPU with gloo processes: each family's tiny transformer sharded over 2
ranks (FLUX, FLUX.2, Wan, Qwen-Image, HunyuanVideo, HunyuanImage 2.1, LTX-Video, ChronoEdit, Helios with its
history, MiniMax-H3's packed sequence), Ulysses or ring, gives single-process GNA's output, whichever of apply() and
enable_parallelism() comes first (Qwen-Image and HunyuanVideo with padded batches: their key masks are sharded too;
HunyuanVideo with gna_diffusers' own plan); so does unified ring 2 x Ulysses 2 on 4 ranks, and so does diffusers'
tensor parallelism (heads sharded) on the families with a ``_tp_plan``. The 2-rank cases share one group of ranks
per test process (``GlooRanks``).

What this cannot cover: NCCL, GPU timing and overlap."""

import io
import os
import queue
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from gna_diffusers.parallel import sharded_order

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo_group(rank: int, world: int, port: int) -> None:
    """Join the CPU process group and point diffusers, which finds its device through the accelerator API, at it."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.accelerator.device_count = lambda: world
    torch._C._get_accelerator = lambda: torch.device("cpu")


def rank_loop(rank: int, world: int, port: int, jobs, results) -> None:
    """One rank of a :class:`GlooRanks` group: runs each job ``(function, args)`` as ``function(rank, world, *args)``
    until it gets None; puts ``(rank, rank 0's result saved with torch.save, error traceback)`` for each."""
    import torch.distributed as dist
    from helpers import undo_leftover_routes

    join_gloo_group(rank, world, port)
    while (job := jobs.get()) is not None:
        function, args = job
        try:
            result = function(rank, world, *args)
            if leftover := undo_leftover_routes():  # each job starts from stock modules, as each test (conftest)
                raise AssertionError(f"GNA left applied on {leftover}")
            dist.barrier()  # no rank starts the next job while another still exchanges this one's tensors
            payload = None
            if rank == 0:
                buffer = io.BytesIO()
                torch.save(result, buffer)
                payload = buffer.getvalue()
            results.put((rank, payload, None))
        except BaseException:
            results.put((rank, None, traceback.format_exc()))
            return  # the group is broken (a rank may wait in a collective): the parent ends every rank
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()


class GlooRanks:
    """``world`` spawned CPU ranks in one gloo process group, shared by the jobs of a test module: starting ranks
    (each imports torch and diffusers' models) costs about 10 s on two cores, more than most jobs. A job that fails
    or hangs on any rank ends the group (a rank left inside a collective would wait forever); the next job starts a
    new one."""

    def __init__(self, world: int, timeout_s: float = 600.0):
        self.world, self.timeout_s = world, timeout_s
        self.processes: list = []

    def _start(self) -> None:
        context = mp.get_context("spawn")
        self.jobs = [context.Queue() for _ in range(self.world)]
        self.results = context.Queue()
        port = free_port()
        self.processes = [
            context.Process(target=rank_loop, args=(rank, self.world, port, self.jobs[rank], self.results), daemon=True)
            for rank in range(self.world)]
        for process in self.processes:
            process.start()

    def run(self, function, *args):
        """``function(rank, world, *args)`` on every rank (a module-level function); returns rank 0's result."""
        if not self.processes:
            self._start()
        for jobs in self.jobs:
            jobs.put((function, args))
        payloads: dict[int, bytes | None] = {}
        waited = 0.0
        try:
            while len(payloads) < self.world:
                try:
                    rank, payload, error = self.results.get(timeout=5.0)
                except queue.Empty:
                    waited += 5.0
                    dead = [rank for rank, process in enumerate(self.processes) if not process.is_alive()]
                    if dead or waited >= self.timeout_s:
                        why = f"rank(s) {dead} exited" if dead else f"no result after {self.timeout_s:.0f} s"
                        raise RuntimeError(f"{function.__name__}{args}: {why}") from None
                    continue
                if error is not None:
                    raise RuntimeError(f"{function.__name__}{args} failed on rank {rank}:\n{error}")
                payloads[rank] = payload
        except BaseException:
            self.close(graceful=False)
            raise
        return torch.load(io.BytesIO(payloads[0]))

    def close(self, graceful: bool = True) -> None:
        if not self.processes:  # never started, or already ended
            return
        if graceful:
            for jobs in self.jobs:
                jobs.put(None)
        for process in self.processes:
            process.join(timeout=30 if graceful else 0)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = []


@pytest.fixture(scope="module")
def two_ranks():
    ranks = GlooRanks(2)
    yield ranks
    ranks.close()


def config_for(family: str):
    from gna_diffusers import GNAConfig

    if family == "flux":
        return GNAConfig(family="flux", base_grid=[8, 8], window=[2, 4], stride=[1, 2])
    if family == "qwen-image":
        return GNAConfig(family="qwen-image", base_grid=[4, 6], window=[2, 2])
    if family == "hunyuan-video":
        return GNAConfig(family="hunyuan-video", base_grid=[2, 4, 4], window=[2, 2, 2])
    if family == "hunyuan-image":
        return GNAConfig(family="hunyuan-image", base_grid=[4, 6], window=[2, 2])
    if family == "flux2":
        return GNAConfig(family="flux2", base_grid=[8, 8], window=[2, 4], stride=[1, 2])
    if family == "ltx-video":
        return GNAConfig(family="ltx-video", base_grid=[2, 4, 4], window=[2, 2, 2])
    if family == "qwen-image-2.1":
        return GNAConfig(family="qwen-image-2.1", base_grid=[4, 6], window=[2, 2])
    if family == "minimax-h3":
        return GNAConfig(family="minimax-h3", base_grid=[5, 3, 4], window=[2, 2, 2])
    if family in ("helios", "chronoedit", "skyreels-v2", "wan-vace", "wan-animate", "kandinsky5"):
        family = "wan" if family == "wan-vace" else family
        return GNAConfig(family=family, base_grid=[4, 4, 4], window=[2, 2, 2])
    return GNAConfig(family="wan", base_grid=[4, 4, 4], window=[2, 2, 2])


def inputs_for(family: str, transformer):
    from gna_diffusers.patches import (chronoedit, flux, flux2, helios, hunyuan_image, hunyuan_video, kandinsky5,
                                       ltx_video, minimax_h3, qwen_image, qwen_image21, skyreels_v2, wan, wan_animate)

    if family == "flux":
        return flux.transformer_inputs(transformer, (8, 8), text=6, batch=2)
    if family == "qwen-image":
        return qwen_image.transformer_inputs(transformer, (4, 6), text=6, batch=2, valid_text=(3, 6))
    if family == "hunyuan-video":
        return hunyuan_video.transformer_inputs(transformer, (2, 4, 4), text=6, batch=2, valid_text=(3, 6))
    if family == "hunyuan-image":  # the prompt padded, then ByT5's 128 glyph tokens (none valid), 158 in all
        return hunyuan_image.transformer_inputs(transformer, (4, 6), text=6, batch=2, valid_text=(3, 6))
    if family == "flux2":
        return flux2.transformer_inputs(transformer, (8, 8), text=6, batch=2)
    if family == "qwen-image-2.1":  # a condition image's slots among the prompt, padded
        return qwen_image21.transformer_inputs(transformer, (4, 6), text=6, batch=2, valid_text=(3, 6),
                                               references=((2, 4),))
    if family == "helios":  # history terms before the chunk's grid, context in the sharded sequence
        return helios.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2, history=(8, 2, 2))  # 38 tokens
    if family == "chronoedit":
        return chronoedit.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2)
    if family == "minimax-h3":  # one packed sequence split at the first block: 8 text + 16 audio + 60 video rows
        return minimax_h3.transformer_inputs(transformer, (5, 3, 4), text=8, batch=2)
    if family == "kandinsky5":
        return kandinsky5.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2)
    if family == "wan-animate":
        return wan_animate.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2)
    if family == "wan-vace":  # a control video beside the video, through the control blocks
        control = torch.randn(2, 8, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        return wan.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2) | {"control_hidden_states": control}
    if family == "skyreels-v2":  # diffusion forcing: a noise level per frame, so a modulation per token
        inputs = skyreels_v2.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2)
        return inputs | {"timestep": torch.tensor([[900, 700, 500, 300], [800, 600, 400, 200]]),
                         "enable_diffusion_forcing": True}
    if family == "ltx-video":  # no text mask: diffusers 0.42's own LTX plan fails with one (cross-attention)
        return ltx_video.transformer_inputs(transformer, (2, 4, 4), text=6, batch=2) | {"encoder_attention_mask": None}
    return wan.transformer_inputs(transformer, (4, 4, 4), text=6, batch=2)


# diffusers' Helios plan names the output of blocks 0-39 (the released depth): the tiny model needs as many.
TINY_SHAPES = {"helios": {"num_layers": 40}}
# Cases that are not a family's tiny transformer: (family, builder name in its module).
VARIANTS = {"wan-vace": ("wan", "tiny_vace_transformer")}


def tiny_transformer(case: str):
    from gna_diffusers.patches import MODULES

    family, builder = VARIANTS.get(case, (case, "tiny_transformer"))
    return getattr(MODULES[family], builder)(**TINY_SHAPES.get(case, {}))

# LTX-Video's plan shards the text too, and gna_diffusers' sublayer plans (Wan VACE, SkyReels-V2, Wan Animate,
# Kandinsky 5) shard the cross-attention's queries, so their stock cross-attention runs diffusers' native ring
# attention, which cannot return the LSE on CPU; so does MiniMax-H3's token refiner (its stock self-attention over
# the text, before diffusers' plan splits the sequence).
NO_CPU_RING = {"ltx-video", "skyreels-v2", "wan-vace", "wan-animate", "kandinsky5", "minimax-h3"}


def context_parallel_job(rank: int, world: int, family: str) -> dict:
    """The family's tiny transformer: stock, single-process GNA, and GNA under Ulysses (apply first, parallelism
    first) and ring attention over the ``world`` ranks."""
    from diffusers import ContextParallelConfig

    from gna_diffusers import apply, remove
    from gna_diffusers.patches import MODULES

    module = MODULES[VARIANTS.get(family, (family,))[0]]

    def own_plan(transformer):  # gna_diffusers' plan, for a transformer class diffusers has none for
        plan_for = module.PATCH.parallel_plan
        return plan_for(transformer, world) if plan_for and getattr(transformer, "_cp_plan", None) is None else None

    results = {}
    for order in ("apply-first", "parallel-first"):
        transformer = tiny_transformer(family)
        inputs = inputs_for(family, transformer)
        with torch.no_grad():
            if order == "apply-first":
                results["stock"] = transformer(**inputs)[0].clone()
                apply(transformer, config_for(family))
                results["single"] = transformer(**inputs)[0].clone()
                transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            else:  # HunyuanVideo: diffusers has no plan for it; gna_diffusers ships one (apply first adds it)
                transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                                               cp_plan=own_plan(transformer))
                apply(transformer, config_for(family))
            results[order] = torch.as_tensor(transformer(**inputs)[0]).clone()
        remove(transformer)
    stock = tiny_transformer(family)
    plan = own_plan(stock)
    if plan is not None:  # gna_diffusers' own plan must be right for the stock model too
        stock.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world), cp_plan=plan)
        with torch.no_grad():
            results["stock-parallel"] = torch.as_tensor(stock(**inputs_for(family, stock))[0]).clone()
    if family not in NO_CPU_RING:
        ring = tiny_transformer(family)  # ring attention: GNA exchanges heads over the ring's ranks instead
        apply(ring, config_for(family))
        ring.enable_parallelism(config=ContextParallelConfig(ring_degree=world))
        with torch.no_grad():
            results["ring"] = torch.as_tensor(ring(**inputs_for(family, ring))[0]).clone()
        remove(ring)
    return results


@pytest.mark.parametrize("family", ["flux", "wan", "qwen-image", "hunyuan-video", "flux2", "ltx-video", "chronoedit",
                                    "helios", "hunyuan-image", "skyreels-v2", "wan-vace", "wan-animate",
                                    "kandinsky5", "minimax-h3"])
def test_ulysses_and_ring_degree_2_equal_single_process_gna(family, two_ranks):
    results = two_ranks.run(context_parallel_job, family)
    assert (results["single"] - results["stock"]).abs().max() > 1e-3  # the windows are sparse: GNA ran
    for order in ("apply-first", "parallel-first", "ring"):
        if order in results:
            torch.testing.assert_close(results[order], results["single"], atol=1e-5, rtol=1e-5)
    assert ("ring" in results) == (family not in NO_CPU_RING)
    if "stock-parallel" in results:  # a wrong plan is off by O(1); Kandinsky 5's sharded cross-attention sums in
        # another order: 9.7e-5 with ATen's and MKL's vector code turned off (ATEN_CPU_CAPABILITY=default)
        torch.testing.assert_close(results["stock-parallel"], results["stock"], atol=2e-4, rtol=1e-4)


def unified_worker(rank: int, world: int, port: int, folder: str) -> None:
    """ring 2 x Ulysses 2 on 4 ranks (diffusers' unified mode), FLUX with 4 heads so each rank gets one."""
    import torch.distributed as dist

    join_gloo_group(rank, world, port)
    from diffusers import ContextParallelConfig

    from gna_diffusers import apply
    from gna_diffusers.patches import flux

    torch.manual_seed(0)
    transformer = type(flux.tiny_transformer()).from_config(
        {**flux.tiny_transformer().config, "num_attention_heads": 4}).eval()
    inputs = flux.transformer_inputs(transformer, (8, 8), text=8, batch=2)
    with torch.no_grad():
        stock = transformer(**inputs)[0].clone()
    apply(transformer, config_for("flux"))
    with torch.no_grad():
        single = transformer(**inputs)[0].clone()
        transformer.enable_parallelism(config=ContextParallelConfig(ring_degree=2, ulysses_degree=2))
        unified = torch.as_tensor(transformer(**inputs)[0]).clone()
    if rank == 0:
        torch.save({"stock": stock, "single": single, "unified": unified}, os.path.join(folder, "unified.pt"))
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()


def test_unified_ring_and_ulysses_on_4_ranks_equals_single_process_gna(tmp_path):
    mp.spawn(unified_worker, args=(4, free_port(), str(tmp_path)), nprocs=4)
    results = torch.load(tmp_path / "unified.pt")
    assert (results["single"] - results["stock"]).abs().max() > 1e-3  # the windows are sparse: GNA ran
    torch.testing.assert_close(results["unified"], results["single"], atol=1e-5, rtol=1e-5)


def tensor_parallel_job(rank: int, world: int, family: str) -> dict:
    """diffusers' tensor parallelism (``TensorParallelConfig``: the attention heads and MLPs sharded) under GNA."""
    import diffusers.hooks.tensor_parallel as tensor_parallel
    from diffusers import TensorParallelConfig

    from gna_diffusers import apply, remove
    from gna_diffusers.patches import FAMILY_MODULES

    # diffusers refuses a CPU mesh for tensor parallelism (it targets accelerators); its DTensor sharding runs
    # on gloo all the same, which is what this test needs.
    if "cpu" not in tensor_parallel._SUPPORTED_TP_DEVICES:
        tensor_parallel._SUPPORTED_TP_DEVICES = (*tensor_parallel._SUPPORTED_TP_DEVICES, "cpu")
    results = {}
    for order in ("apply-first", "parallel-first"):
        transformer = FAMILY_MODULES[family].tiny_transformer()
        inputs = inputs_for(family, transformer)
        with torch.no_grad():
            results["stock"] = transformer(**inputs)[0].clone()
            if order == "apply-first":
                apply(transformer, config_for(family))
                results["single"] = transformer(**inputs)[0].clone()
                transformer.enable_parallelism(config=TensorParallelConfig(tp_degree=world))
            else:
                transformer.enable_parallelism(config=TensorParallelConfig(tp_degree=world))
                apply(transformer, config_for(family))
            results[order] = torch.as_tensor(transformer(**inputs)[0]).clone()
        remove(transformer)
    return results


@pytest.mark.parametrize("family", ["flux", "flux2", "qwen-image", "qwen-image-2.1"])
def test_tensor_parallel_degree_2_equals_single_process_gna(family, two_ranks):
    results = two_ranks.run(tensor_parallel_job, family)
    assert (results["single"] - results["stock"]).abs().max() > 1e-3  # the windows are sparse: GNA ran
    for order in ("apply-first", "parallel-first"):
        torch.testing.assert_close(results[order], results["single"], atol=1e-5, rtol=1e-5)


def test_sharded_order_interleaves_the_two_parts_shard_by_shard():
    # Unsharded [t t t t | i i i i i i] (2 ranks, 2 text + 3 image tokens each) -> [t t i i i | t t i i i]
    assert sharded_order(2, 2, 3, torch.device("cpu")).tolist() == [0, 1, 4, 5, 6, 2, 3, 7, 8, 9]


def compare_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One torchrun rank: the environment torchrun sets, then the CLI."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.accelerator.device_count = lambda: world
    torch._C._get_accelerator = lambda: torch.device("cpu")
    from gna_diffusers.cli import main

    args = ["compare", "--model", "tiny-flux", "--height", "64", "--width", "64", "--steps", "2", "--prompt", "a cat",
            "--no-warmup", "--device", "cpu", "--output", os.path.join(folder, "out")]
    assert main(args) == 0


def test_compare_under_torchrun_shards_the_transformer_and_rank_0_writes(tmp_path):
    import json

    mp.spawn(compare_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ulysses_degree"] == 2 and report["samples"][0]["metrics"]["psnr"] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".json") == ["report.json"]


def test_readme_table_is_the_generated_one():
    from pathlib import Path

    from gna_diffusers.parallel import estimates_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert estimates_markdown() in readme
