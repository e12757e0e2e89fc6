"""Stable Diffusion 3 / 3.5 (tiny offline transformer and pipelines, fp32, CPU): GNA on each joint block's
[image, text] attention, and on SD3.5 Medium's image-only ``attn2``; the stock processor calls
F.scaled_dot_product_attention itself."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import sd3

GRID = (4, 6)
TEXT = 7


@pytest.mark.parametrize("dual", [(), (0,)], ids=["sd3", "sd3.5-medium"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(dual, monkeypatch):
    """SD3.5 Medium's ``attn2`` shares ``attn``'s processor in stock: GNA routes both with the block's route, and
    removal gives the block its one shared stock processor back."""
    transformer = sd3.tiny_transformer(dual_attention_layers=dual)
    block = transformer.transformer_blocks[0]
    inputs = sd3.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        routed = [block.attn, *([block.attn2] if dual else [])]
        assert {type(attn.processor) for attn in routed} == {sd3.GNAJointAttnProcessor2_0}

    assert_round_trip(transformer, "sd3", inputs, installed)
    assert type(block.attn.processor) is sd3.JointAttnProcessor2_0
    assert not dual or block.attn2.processor is block.attn.processor
    # attn of both blocks, then attn2 of the first over the grid alone, per call
    assert spy.contexts == ([(GRID, TEXT)] + [(GRID, 0)] * bool(dual) + [(GRID, TEXT)]) * 2


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """Both of SD3.5 Medium's self-attentions against the stock model masked independently: [image, text] in
    ``attn``, the image tokens alone in ``attn2``."""
    window, stride = (2, 4), (1, 2)
    transformer = sd3.tiny_transformer(dual_attention_layers=(0,))
    inputs = sd3.transformer_inputs(transformer, GRID, text=TEXT)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="sd3", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        masked_sdpa(joint_mask(GRID, window, stride, 0, TEXT), monkeypatch)
        masked_sdpa(joint_mask(GRID, window, stride, 0), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def generate(pipe, steps=3, **kwargs):
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **sd3.tiny_call_kwargs(), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """StableDiffusion3Pipeline (classifier-free guidance in one batch of 2) at 32x32 pixels: an 8x8 grid and
    77 CLIP + 48 T5 prompt tokens. Whole windows reproduce it; a sparse preset routes the steps after the dense
    one."""
    pipe = sd3.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="sd3", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="sd3", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((8, 8), 77 + 48)] * (2 * 2)  # 2 sparse steps x 2 layers


def test_image_to_image_pipeline_keeps_the_grid():
    from diffusers import StableDiffusion3Img2ImgPipeline

    pipe = StableDiffusion3Img2ImgPipeline(**sd3.tiny_pipeline().components)
    image = torch.rand(1, 3, 32, 32)
    stock = generate(pipe, image=image, strength=0.8)
    with no_gna_warnings(), enabled(pipe, GNAConfig(family="sd3", window=-1)) as handle:
        assert max_diff(generate(pipe, image=image, strength=0.8), stock) <= 1e-5
        assert handle.runtime.grid == (8, 8)


def tiny_controlnet(kind: str, transformer):
    """SD3's kind of ControlNet (joint blocks over [image, text], copied from the transformer) or SD3.5 Large's (its
    blocks attend over the image tokens alone; no prompt, no positional table), with one block."""
    from diffusers import SD3ControlNetModel

    if kind == "sd3":
        return SD3ControlNetModel.from_transformer(transformer, num_layers=1, num_extra_conditioning_channels=0)
    config = transformer.config
    torch.manual_seed(0)
    controlnet = SD3ControlNetModel(
        sample_size=config.sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=None, caption_projection_dim=32,
        pooled_projection_dim=2 * sd3.TEXT_WIDTH, pos_embed_type=None, use_pos_embed=False,
        force_zeros_for_pooled_projection=False).eval()
    for parameter in controlnet.controlnet_blocks.parameters():  # zero at initialisation: make them count
        torch.nn.init.normal_(parameter, std=0.2)
    return controlnet


@pytest.mark.parametrize("kind, multi", [("sd3", False), ("sd3", True), ("sd3.5", False)],
                         ids=["sd3", "sd3-multi", "sd3.5-image-only"])
def test_controlnet_blocks_are_patched_beside_the_transformer(kind, multi, monkeypatch):
    """StableDiffusion3ControlNetPipeline, with one ControlNet or SD3's multi-ControlNet: the ControlNet's blocks
    attend over the same image tokens (SD3's with the prompt, SD3.5 Large's without) and run GNA too; whole windows
    reproduce the stock pipeline, and removal restores the ControlNet."""
    from diffusers import SD3MultiControlNetModel, StableDiffusion3ControlNetPipeline
    from PIL import Image

    parts = sd3.tiny_pipeline().components
    controlnet = tiny_controlnet(kind, parts["transformer"])
    pipe = StableDiffusion3ControlNetPipeline(
        controlnet=SD3MultiControlNetModel([controlnet]) if multi else controlnet, **parts)
    image = Image.new("RGB", (32, 32), (90, 30, 200))
    control = dict(control_image=[image] if multi else image, controlnet_conditioning_scale=[1.0] if multi else 1.0)
    stock = generate(pipe, steps=2, **control)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="sd3", window=-1)):
            assert max_diff(generate(pipe, steps=2, **control), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="sd3", window=2)):
            assert max_diff(generate(pipe, steps=2, **control), stock) > 1e-3
    controlnet_context = 77 + 48 if kind == "sd3" else 0  # SD3.5 Large's ControlNet blocks hold no prompt
    step = [((8, 8), controlnet_context)] + [((8, 8), 77 + 48)] * 2  # the ControlNet's block, the transformer's 2
    assert spy.contexts == step * 2
    assert torch.equal(generate(pipe, steps=2, **control), stock)


def test_fused_qkv_projections_keep_gna():
    transformer = sd3.tiny_transformer()
    inputs = sd3.transformer_inputs(transformer, GRID, text=TEXT)
    transformer.fuse_qkv_projections()
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="sd3", window=-1)):
            assert {type(b.attn.processor) for b in transformer.transformer_blocks} == {
                sd3.GNAFusedJointAttnProcessor2_0}
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="sd3", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3


def test_full_sizes_by_name_and_preset_grids():
    """Published sizes count the positional table, a buffer here: SD3.5 Medium's 384x384x1536 is 0.23B of its 2.5B."""
    from gna_diffusers.harness.models import on_meta

    def billions(name: str) -> float:
        config, _ = sd3.full_size(name)
        model = on_meta(sd3.PATCH.transformer_class, config)
        return sum(t.numel() for t in (*model.parameters(), *model.buffers())) / 1e9

    assert billions("stabilityai/stable-diffusion-3-medium-diffusers") == pytest.approx(2, rel=0.05)
    assert billions("stabilityai/stable-diffusion-3.5-large") == pytest.approx(8.1, rel=0.05)
    assert billions("stabilityai/stable-diffusion-3.5-large-turbo") == pytest.approx(8.1, rel=0.05)
    assert billions("stabilityai/stable-diffusion-3.5-medium") == pytest.approx(2.5, rel=0.05)
    assert sd3.latent_grid(1024, 1024) == tuple(load_preset("sd3-1k").base_grid)
    assert sd3.latent_grid(2048, 2048) == tuple(load_preset("sd3-2k").base_grid)


def ip_adapter_state_dict(transformer, embed_dim: int = 8, seed: int = 0) -> dict:
    """A random IP-Adapter in the layout ``_load_ip_adapter_weights`` takes: an image projection (1 head of 64,
    4 queries) and one processor per attention layer."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    torch.manual_seed(seed)
    projection = IPAdapterTimeImageProjection(embed_dim=embed_dim, output_dim=width, hidden_dim=64, heads=1,
                                              num_queries=4, timestep_in_dim=32)
    layers = {}
    for index in range(len(transformer.attn_processors)):
        processor = SD3IPAdapterJointAttnProcessor2_0(width, width, config.attention_head_dim, timesteps_emb_dim=64)
        for parameter in processor.parameters():  # its output projections start at zero: make them count
            torch.nn.init.normal_(parameter, std=0.2)
        layers |= {f"{index}.{name}": value for name, value in processor.state_dict().items()}
    return {"image_proj": projection.state_dict(), "ip_adapter": layers}


@pytest.mark.parametrize("loaded_first", [True, False], ids=["loaded-before-apply", "loaded-after-apply"])
def test_ip_adapter_processors_keep_their_weights_and_run_gna(loaded_first):
    """SD3's IP-Adapter processors hold weights and call F.scaled_dot_product_attention: loaded before apply or
    after, GNA puts a subclass sharing those weights in their place (the state dict keeps its keys); whole windows
    reproduce the stock model with the adapter, sparse ones differ, and remove() gives the adapter's own
    processors back."""
    transformer = sd3.tiny_transformer()
    inputs = sd3.transformer_inputs(transformer, GRID, text=TEXT)
    embeds = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(2))
    state = ip_adapter_state_dict(transformer)

    def run():
        with torch.no_grad():
            return transformer(**inputs, joint_attention_kwargs={"ip_adapter_image_embeds": embeds})[0]

    def gna_processors() -> set:
        return {type(b.attn.processor) for b in transformer.transformer_blocks}

    def load() -> list:
        transformer._load_ip_adapter_weights(state)
        return [b.attn.processor for b in transformer.transformer_blocks]

    adapters = load() if loaded_first else None
    with no_gna_warnings(), enabled(transformer, GNAConfig(family="sd3", window=-1)):
        if not loaded_first:
            adapters = load()  # replaces GNA's processors; the next call puts GNA's back
        keys = transformer.state_dict().keys()
        whole = run()
        assert gna_processors() == {sd3.GNASD3IPAdapterJointAttnProcessor2_0}
        assert transformer.state_dict().keys() == keys
    stock = run()
    assert max_diff(whole, stock) <= 1e-5
    assert [b.attn.processor for b in transformer.transformer_blocks] == adapters  # the adapter's own, back
    with enabled(transformer, GNAConfig(family="sd3", window=2)):
        assert max_diff(run(), stock) > 1e-3
    assert torch.equal(run(), stock)
