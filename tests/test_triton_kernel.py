"""The Triton kernel against the independent loop-based definition.

On CPU it runs under TRITON_INTERPRET=1 (conftest) on small shapes with fp32 and fp16. The interpreter
cannot multiply bfloat16 (triton-lang/triton#11584), so bf16 is checked by compiling the kernel for
sm_90 here and numerically on a GPU by tests/test_cuda.py.
"""

import json
import os
import subprocess
import sys
import warnings
from math import prod
from pathlib import Path

import numpy
import pytest
import torch
from brute_force import attention, neighbor_mask
from test_ops import make_inputs

from gna_diffusers import gna_attention
from gna_diffusers.backends import triton_gna
from gna_diffusers.backends.triton_gna import KernelConfig, tile_candidates
from gna_diffusers.sim import PAPER_CONFIGS, simulate
from gna_diffusers.spec import GNASpec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.skipif(triton_gna._IMPORT_ERROR is not None, reason="triton is not installed")
# The tests that run the kernel on CPU tensors, through the Triton interpreter.
interpreted = pytest.mark.skipif(triton_gna.interpreter_problem() is not None,
                                 reason=str(triton_gna.interpreter_problem()))


def per_axis(case):
    ndim = len(case["grid"])
    defaults = dict(stride=1, dilation=1, causal=False)
    return {
        key: (v if isinstance(v, tuple) else (v,) * ndim)
        for key, v in {**defaults, **case}.items()
    }


# (pattern, Q tile, KV tile, extra keys, padded, batch): tiles are 3-D (1-D/2-D grids get leading 1s).
CASES = [
    # 1-D, border windows, stride groups straddling tiles (stride 3 vs tile 16), causal.
    (dict(grid=(37,), window=7, stride=3), (1, 1, 16), (1, 1, 16), 0, False, 1),
    (dict(grid=(40,), window=9, stride=2, causal=True), (1, 1, 16), (1, 1, 16), 5, True, 2),
    (dict(grid=(33,), window=5, dilation=3), (1, 1, 16), (1, 1, 32), 0, False, 1),
    # 2-D: perfectly block-sparse (stride 4 = Q tile, window 8 on KV tile 4 boundaries)...
    (dict(grid=(8, 16), window=(4, 8), stride=(4, 4)), (1, 4, 4), (1, 4, 4), 0, False, 1),
    # ...and the same window with stride 1 (partial pairs), plus text with padding.
    (dict(grid=(8, 16), window=(4, 8), stride=1), (1, 4, 4), (1, 4, 4), 6, True, 2),
    # Extents that are not tile multiples, mixed per-axis arguments.
    (dict(grid=(7, 10), window=(3, 4), stride=(2, 3), dilation=(2, 1), causal=(True, False)), (1, 2, 8), (1, 4, 4),
     0, False, 1),
    # One query row per Q tile along a dilated axis: its key range spans window * dilation rows, so a KV
    # tile inside it is still partial (other dilation groups' keys).
    (dict(grid=(12, 8), window=(3, 8), dilation=(3, 1)), (1, 1, 8), (1, 2, 8), 0, False, 1),
    (dict(grid=(9, 11), window=(9, 11)), (1, 4, 8), (1, 8, 4), 3, False, 1),  # whole-grid window
    # Text in whole extra-key blocks (blocks are the KV tile's 16 tokens): no ragged-end select, with and
    # without padding (which arrives as a -inf bias).
    (dict(grid=(8, 16), window=(4, 8), stride=(2, 4)), (1, 4, 4), (1, 4, 4), 32, False, 1),
    (dict(grid=(8, 16), window=(4, 8), stride=(2, 4)), (1, 4, 4), (1, 4, 4), 32, True, 2),
    # 3-D, including text over several extra-key blocks with a ragged last one (70 keys), and non-multiple
    # extents.
    (dict(grid=(4, 5, 6), window=(2, 3, 4), stride=(1, 3, 2)), (2, 2, 4), (1, 4, 4), 70, True, 1),
    (dict(grid=(5, 6, 8), window=(3, 4, 4), stride=(2, 2, 4), causal=(True, False, False)), (1, 4, 4), (2, 2, 4), 0,
     False, 1),
    (dict(grid=(6, 4, 6), window=(2, 2, 3), dilation=(2, 2, 1)), (2, 2, 4), (2, 2, 4), 4, True, 2),
    # A window of 1: an axis of extent 1 (one-frame video) and per-frame attention.
    (dict(grid=(1, 6, 8), window=(1, 3, 4), stride=(1, 2, 1)), (1, 4, 4), (1, 4, 4), 5, True, 1),
    (dict(grid=(3, 4, 8), window=(1, 4, 8)), (2, 2, 4), (1, 4, 4), 0, False, 1),
]


@interpreted
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("case, q_tile, kv_tile, extra, padded, batch", CASES)
def test_kernel_matches_brute_force(case, q_tile, kv_tile, extra, padded, batch, tma):
    """Both K/V load paths: gathered pointers, and TMA descriptors (boxes past the grid's end zero-filled)."""
    full = per_axis(case)
    q, k, v, extras = make_inputs(full, batch=batch, heads=2, dim=16, extra=extra, padded=padded, seed=7)
    assert not tma or triton_gna.tma_unsupported(k, v) is None
    spec = GNASpec.create(**case)
    out, lse = triton_gna._launch(
        q, k, v, extras.get("extra_k"), extras.get("extra_v"), extras.get("extra_kv_mask"), spec, 16**-0.5,
        KernelConfig(q_tile, kv_tile, tma=tma),
    )
    mask = neighbor_mask(full["grid"], full["window"], full["stride"], full["dilation"], full["causal"])
    ref_out, ref_lse = attention(q, k, v, mask, *(extras.get(name) for name in ("extra_k", "extra_v", "extra_kv_mask")))
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-5, rtol=2e-5)


@interpreted
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_kernel_reads_grouped_key_value_heads(kv_heads, tma):
    """Grouped-query attention: 4 query heads over 1 or 2 key/value heads (grid and text keys), no copies: query
    head h reads K/V head h // (4 / H_kv), through pointers and through the TMA box's column."""
    case = dict(grid=(4, 5, 6), window=(2, 3, 4), stride=(1, 3, 2))
    full = per_axis(case)
    q, _, _, _ = make_inputs(full, batch=2, heads=4, dim=16, seed=8)
    _, k, v, extras = make_inputs(full, batch=2, heads=kv_heads, dim=16, extra=20, padded=True, seed=9)
    spec = GNASpec.create(**case)
    out, lse = triton_gna._launch(q, k, v, extras["extra_k"], extras["extra_v"], extras["extra_kv_mask"], spec,
                                  16**-0.5, KernelConfig((2, 2, 4), (1, 4, 4), tma=tma))
    group = 4 // kv_heads
    k, v, text_k, text_v = (t.repeat_interleave(group, 2) for t in (k, v, extras["extra_k"], extras["extra_v"]))
    mask = neighbor_mask(full["grid"], full["window"], full["stride"], full["dilation"], full["causal"])
    ref_out, ref_lse = attention(q, k, v, mask, text_k, text_v, extras["extra_kv_mask"])
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-5, rtol=2e-5)


@interpreted
@pytest.mark.parametrize("padded", [False, True])
def test_kernel_adds_the_extra_key_bias(padded):
    """Chroma-style additive masks: a per-extra-key bias (with -inf entries), with or without a bool mask,
    over more than one block of extra keys (70 > 64)."""
    case = dict(grid=(4, 5, 6), window=(2, 3, 4), stride=(1, 3, 2))
    full = per_axis(case)
    q, k, v, extras = make_inputs(full, batch=2, heads=2, dim=16, extra=70, padded=padded, seed=11)
    bias = torch.randn(2, 70, generator=torch.Generator().manual_seed(3))
    bias[0, :5] = float("-inf")
    spec = GNASpec.create(**case)
    out, lse = triton_gna._launch(
        q, k, v, extras["extra_k"], extras["extra_v"], extras.get("extra_kv_mask"), spec, 16**-0.5,
        KernelConfig((2, 2, 4), (1, 4, 4)), bias,
    )
    mask = neighbor_mask(full["grid"], full["window"], full["stride"], full["dilation"], full["causal"])
    ref_out, ref_lse = attention(q, k, v, mask, extras["extra_k"], extras["extra_v"], extras.get("extra_kv_mask"),
                                 extra_bias=bias)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-5, rtol=2e-5)


@interpreted
def test_public_api_with_automatic_tiles_fp16_and_strided_inputs():
    case = dict(grid=(6, 8), window=(3, 4), stride=(1, 2))
    q, k, v, extras = make_inputs(per_axis(case), batch=2, heads=2, dim=32, extra=5, padded=True, dtype=torch.float16)
    # Non-contiguous (B, N, H, D) views, as a fused QKV projection produces: read in place, no copies.
    qkv = torch.stack([q, k, v], dim=3)  # (B, N, H, 3, D)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    extras["extra_kv_mask"] = extras["extra_kv_mask"].t().contiguous().t()  # (B, M) with stride (1, B)
    out, lse = gna_attention(q, k, v, **case, **extras, backend="triton", return_lse=True)
    ref, ref_lse = gna_attention(q, k, v, **case, **extras, backend="reference", return_lse=True)
    assert out.dtype == torch.float16 and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=2e-3)


@interpreted
def test_torch_compile_fullgraph_sees_no_graph_break_and_says_nothing():
    """Also no warning from dynamo while it traces the backend's checks (it warned of the interpreter check's
    lru_cache, which it does not honour). (Triton < 3.7's interpreter itself warns of a deprecated numpy conversion
    on numpy 1.25 to 2.3: not ours, not checked.)"""
    case = dict(grid=(4, 8), window=(2, 4), stride=(2, 4))
    q, k, v, extras = make_inputs(per_axis(case), batch=1, heads=1, dim=16, extra=3)

    def f(q, k, v, ek, ev):
        return gna_attention(q * 2, k, v, **case, extra_k=ek, extra_v=ev, backend="triton") + 1

    torch._dynamo.reset()  # trace afresh, whatever compiled before in this process
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    args = (q, k, v, extras["extra_k"], extras["extra_v"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = compiled(*args)
    torch.testing.assert_close(result, f(*args))


@interpreted
def test_custom_op_passes_opcheck():
    case = dict(grid=(4, 4), window=2)
    q, k, v, extras = make_inputs(per_axis(case), batch=1, heads=1, dim=16, extra=2, padded=True)
    bias = torch.zeros(1, 2)
    args = (q, k, v, extras["extra_k"], extras["extra_v"], extras["extra_kv_mask"], bias, [4, 4], [2, 2], [1, 1],
            [1, 1], [False, False], 0.25)
    torch.library.opcheck(triton_gna.gna_fwd, args, test_utils=("test_schema", "test_faketensor"))
    out = torch.empty(1, 20, 1, 16)[:, 4:]  # a view: written through its strides
    torch.library.opcheck(triton_gna.gna_fwd_into, (*args, out), test_utils=("test_schema", "test_faketensor"))


def test_tma_is_offered_only_where_descriptors_can_address_k_and_v():
    q = torch.randn(1, 12, 2, 16)
    assert triton_gna.tma_unsupported(q, q) is None
    assert "power of two" in triton_gna.tma_unsupported(*(torch.randn(1, 12, 2, 24),) * 2)
    fused = torch.randn(1, 12, 2, 3, 16).unbind(3)[0]  # a fused QKV projection's view: head stride 48
    assert "packed" in triton_gna.tma_unsupported(fused, fused)
    spec = GNASpec.create((3, 4), 2)
    tma = [c for c in triton_gna.tuning_configs(spec, q, q) if c.tma]
    assert tma and not [c for c in triton_gna.tuning_configs(spec, fused, fused) if c.tma]


def test_tuning_times_the_widest_kv_box_and_the_warps_each_q_tile_needs(monkeypatch):
    """On a grid that is no tile multiple (HunyuanVideo 720x1280x129: 45 rows) the simulator ranks 64-token
    KV boxes first; per score they issue ~40% more instructions than 128-token ones (kernel_sass), so the
    tuner times the cheapest 128-token KV tiling too, on both load paths. 128-token Q tiles get 8 warps."""
    monkeypatch.setattr(triton_gna, "_block_sizes", lambda device, num_tokens: (64, 128))
    spec = GNASpec.create((33, 45, 80), (18, 24, 24), (16, 8, 8))
    k = torch.empty(1, 1, 24, 128, device="meta")
    assert all(prod(c.kv_tile) == 64 for c in tile_candidates(spec, (64, 128), limit=3))
    configs = triton_gna.tuning_configs(spec, k, k)
    for tma in (False, True):
        assert any(prod(c.kv_tile) == 128 for c in configs if c.tma == tma)
    assert all(c.num_warps == (8 if prod(c.q_tile) == 128 else 4) for c in configs)
    assert {c.num_stages for c in configs} == {2, 3}


def test_bfloat16_under_the_interpreter_is_refused_not_miscomputed():
    """The interpreter's tl.dot multiplies bfloat16 bit patterns (results ~1e9): refused with the reason, and "auto"
    picks another backend for the same call."""
    q = torch.randn(1, 24, 2, 16, dtype=torch.bfloat16)
    pattern = dict(grid=(4, 6), window=(2, 3))
    with pytest.raises(ValueError, match=r"backend 'triton' cannot run this call: bfloat16 under the Triton "
                                         r"interpreter.*triton-lang/triton#11584"):
        gna_attention(q, q, q, backend="triton", **pattern)
    auto = gna_attention(q, q, q, backend="auto", **pattern)
    assert torch.allclose(auto.float(), gna_attention(q, q, q, backend="reference", **pattern).float(), atol=2e-2)


@pytest.mark.parametrize("version", ["3.6.0", "3.7.0"])
def test_an_interpreter_that_cannot_run_on_this_numpy_is_refused_with_the_fix(version, monkeypatch):
    """Triton < 3.7's interpreter converts 1-element arrays to ints, which numpy >= 2.4 refuses (a TypeError deep in
    the interpreter, e.g. torch 2.11's triton 3.6 with numpy 2.5): the backend refuses the call with the fix."""
    numpy_refuses = numpy.lib.NumpyVersion(numpy.__version__) >= "2.4.0"
    monkeypatch.setattr(triton_gna.triton, "__version__", version)
    q = torch.randn(1, 24, 2, 16)
    pattern = dict(grid=(4, 6), window=(2, 3))
    if version == "3.6.0" and numpy_refuses:
        with pytest.raises(ValueError, match=r"backend 'triton' cannot run this call: the Triton 3\.6\.0 "
                                             r"interpreter cannot run with numpy .*use triton >= 3\.7"):
            gna_attention(q, q, q, backend="triton", **pattern)
    else:
        assert triton_gna.interpreter_problem() is None


def test_gradients_are_refused_with_a_clear_error():
    q = torch.randn(1, 16, 1, 16, requires_grad=True)
    with pytest.raises(ValueError, match="backend 'triton' cannot run this call: forward only"):
        gna_attention(q, q, q, (4, 4), 2, backend="triton")


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda c: c.name)
def test_tile_choice_prefers_perfectly_block_sparse_tilings(config):
    best = tile_candidates(GNASpec.create(config.grid, config.window, config.stride))[0]
    axes = len(config.grid)
    result = simulate(config.grid, config.window, config.stride, q_tile=best.q_tile[-axes:],
                      kv_tile=best.kv_tile[-axes:])
    paper = config.simulate()
    # With stride, a tiling with no partial pair exists and must be chosen; with stride 1 the choice must
    # be no worse than the published tiles.
    assert result.partial_pairs == 0 or not paper.perfectly_block_sparse
    assert result.tile_bound >= paper.tile_bound - 1e-9


def compile_sm90(**args) -> tuple[int, str]:
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "compile_sm90.py"), json.dumps(args)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    shared, ptx = done.stdout.split()[-2:]
    return int(shared), ptx


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype, head_dim, q_tile, kv_tile, has_extra, has_mask, has_bias, tma",
    [
        ("bf16", 128, (2, 8, 8), (2, 8, 8), True, True, False, False),  # HunyuanVideo paper tiles, padded text
        ("fp16", 64, (1, 16, 8), (1, 16, 8), True, False, False, False),  # FLUX paper tiles, unpadded text
        ("bf16", 128, (1, 16, 8), (1, 16, 8), True, True, True, False),  # Chroma: text padding as a bias
        ("fp32", 32, (1, 1, 64), (1, 1, 64), False, False, False, False),
        ("bf16", 128, (2, 8, 8), (2, 8, 8), True, True, False, True),  # the TMA K/V path
        ("bf16", 128, (1, 16, 8), (1, 8, 16), True, False, False, True),
        ("bf16", 128, (2, 8, 8), (2, 8, 8), True, True, False, "tma, grouped heads"),  # Cosmos 3: 32 / 8 heads
    ],
)
def test_kernel_compiles_for_hopper(dtype, head_dim, q_tile, kv_tile, has_extra, has_mask, has_bias, tma):
    """Real code generation (not the interpreter) down to an sm_90 cubin; needs no GPU."""
    shared, _ = compile_sm90(dtype=dtype, head_dim=head_dim, q_tile=q_tile, kv_tile=kv_tile, has_extra=has_extra,
                             has_mask=has_mask, has_bias=has_bias, tma=bool(tma),
                             grouped_heads=tma == "tma, grouped heads")
    assert shared <= 227 * 1024  # H100 shared memory per block


@pytest.mark.slow
@pytest.mark.parametrize("arch, instruction", [(80, "mma.sync"), (90, "wgmma.mma_async"), (100, "tcgen05.mma")])
def test_the_dots_take_each_generations_tensor_cores(arch, instruction):
    """A100 (and Ada, RTX 50): mma.sync; Hopper: wgmma; B200, the GNA paper's GPU: tcgen05. A kernel change that left
    a dot on FMA (a shape or dtype the tensor cores do not take) would still compile, and run several times slower."""
    _, count = compile_sm90(dtype="bf16", head_dim=128, q_tile=(2, 8, 8), kv_tile=(2, 8, 8), has_extra=True,
                            has_mask=True, arch=arch, ptx_count=instruction)
    assert int(count) > 0


@pytest.mark.slow
def test_both_load_paths_are_software_pipelined_for_hopper():
    """Compiled as a launch specializes them (aligned pointers, strides divisible by 16), gathered K/V
    loads become cp.async and TMA boxes bulk tensor copies, and one more pipeline stage takes more shared
    memory: the tuner's num_stages choice is real for both paths."""
    args = dict(dtype="bf16", head_dim=128, q_tile=(2, 8, 8), kv_tile=(2, 8, 8), has_extra=True, has_mask=True)
    for tma, instruction in ((False, "cp.async.cg"), (True, "cp.async.bulk.tensor")):
        shallow, copies = compile_sm90(**args, tma=tma, num_stages=2, ptx_count=instruction)
        deep, _ = compile_sm90(**args, tma=tma, num_stages=3)
        assert int(copies) > 0 and deep > shallow, (tma, copies, shallow, deep)


@pytest.mark.slow
@pytest.mark.parametrize("tma", [False, True])
def test_full_tiles_issue_no_mask_or_division_code_on_hopper(tma):
    """The neighborhood loop's machine code for sm_90 (benchmarks/kernel_sass.py): a full tile issues the
    two tile matmuls (16 wgmma at 128 x 128 x 128 on two warpgroups), one exp2 per score it holds plus the
    rescale, no mask selects and no integer division; each masked axis is a branch of its own."""
    args = dict(dtype="bf16", head_dim=128, q_tile=(2, 8, 8), kv_tile=(2, 8, 8), has_extra=True, has_mask=True,
                tma=tma, num_warps=8)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "kernel_sass.py"), "--profile", json.dumps(args)],
                          env=dict(os.environ, TRITON_INTERPRET="0"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    loop = json.loads(done.stdout)["loops"][0]
    scores_per_thread = 128 * 128 // 256
    assert loop["wgmma"] == 16
    assert scores_per_thread <= loop["exp2"] <= scores_per_thread + 4
    assert loop["other_mufu"] == 0, loop["full_path_ops"]  # MUFU.RCP: a runtime integer division
    assert "FSEL" not in loop["full_path_ops"], loop["full_path_ops"]
    assert len(loop["skipped_regions"]) >= 3 and min(loop["skipped_regions"][:3]) >= scores_per_thread


@pytest.mark.parametrize("head_dim", [128, 256])
def test_tuning_times_only_tilings_the_gpu_can_hold(head_dim, monkeypatch):
    """On a GPU with Hopper's 227 KiB per block: at head_dim 128, 128-token tiles fit at 2 and 3 stages; at
    head_dim 256 (AuraFlow) a 128-token K/V tile does not fit even at 2 (320 KiB): the tuner does not compile
    configurations whose launch would fail, and times the cheapest that fit, at the stages that fit."""
    limit = 227 * 1024
    monkeypatch.setattr(triton_gna, "_shared_memory_limit", lambda device: limit)
    monkeypatch.setattr(triton_gna, "_block_sizes", lambda device, tokens: (64, 128))
    spec = GNASpec.create((96, 96), 32, 16)  # AuraFlow v0.3's 1536x1536 preset
    kv = torch.zeros(1, 96 * 96, 1, head_dim, dtype=torch.bfloat16)
    configs = triton_gna.tuning_configs(spec, kv, kv)
    sizes = {config: triton_gna.shared_memory_bytes(config, head_dim, 2) for config in configs}
    assert configs and max(sizes.values()) <= limit
    if head_dim == 128:
        assert any(prod(c.kv_tile) == 128 and c.num_stages == 3 for c in configs)
    else:
        assert max(prod(c.kv_tile) for c in configs) == 64  # 192 KiB with a 128-token Q tile at 2 stages
    monkeypatch.setattr(triton_gna, "_shared_memory_limit", lambda device: None)  # unknown: the ranking as it is
    assert len(triton_gna.tuning_configs(spec, kv, kv)) >= len(configs)


@pytest.mark.slow
@pytest.mark.parametrize("head_dim, q_tile, kv_tile, stages", [
    (128, (2, 8, 8), (2, 8, 8), 3),
    (256, (1, 8, 16), (1, 8, 8), 2),
])
def test_shared_memory_estimate_is_what_the_hopper_compile_takes(head_dim, q_tile, kv_tile, stages):
    config = triton_gna.KernelConfig(q_tile, kv_tile, 8, stages)
    shared, _ = compile_sm90(dtype="bf16", head_dim=head_dim, q_tile=q_tile, kv_tile=kv_tile, has_extra=True,
                             has_mask=False, num_stages=stages)
    assert shared == triton_gna.shared_memory_bytes(config, head_dim, 2)


def test_tuning_falls_back_to_small_tiles_then_says_which_backend_to_use(caplog):
    """A GPU with less shared memory than Hopper's (consumer cards: ~100 KB per block) holds none of the
    tuning configurations: small single-stage tiles are timed instead, and if those do not fit either the
    error names the way out. A TMA variant that fails to build is skipped; any other failure propagates."""
    from triton.runtime.errors import OutOfResources

    spec = GNASpec.create((16, 16), 5, 2)
    q = torch.randn(1, 256, 2, 64)
    configs = triton_gna.tuning_configs(spec, q, q)

    def fits_one_stage(config):
        if config.num_stages > 1:
            raise OutOfResources(163840, 101376, "shared memory")
        return float(sum(config.q_tile))

    best, _ = triton_gna.fastest(configs, fits_one_stage, spec)
    assert best.num_stages == 1 and prod(best.q_tile) <= 64

    def fits_nothing(config):
        raise OutOfResources(163840, 49152, "shared memory")

    with pytest.raises(ValueError, match="fits this GPU's shared memory and registers; use backend='flex'"):
        triton_gna.fastest(configs, fits_nothing, spec)

    def tma_breaks(config):
        if config.tma:
            raise RuntimeError("descriptor API differs")
        return 1.0 + config.num_warps

    with caplog.at_level("WARNING", logger="gna_diffusers"):
        assert not triton_gna.fastest(configs, tma_breaks, spec)[0].tma
    assert "TMA variant" in caplog.text
    with pytest.raises(RuntimeError, match="a real bug"):
        triton_gna.fastest(configs, lambda config: (_ for _ in ()).throw(RuntimeError("a real bug")), spec)
