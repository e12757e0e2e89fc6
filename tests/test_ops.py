import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from brute_force import attention, neighbor_mask
from conftest import random_case
from helpers import skip_unless_triton_interprets

from gna_diffusers import available_backends, gna_attention

BACKENDS = ["reference", "flex"]


def make_inputs(case, batch=2, heads=2, dim=16, extra=0, padded=False, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = 1
    for e in case["grid"]:
        n *= e
    q, k, v = (torch.randn(batch, n, heads, dim, generator=gen).to(dtype) for _ in range(3))
    extras = {}
    if extra:
        extras["extra_k"] = torch.randn(batch, extra, heads, dim, generator=gen).to(dtype)
        extras["extra_v"] = torch.randn(batch, extra, heads, dim, generator=gen).to(dtype)
        if padded:
            lengths = torch.randint(0, extra + 1, (batch,), generator=gen)  # 0 = all padding is allowed
            extras["extra_kv_mask"] = torch.arange(extra)[None, :] < lengths[:, None]
    return q, k, v, extras


def expected(case, q, k, v, extras):
    mask = neighbor_mask(*(case[key] for key in ("grid", "window", "stride", "dilation", "causal")))
    return attention(q, k, v, mask, extras.get("extra_k"), extras.get("extra_v"), extras.get("extra_kv_mask"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(60))
def test_backends_match_brute_force_fp32(backend, seed):
    rng = random.Random(seed)
    case = random_case(rng)
    extra = rng.choice((0, 0, 3, 7))
    q, k, v, extras = make_inputs(case, extra=extra, padded=extra > 0 and rng.random() < 0.6, seed=seed)
    out, lse = gna_attention(q, k, v, **case, **extras, backend=backend, return_lse=True)
    ref_out, ref_lse = expected(case, q, k, v, extras)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backends_match_brute_force_half(backend, dtype):
    for seed in range(8):
        case = random_case(random.Random(100 + seed))
        q, k, v, extras = make_inputs(case, extra=4, padded=True, dtype=dtype, seed=seed)
        out = gna_attention(q, k, v, **case, **extras, backend=backend)
        assert out.dtype == dtype
        tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
        torch.testing.assert_close(out.double(), expected(case, q, k, v, extras)[0], atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case",
    [
        dict(grid=(1, 4, 5), window=(1, 2, 3), stride=(1, 2, 1)),  # one-frame video: an axis of extent 1
        dict(grid=(3, 4, 5), window=(1, 4, 5)),  # window 1 over time: attention within each frame
        dict(grid=(6, 5), window=(1, 3), stride=1, dilation=(2, 1), causal=(True, False)),
    ],
)
def test_window_of_one_keeps_only_the_query_coordinate(backend, case):
    full = {"stride": 1, "dilation": 1, "causal": False, **case}
    full = {key: value if key == "grid" or isinstance(value, tuple) else (value,) * len(case["grid"])
            for key, value in full.items()}
    q, k, v, extras = make_inputs(full, extra=3, padded=True, seed=5)
    out = gna_attention(q, k, v, **case, **extras, backend=backend)
    torch.testing.assert_close(out.double(), expected(full, q, k, v, extras)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_key_bias_is_added_to_their_scores(backend):
    """An additive mask's column for the extra keys: finite values shift, -inf hides (with or without mask)."""
    case = dict(grid=(3, 5), window=(2, 3), stride=(1, 2), dilation=(1, 1), causal=(False, False))
    q, k, v, extras = make_inputs(case, extra=5, padded=True, seed=9)
    bias = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    bias[1, 0] = float("-inf")
    mask = neighbor_mask(*(case[key] for key in ("grid", "window", "stride", "dilation", "causal")))
    for kwargs in (extras, {key: value for key, value in extras.items() if key != "extra_kv_mask"}):
        out, lse = gna_attention(q, k, v, **case, **kwargs, extra_kv_bias=bias, backend=backend, return_lse=True)
        ref_out, ref_lse = attention(q, k, v, mask, kwargs["extra_k"], kwargs["extra_v"], kwargs.get("extra_kv_mask"),
                                     extra_bias=bias)
        torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_grid_window_equals_plain_sdpa_over_grid_and_valid_text(backend):
    grid = (3, 4, 5)
    q, k, v, extras = make_inputs({"grid": grid}, batch=2, extra=6, padded=True, seed=3)
    extras["extra_kv_mask"] = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    out = gna_attention(q, k, v, grid, grid, stride=(2, 3, 1), **extras, backend=backend)
    for b in range(2):
        valid = extras["extra_kv_mask"][b]
        keys = torch.cat([k[b], extras["extra_k"][b][valid]])
        values = torch.cat([v[b], extras["extra_v"][b][valid]])
        dense = F.scaled_dot_product_attention(q[b].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1))
        torch.testing.assert_close(out[b], dense.transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_reads_each_query_heads_key_value_head(backend, kv_heads):
    """K/V with fewer heads (SDPA's enable_gqa): query head h attends with key/value head h // (H / H_kv), text keys
    included, as if K and V had been repeated per group."""
    case = dict(grid=(4, 3, 5), window=(2, 3, 3), stride=(1, 1, 2), dilation=(1, 1, 1), causal=(False, False, False))
    q, _, _, _ = make_inputs(case, heads=4, seed=4)
    _, k, v, extras = make_inputs(case, heads=kv_heads, extra=5, padded=True, seed=5)
    out, lse = gna_attention(q, k, v, **case, **extras, backend=backend, return_lse=True)
    group = 4 // kv_heads
    repeated = {name: t.repeat_interleave(group, 2) if name in ("extra_k", "extra_v") else t
                for name, t in extras.items()}
    ref_out, ref_lse = expected(case, q, k.repeat_interleave(group, 2), v.repeat_interleave(group, 2), repeated)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_custom_scale_is_used():
    case = dict(grid=(6, 6), window=3, stride=1, dilation=1, causal=False)
    q, k, v, _ = make_inputs(case)
    full = dict(case, window=(3, 3), stride=(1, 1), dilation=(1, 1), causal=(False, False))
    ref = attention(q, k, v, neighbor_mask(**full), scale=0.3)[0]
    torch.testing.assert_close(gna_attention(q, k, v, **case, scale=0.3).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.0, -0.3, float("nan")])
def test_non_positive_scale_is_refused(scale):
    q, k, v = make_inputs(dict(grid=(4, 4)))[:3]
    with pytest.raises(ValueError, match="scale must be a positive number"):
        gna_attention(q, k, v, grid=(4, 4), window=3, scale=scale)


def test_auto_uses_the_reference_backend_on_cpu(caplog):
    case = dict(grid=(4, 4), window=2)
    q, k, v, _ = make_inputs(case)
    with caplog.at_level("DEBUG", logger="gna_diffusers"):
        gna_attention(q, k, v, **case)
    assert "auto backend: reference" in caplog.text


def _call(**overrides):
    q = torch.randn(1, 12, 2, 8)
    args = dict(q=q, k=q.clone(), v=q.clone(), grid=(3, 4), window=2)
    args.update(overrides)
    return gna_attention(**args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(grid=(3, 5)), r"q has N=12 tokens but grid \(3, 5\) has 15"),
        (dict(window=(2, 5)), r"window\[1\]=5 with dilation 1 spans 5 positions but grid\[1\] is 4"),
        (dict(window=(2, 0)), r"window\[1\]=0 must be >= 1"),
        (dict(stride=(3, 1)), r"stride\[0\]=3 must be between 1 and window\[0\]=2"),
        (dict(window=(2, 2, 2)), r"window has 3 entries but the grid has 2 dimensions"),
        (dict(k=torch.randn(1, 12, 2, 4)), r"q, k, v must have the same shape"),
        (dict(k=torch.randn(1, 12, 1, 8)),
         r"or k and v fewer heads that divide q's .* got \(1, 12, 2, 8\), \(1, 12, 1, 8\)"),
        (dict(q=torch.randn(1, 12, 3, 8), k=torch.randn(1, 12, 2, 8), v=torch.randn(1, 12, 2, 8)),
         r"fewer heads that divide q's"),
        (dict(v=torch.randn(12, 2, 8)), r"v must be a 4-D tensor \(B, N, H, D\)"),
        (dict(k=torch.randn(1, 12, 2, 8, dtype=torch.float64)), r"k has dtype torch.float64 but q has torch.float32"),
        (dict(extra_k=torch.randn(1, 3, 2, 8)), r"extra_k and extra_v must be given together"),
        (dict(extra_kv_bias=torch.zeros(1, 3)), r"extra_kv_bias was given without extra_k / extra_v"),
        (dict(extra_kv_mask=torch.ones(1, 3, dtype=torch.bool)), r"extra_kv_mask was given without extra_k"),
        (
            dict(extra_k=torch.randn(1, 3, 4, 8), extra_v=torch.randn(1, 3, 4, 8)),
            r"extra_k must have shape \(B=1, M, H=2, D=8\)",
        ),
        (
            dict(extra_k=torch.randn(1, 3, 2, 8), extra_v=torch.randn(1, 3, 2, 8),
                 extra_kv_mask=torch.ones(1, 4, dtype=torch.bool)),
            r"extra_kv_mask must have shape \(B, M\) = \(1, 3\)",
        ),
        (
            dict(extra_k=torch.randn(1, 3, 2, 8), extra_v=torch.randn(1, 3, 2, 8), extra_kv_mask=torch.ones(1, 3)),
            r"extra_kv_mask must be a bool tensor",
        ),
        (dict(backend="nope"), r"unknown backend 'nope'; available: auto, flex, reference"),
    ],
)
def test_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_patterns_are_validated_the_same_after_a_valid_one_was_cached():
    """Validated patterns are cached per call arguments; equal-comparing invalid ones (True == 1) and lists still
    meet the validation, and lists give the tuples' result."""
    q = torch.randn(1, 12, 2, 8)
    tensors = dict(q=q, k=q.flip(1), v=q.flip(2))
    expected = _call(stride=(1, 1), **tensors)  # cached
    for stride in ((True, 1), True):
        with pytest.raises(ValueError, match=r"stride(\[0\])? must be int"):
            _call(stride=stride, **tensors)
    assert torch.equal(_call(stride=[1, 1], window=[2, 2], grid=[3, 4], **tensors), expected)


def test_available_backends_lists_auto_first():
    names = available_backends()
    assert names[0] == "auto" and {"reference", "flex"} <= set(names)


def test_reference_backend_compiles_without_tracing_through_its_caches():
    """Under torch.compile the reference backend's grid mask is built in the graph, not fetched from its eager
    cache: dynamo has no lru_cache to trace through and warn about, and the output is eager's."""
    import warnings

    q = torch.randn(1, 24, 2, 16)

    def attend(q):
        return gna_attention(q, q, q, (4, 6), (2, 3), backend="reference")

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lru_cache.*")
        compiled = torch.compile(attend, fullgraph=True, backend="eager")(q)
    assert torch.equal(compiled, attend(q))


def test_reference_refuses_grids_too_large_to_materialize():
    q = torch.zeros(1, 130 * 130, 1, 8)
    with pytest.raises(ValueError, match="backend 'reference' cannot run this call: materializes an N x N mask"):
        gna_attention(q, q, q, (130, 130), 4, backend="reference")


@pytest.mark.parametrize("capability, picked", [((6, 0), "reference"), ((7, 5), "triton"), ((9, 0), "triton")])
def test_auto_passes_over_the_triton_backends_on_a_gpu_too_old_for_triton(capability, picked, monkeypatch):
    """On a pre-Volta GPU (a P100: 6.0) torch runs no triton code (Inductor refuses it), so neither flex nor our kernel
    is taken: auto takes the reference backend and says why, instead of failing at the first call. The
    decision reads only the call's device, dtype and shape: a stand-in for a CUDA tensor lets a CPU machine ask."""
    from types import SimpleNamespace

    from gna_diffusers.backends import select_backend
    from gna_diffusers.spec import GNASpec

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    q = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float16, shape=(1, 64, 2, 128))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_backend("auto", q, GNASpec.create((8, 8), 3), needs_grad=False).name == picked
    said = [str(w.message) for w in caught]
    if picked == "reference":
        assert said == ["gna_attention: using backend 'reference' because triton: triton kernels need compute "
                        "capability 7.0 or newer, as torch's own do; this GPU is 6.0"]
        with pytest.raises(ValueError, match="backend 'flex' cannot run this call: triton kernels need compute"):
            select_backend("flex", q, GNASpec.create((8, 8), 3), needs_grad=False)
    else:
        assert said == []


def test_no_backend_runs_a_grid_too_large_for_the_cpu():
    q = torch.empty(1, 16900, 1, 16)
    with pytest.raises(ValueError, match=r"no GNA backend can run this call on cpu: reference: .*flex: on CPU it"):
        gna_attention(q, q, q, (130, 130), 8)


@pytest.mark.parametrize("backend", ["reference", "flex", "triton"])
def test_out_receives_the_result_through_any_strides(backend):
    if backend == "triton":
        skip_unless_triton_interprets()
    case = dict(grid=(4, 6), window=(3, 3), stride=(1, 2))
    q, k, v = (torch.randn(2, 24, 2, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = gna_attention(q, k, v, **case, backend=backend)
    joint = torch.full((2, 30, 2, 16), float("nan"))  # [6 other rows, the 24 grid rows]
    result = gna_attention(q, k, v, **case, backend=backend, out=joint[:, 6:])
    assert result.data_ptr() == joint[:, 6:].data_ptr()
    torch.testing.assert_close(joint[:, 6:], expected)
    assert joint[:, :6].isnan().all()  # nothing outside the view was written


def test_out_is_checked():
    q = torch.randn(1, 16, 1, 16)
    with pytest.raises(ValueError, match="out must be a tensor of q's shape"):
        gna_attention(q, q, q, (4, 4), 2, out=torch.empty(1, 15, 1, 16))
    with pytest.raises(ValueError, match="unit stride along D"):
        gna_attention(q, q, q, (4, 4), 2, out=torch.empty(1, 16, 1, 32)[..., ::2])
    with pytest.raises(ValueError, match="cannot take part in autograd"):
        gna_attention(q.requires_grad_(), q, q, (4, 4), 2, out=torch.empty(1, 16, 1, 16))
