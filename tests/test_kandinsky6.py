"""Kandinsky 6 (tiny offline transformer and pipeline, video and audio, fp32, CPU): GNA on each fused block's video
self-attention only; the image-to-video reference frame, appended last, is context; the audio stream, the text
and the cross-modal attentions stay stock."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_kandinsky6
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import kandinsky6
from gna_diffusers.route import LayoutError

GRID = (3, 4, 6)
FRAME_TOKENS = 4 * 6
AUDIO = 10  # audio latents: another length than the video's and the text's, so masks tell them apart


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("audio, reference", [(0, False), (AUDIO, False), (AUDIO, True)],
                         ids=["video", "video + audio", "image-to-video + audio"])
def test_whole_extent_reproduces_stock_and_only_video_self_attention_is_routed(audio, reference, monkeypatch):
    transformer = kandinsky6.tiny_transformer()
    inputs = kandinsky6.transformer_inputs(transformer, GRID, text=7, audio=audio, reference=reference)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*gna.*")
            with enabled(transformer, GNAConfig(family="kandinsky6", window=-1)):
                assert max_diff(transformer(**inputs), stock) <= 1e-5
                routed = {name for name, p in transformer.attn_processors.items()
                          if type(p) is kandinsky6.GNAKandinsky6AttnProcessor}
                assert routed == {f"visual_transformer_blocks.{i}.video_dec_block.self_attention.processor"
                                  for i in range(2)}
            with enabled(transformer, GNAConfig(family="kandinsky6", window=2)):
                assert max_diff(transformer(**inputs), stock) > 1e-3
        assert max_diff(transformer(**inputs), stock) == 0  # removed: bit-identical
    assert spy.contexts == [(GRID, FRAME_TOKENS if reference else 0)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """The reference frame's tokens are seen by every video query and see everything; the video's tokens see
    their window: checked against the stock model whose video self-attention gets that boolean mask."""
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = kandinsky6.tiny_transformer()
    inputs = kandinsky6.transformer_inputs(transformer, GRID, text=7, audio=AUDIO, reference=True)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="kandinsky6", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)
        masked_self_attention(transformer_kandinsky6, joint_mask(GRID, window, stride, 0, FRAME_TOKENS), monkeypatch)
        expected = transformer(**inputs)
    assert max_diff(routed, expected) <= 1e-5


def test_token_types_that_mark_no_trailing_frames_are_named():
    transformer = kandinsky6.tiny_transformer()
    inputs = kandinsky6.transformer_inputs(transformer, GRID, text=7, reference=True)
    inputs["visual_token_type_ids"] = torch.tensor([[0, 1, 0, 0]])
    with pytest.raises(LayoutError, match=r"conditioning frames \[False, True, False, False\] that are not the last"):
        kandinsky6.layout_probe(transformer, (), inputs, None)


def generate(pipe, **kwargs):
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kandinsky6.tiny_call_kwargs(), **kwargs)


@pytest.mark.parametrize("image", [False, True], ids=["text-to-video", "image-to-video"])
def test_pipeline_runs_gna_on_the_video_after_the_warm_up(image, monkeypatch):
    """Kandinsky6TI2VAPipeline with video and audio, 32x32 pixels x 5 frames (a 2x4x4 grid); image-to-video
    appends the reference frame, which the layout takes from prepare_latents (no token types read). Whole windows
    reproduce the video and the audio; a sparse preset routes each layer of the steps after the dense one."""
    pipe = kandinsky6.tiny_pipeline()
    kwargs = {"image": Image.new("RGB", (32, 32), (200, 40, 90))} if image else {}
    stock = generate(pipe, **kwargs)
    monkeypatch.setattr(kandinsky6, "_reference_frames", lambda *_: pytest.fail("read the token types to the host"))
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="kandinsky6", window=-1)):
            whole = generate(pipe, **kwargs)
        assert max_diff((whole.frames, whole.audio), (stock.frames, stock.audio)) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="kandinsky6", window=2, dense_steps=1)) as handle:
            sparse = generate(pipe, **kwargs)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse.frames).all() and torch.isfinite(sparse.audio).all()
    # 2 sparse steps x 2 calls (classifier-free guidance) x 2 layers
    assert spy.contexts == [((2, 4, 4), 16 if image else 0)] * (2 * 2 * 2)


def test_preset_grid():
    assert kandinsky6.latent_grid(480, 864, 121) == tuple(load_preset("kandinsky6-480p").base_grid)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        kandinsky6.latent_grid(480, 864, 120)
