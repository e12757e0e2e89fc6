"""GNA next to what diffusers users combine it with (offline, CPU, fp32): other token layouts (FLUX.1
Kontext, one-frame video), loaders that rebuild processors (IP-Adapter, LoRA), cache hooks, offloading
(model CPU offload, group offloading), save/load, dtype casts, fused projections, training, deepcopy,
shared and compiled transformers.

"Whole-extent" windows make GNA compute exactly the stock attention, so with them every combination must
reproduce the stock model; sparse windows must still run and change the output."""

import contextlib
import copy
import warnings

import pytest
import torch
from helpers import max_diff, no_gna_warnings, skip_unless_triton_interprets
from test_apply import FAMILIES, GRIDS, OperatorSpy, config, generate

import gna_diffusers
from gna_diffusers import ConfigError, GNAConfig, apply, enabled, remove
from gna_diffusers.patches import flux, hunyuan_video

TOL = 1e-5


def whole(family, **kwargs):
    return config(family, window=-1, **kwargs)


# --- token layouts --------------------------------------------------------------------------------------


def test_one_frame_video_runs_under_the_shipped_preset(monkeypatch):
    pipe = hunyuan_video.tiny_pipeline()
    one_frame = dict(num_frames=1)
    stock = generate(pipe, "hunyuan-video", **one_frame)
    with enabled(pipe, whole("hunyuan-video")):
        assert max_diff(generate(pipe, "hunyuan-video", **one_frame), stock) <= TOL
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, "hunyuan-video-720p") as handle:
        out = generate(pipe, "hunyuan-video", steps=4, **one_frame)
        assert handle.runtime.grid == (1, 8, 8)
    assert spy.windows and all(window[0] == 1 for window in spy.windows)  # the time axis keeps the query only
    assert torch.isfinite(out).all()


def test_a_preset_that_cannot_run_on_the_grid_fails_before_the_warmup():
    pipe = hunyuan_video.tiny_pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    flat = GNAConfig(family="any", base_grid=[8, 8], window=[4, 4], dense_steps=2)  # 2-D windows, a 3-D video
    with enabled(pipe, flat), pytest.raises(ConfigError, match=r"2-D grid \(8, 8\) but the model produced a 3-D"):
        generate(pipe, "hunyuan-video", steps=4)
    assert calls == []  # raised when the pipeline prepared its latents, before any transformer call
    transformer = hunyuan_video.tiny_transformer()
    inputs = hunyuan_video.transformer_inputs(transformer, (2, 8, 8), text=4)
    with enabled(transformer, flat), pytest.raises(ConfigError, match="2-D grid"), torch.no_grad():
        transformer(**inputs)  # a bare transformer: at its first call


def test_hunyuan_video_image_to_video_token_replace_blocks(monkeypatch):
    """HunyuanVideo I2V (image_condition_type="token_replace") swaps in other block classes around the same
    processor; its first latent frame is the conditioning image, part of the video grid."""
    torch.manual_seed(0)
    transformer = type(hunyuan_video.tiny_transformer()).from_config(
        {**hunyuan_video.tiny_transformer().config, "image_condition_type": "token_replace"}
    ).eval()
    inputs = hunyuan_video.transformer_inputs(transformer, (3, 4, 4), text=6, batch=2, valid_text=(3, 6))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="hunyuan-video", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= TOL
        with enabled(transformer, GNAConfig(family="hunyuan-video", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    assert len(spy.windows) == 8


def whole_then_sparse(pipe, generate, family: str, grid: tuple, monkeypatch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``generate()`` stock; with whole windows (no gna warning) it must be reproduced on ``grid``; then with one
    dense step and windows of 3: (stock output, sparse output, the sparse attention calls made)."""
    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family=family, window=-1)) as handle:
            assert max_diff(generate(), stock) <= TOL
            assert handle.runtime.grid == grid
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family=family, window=3, dense_steps=1)):
            sparse = generate()
    return stock, sparse, len(spy.windows)


def test_skyreels_v1_image_to_video_pipeline_conditions_along_channels(monkeypatch):
    """SkyReels-V1 (HunyuanSkyreelsImageToVideoPipeline: a HunyuanVideo transformer taking the image's latents as
    channels beside the noise's): the grid is the latents'; whole windows reproduce it, sparse windows run."""
    from diffusers import HunyuanSkyreelsImageToVideoPipeline

    parts = hunyuan_video.tiny_pipeline().components
    parts["transformer"] = type(parts["transformer"]).from_config({**parts["transformer"].config, "in_channels": 8})
    pipe = HunyuanSkyreelsImageToVideoPipeline(**parts)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def generate():
        return pipe(image=image, prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **hunyuan_video.tiny_call_kwargs()).frames

    stock, sparse, sparse_calls = whole_then_sparse(pipe, generate, "hunyuan-video", (2, 8, 8), monkeypatch)
    assert max_diff(sparse, stock) > 1e-3
    assert sparse_calls == 2 * 4  # 2 sparse steps x 4 layers (true CFG off: one call per step)


@pytest.mark.parametrize("batch", [1, 2])
def test_hunyuan_video_framepack_history_tokens_are_context(batch, monkeypatch):
    """FramePack packs [4x history, 2x history, clean latents, section grid] as its image stream: GNA runs on
    the section's grid with the history and the (image-embedding + text) tokens as context; batch 2 pads
    the text with a key mask, batch 1 trims it."""
    transformer = hunyuan_video.tiny_framepack_transformer()
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    frames, rows, cols, text = 3, 8, 12, 6  # latents: a 3 x 4 x 6 token grid
    inputs = dict(
        hidden_states=randn(batch, 4, frames, rows, cols), timestep=torch.full((batch,), 500),
        encoder_hidden_states=randn(batch, text, 16), pooled_projections=randn(batch, 8),
        encoder_attention_mask=torch.arange(text)[None] < torch.tensor([[6], [4]][:batch]),
        image_embeds=randn(batch, 5, 8), indices_latents=torch.arange(3, 3 + frames),
        latents_clean=randn(batch, 4, 2, rows, cols), indices_latents_clean=torch.tensor([0, 2]),  # 2 x 4 x 6
        latents_history_2x=randn(batch, 4, 2, rows, cols), indices_latents_history_2x=torch.tensor([1, 6]),  # 1 x 2 x 3
        latents_history_4x=randn(batch, 4, 5, rows, cols), indices_latents_history_4x=torch.arange(7, 12),  # 2 x 1 x 2
        return_dict=False,
    )
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="hunyuan-video", window=-1)) as handle:
            assert max_diff(transformer(**inputs)[0], stock) <= TOL
            assert handle.runtime.layout == gna_diffusers.route.token_layout((3, 4, 6), 48 + 6 + 4 + 72, 48 + 6 + 4)
        with enabled(transformer, GNAConfig(family="hunyuan-video", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    text_keys = 5 + (text if batch == 2 else 6)  # image embeddings + text (batch 1: its valid text only)
    assert set(spy.contexts) == {((3, 4, 6), 58 + text_keys)}


def test_hunyuan_video_framepack_pipeline_warms_up_each_section(monkeypatch):
    """HunyuanVideoFramepackPipeline generates 9 frames in two sections of 2 latent frames, each a denoising loop
    of its own over [history, section grid] (the history, image embeddings and text as context): whole windows
    reproduce it, and a sparse preset keeps each section's first step dense."""
    pipe = hunyuan_video.tiny_framepack_pipeline()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def generate():
        return pipe(image=image, prompt="a red cat", height=32, width=32, num_frames=9, latent_window_size=2,
                    num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0),
                    **{k: v for k, v in hunyuan_video.tiny_call_kwargs().items() if k != "num_frames"}).frames

    stock, sparse, sparse_calls = whole_then_sparse(pipe, generate, "hunyuan-video", (2, 4, 4), monkeypatch)
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert sparse_calls == 2 * 2 * 4  # 2 sections x 2 sparse steps x 4 layers


def kontext_pipeline():
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**flux.tiny_pipeline().components)


def kontext(pipe, steps=2):
    reference = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return pipe(image=reference, prompt="a cat wearing a hat", height=32, width=32, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(0), output_type="pt", max_area=32 * 32, _auto_resize=False,
                **flux.tiny_call_kwargs()).images


def test_flux_kontext_reference_tokens_are_context(monkeypatch):
    pipe = kontext_pipeline()
    stock = kontext(pipe)
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, whole("flux")):
        assert max_diff(kontext(pipe), stock) <= TOL
    # The generated 8x8 grid is sparse; 48 text tokens and the 64 reference-image tokens are context keys.
    assert spy.contexts and set(spy.contexts) == {((8, 8), 48 + 64)}
    with enabled(pipe, config("flux")):
        assert max_diff(kontext(pipe), stock) > 1e-3
    with enabled(pipe, "flux-4k"):
        assert torch.isfinite(kontext(pipe, steps=4)).all()


@pytest.mark.parametrize("kind", ["fill", "control"])
def test_flux_fill_and_control_pipelines_condition_along_channels(kind, monkeypatch):
    """FluxFillPipeline (FLUX.1 Fill: the masked image's latents and the mask) and FluxControlPipeline (FLUX.1 Canny /
    Depth: the control image's latents) concatenate their conditions along channels: the grid is the latents', whole
    windows reproduce the stock pipeline, and a sparse preset routes the steps after the dense one."""
    from diffusers import FluxControlPipeline, FluxFillPipeline

    # packed 2x2 (the tiny VAE's 1 latent channel -> 4): latents 4 + masked image 4 + mask 4 x (2 x 2 VAE) = 24
    channels = {"fill": 24, "control": 8}[kind]
    torch.manual_seed(0)
    plain = flux.tiny_transformer()
    transformer = type(plain).from_config(plain.config, in_channels=channels, out_channels=4).eval()
    parts = {name: part for name, part in flux.tiny_pipeline().components.items()
             if name not in ("transformer", "image_encoder", "feature_extractor")}
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if kind == "fill":
        pipe = FluxFillPipeline(transformer=transformer, **parts)
        condition = dict(image=image, mask_image=(image[:, :1] > 0.5).float())
    else:
        pipe, condition = FluxControlPipeline(transformer=transformer, **parts), dict(control_image=image)

    def generate_conditioned():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **condition, **flux.tiny_call_kwargs()).images

    stock = generate_conditioned()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, whole("flux")) as handle:
            assert max_diff(generate_conditioned(), stock) <= TOL
            assert handle.runtime.grid == (8, 8)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="flux", window=3, dense_steps=1)) as handle:
            sparse = generate_conditioned()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert len(spy.windows) == 2 * 4  # 2 sparse steps x 4 layers (2 double, 2 single)


@pytest.mark.parametrize("ids, leading", [
    (lambda ids: ids.flip(0), 16),  # not row-major
    (lambda ids: torch.randn(ids.shape, generator=torch.Generator().manual_seed(0)), 1),  # diffusers' model tests
])
def test_a_layout_that_is_not_understood_runs_dense_with_one_warning(ids, leading):
    transformer = flux.tiny_transformer()
    inputs = flux.transformer_inputs(transformer, (4, 4), text=5)
    inputs["img_ids"] = ids(inputs["img_ids"])
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        apply(transformer, GNAConfig(family="flux", window=2))
        message = f"every layer runs its stock attention for this call: the first {leading} image tokens"
        with pytest.warns(UserWarning, match=message):
            out = transformer(**inputs)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once, not per call
            transformer(**inputs)
    remove(transformer)
    assert torch.equal(out, stock)


# --- loaders that rebuild or replace processors ----------------------------------------------------------


def tiny_ip_adapter(transformer, clip_dim=16):
    """An IP-Adapter state dict in diffusers' layout for the tiny FLUX transformer (random weights)."""
    gen = torch.Generator().manual_seed(3)
    inner, joint = transformer.inner_dim, transformer.config.joint_attention_dim
    ip_layers = {}
    for i in range(transformer.config.num_layers):
        for name in ("to_k_ip", "to_v_ip"):
            ip_layers[f"{i}.{name}.weight"] = torch.randn(inner, joint, generator=gen) * 0.2
            ip_layers[f"{i}.{name}.bias"] = torch.zeros(inner)
    image_proj = {"proj.weight": torch.randn(4 * joint, clip_dim, generator=gen) * 0.2,
                  "proj.bias": torch.zeros(4 * joint), "norm.weight": torch.ones(joint),
                  "norm.bias": torch.zeros(joint)}
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def test_ip_adapter_loaded_after_apply_keeps_gna_on_every_layer(monkeypatch):
    pipe = flux.tiny_pipeline()
    embeds = [torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(4))]  # (B, images, CLIP dim)
    ip_call = dict(prompts=("a red cat",), ip_adapter_image_embeds=embeds,
                   negative_ip_adapter_image_embeds=[torch.zeros_like(embeds[0])])
    handle = apply(pipe, whole("flux"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image_encoder.*")
        pipe.load_ip_adapter(tiny_ip_adapter(pipe.transformer), weight_name="unused",
                             image_encoder_pretrained_model_name_or_path=None)
    spy = OperatorSpy(monkeypatch)
    with_gna = generate(pipe, "flux", steps=1, **ip_call)
    assert len(spy.windows) == 4  # both double blocks (IP-Adapter processors) and both single blocks
    handle.remove()
    ip_processor = type(pipe.transformer.transformer_blocks[0].attn.processor)
    assert ip_processor.__name__ == "FluxIPAdapterAttnProcessor"  # remove() leaves the loader's processors
    assert "_attention_backend" not in vars(pipe.transformer.transformer_blocks[0].attn.processor) or \
        pipe.transformer.transformer_blocks[0].attn.processor._attention_backend is None
    assert max_diff(with_gna, generate(pipe, "flux", steps=1, **ip_call)) <= TOL
    apply(pipe, whole("flux"))
    pipe.unload_ip_adapter()  # rebuilds every processor with type(processor)()
    spy.windows.clear()
    generate(pipe, "flux", steps=1)
    assert len(spy.windows) == 4
    remove(pipe)


def test_ip_adapter_loaded_before_apply_is_kept_with_its_weights(monkeypatch):
    """The IP-Adapter processors hold the adapter's projections: apply() must route them, not replace
    them (which dropped the image prompt: 0.43 off stock before this was fixed)."""
    pipe = flux.tiny_pipeline()
    embeds = [torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(4))]
    ip_call = dict(prompts=("a red cat",), ip_adapter_image_embeds=embeds,
                   negative_ip_adapter_image_embeds=[torch.zeros_like(embeds[0])])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image_encoder.*")
        pipe.load_ip_adapter(tiny_ip_adapter(pipe.transformer), weight_name="unused",
                             image_encoder_pretrained_model_name_or_path=None)
    ip_processors = [block.attn.processor for block in pipe.transformer.transformer_blocks]
    stock = generate(pipe, "flux", steps=1, **ip_call)
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, whole("flux")):
        assert [block.attn.processor for block in pipe.transformer.transformer_blocks] == ip_processors
        assert max_diff(generate(pipe, "flux", steps=1, **ip_call), stock) <= TOL
        assert len(spy.windows) == 4  # GNA inside the IP-Adapter processors of both double blocks too
    assert all(processor._attention_backend is None for processor in ip_processors)
    assert torch.equal(generate(pipe, "flux", steps=1, **ip_call), stock)


def test_a_processor_gna_cannot_route_is_left_in_place_at_apply(pipe, family, monkeypatch):
    blocks = pipe.transformer.single_transformer_blocks
    custom = UserProcessor(blocks[0].attn.processor)
    blocks[0].attn.set_processor(custom)
    stock = generate(pipe, family, steps=1)
    with pytest.warns(UserWarning, match=r"single.0 \(UserProcessor\) have processors that gna-diffusers cannot"):
        handle = apply(pipe, whole(family))
    assert blocks[0].attn.processor is custom
    spy = OperatorSpy(monkeypatch)
    assert max_diff(generate(pipe, family, steps=1), stock) <= TOL
    assert len(spy.windows) == 3
    handle.remove()
    assert blocks[0].attn.processor is custom


def test_lora_loaded_after_apply_changes_the_output_and_keeps_gna(monkeypatch):
    pytest.importorskip("peft")
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = flux.tiny_transformer()
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    lora = {f"transformer.{name}": weight for name, weight in get_peft_model_state_dict(donor).items()}
    pipe = flux.tiny_pipeline()
    apply(pipe, config("flux"))
    before = generate(pipe, "flux", steps=1)
    pipe.load_lora_weights(lora, adapter_name="style")
    spy = OperatorSpy(monkeypatch)
    after = generate(pipe, "flux", steps=1)
    assert len(spy.windows) == 4 and max_diff(before, after) > 1e-4
    pipe.unload_lora_weights()
    assert torch.equal(generate(pipe, "flux", steps=1), before)
    remove(pipe)


class UserProcessor:
    """A processor of the user's own (not a subclass of any stock one)."""

    def __init__(self, stock):
        self.stock = stock

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def test_remove_leaves_processors_the_user_set_since(pipe, family, monkeypatch):
    handle = apply(pipe, config(family))
    blocks = pipe.transformer.single_transformer_blocks
    custom, stock = UserProcessor(handle.patch.stock_processor_class()), handle.patch.stock_processor_class()
    blocks[0].attn.set_processor(custom)
    blocks[1].attn.set_processor(stock)
    spy = OperatorSpy(monkeypatch)
    with pytest.warns(UserWarning, match=r"single.0 \(UserProcessor\) have processors that gna-diffusers cannot"):
        generate(pipe, family, steps=1)
    assert len(spy.windows) == 3  # the stock processor the user set on single.1 keeps GNA; single.0 is theirs
    remove(pipe)
    assert blocks[0].attn.processor is custom and blocks[1].attn.processor is stock
    assert stock._attention_backend is None
    spy.windows.clear()
    generate(pipe, family, steps=1)
    assert not spy.windows


# --- diffusers features ------------------------------------------------------------------------------------


def cache_configs(pipe):
    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                           PyramidAttentionBroadcastConfig, SeaCacheConfig, TaylorSeerCacheConfig)

    timestep = lambda: pipe.current_timestep  # noqa: E731
    return {
        "first-block": FirstBlockCacheConfig(threshold=0.5),
        "faster": FasterCacheConfig(spatial_attention_block_skip_range=2, current_timestep_callback=timestep,
                                    is_guidance_distilled=True),
        "mag": MagCacheConfig(num_inference_steps=4, mag_ratios=[1.0, 1.0, 0.99, 0.98], threshold=0.01),
        "taylorseer": TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1),
        "sea": SeaCacheConfig(threshold=0.5),
        "pyramid": PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                   spatial_attention_timestep_skip_range=(-1, 1001),
                                                   current_timestep_callback=timestep),
    }


@pytest.mark.parametrize("cache", ["first-block", "faster", "mag", "taylorseer", "sea", "pyramid"])
def test_cache_hooks_stack_with_gna(pipe, family, cache, monkeypatch):
    pipe.transformer.enable_cache(cache_configs(pipe)[cache])
    stock = generate(pipe, family, steps=4)
    with enabled(pipe, whole(family, dense_steps=1)):
        assert max_diff(generate(pipe, family, steps=4), stock) <= TOL
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, config(family, dense_steps=1)) as handle:
        sparse = generate(pipe, family, steps=4)
        # Steps come from the scheduler, so calls a cache skips do not shift the dense warm-up.
        assert handle.runtime.step == 4
    assert spy.windows and torch.isfinite(sparse).all()
    pipe.transformer.disable_cache()


def test_save_load_dtype_cast_and_fused_projections(pipe, family, tmp_path):
    stock = generate(pipe, family)
    handle = apply(pipe, whole(family))
    pipe.transformer.save_pretrained(tmp_path)  # saves weights only: processors are not part of a checkpoint
    loaded = type(pipe.transformer).from_pretrained(tmp_path)
    assert not any(isinstance(p, handle.patch.processor_class) for p in loaded.attn_processors.values())
    if family == "flux":
        pipe.transformer.fuse_qkv_projections()
        assert max_diff(generate(pipe, family), stock) <= 1e-4
        pipe.transformer.unfuse_qkv_projections()
    pipe.transformer.to(torch.float64)
    pipe.to(torch.float64)
    assert generate(pipe, family, steps=1).dtype == torch.float64
    pipe.to(torch.float32)
    assert max_diff(generate(pipe, family), stock) <= TOL


def test_layerwise_casting_keeps_gna_exact_and_sparse():
    """enable_layerwise_casting (weights stored in float8, upcast per layer for compute) around GNA layers."""
    transformer = flux.tiny_transformer()
    inputs = flux.transformer_inputs(transformer, (4, 4), text=5)
    with torch.no_grad():
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="flux", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= TOL
        with enabled(transformer, GNAConfig(family="flux", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3


def write_gguf(model: torch.nn.Module, path) -> None:
    """``model``'s state dict as a GGUF file under diffusers' own key names: 2-D weights whose rows split into
    Q8_0 blocks (32 values, one scale each) quantized, the rest float32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "flux")
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            blocks = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_quantized_transformer_keeps_gna_exact_and_sparse(tmp_path):
    """A FLUX transformer loaded from a Q8_0 GGUF file (``from_single_file`` with diffusers' GGUF quantizer, the
    way FLUX GGUF checkpoints are run: every projection becomes a ``GGUFLinear`` that dequantizes its weight per
    call). GNA sits between the projections, so it is exact with whole windows and sparse with small ones."""
    from diffusers import GGUFQuantizationConfig

    stock_model = flux.tiny_transformer()
    stock_model.save_pretrained(tmp_path)  # the config from_single_file reads
    write_gguf(stock_model, tmp_path / "transformer-Q8_0.gguf")
    transformer = flux.FluxTransformer2DModel.from_single_file(
        str(tmp_path / "transformer-Q8_0.gguf"), config=str(tmp_path),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32)).eval()
    assert type(transformer.single_transformer_blocks[0].attn.to_q).__name__ == "GGUFLinear"
    check_quantized_flux(transformer, stock_model)


def check_quantized_flux(transformer, stock_model) -> tuple[dict, torch.Tensor]:
    """``transformer``, a quantized load of the tiny FLUX ``stock_model``: its output near the stock model's, GNA's
    with whole windows equal to it, with small ones not. Returns the inputs and that sparse output."""
    inputs = flux.transformer_inputs(transformer, (4, 4), text=5)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        assert 0 < max_diff(stock, stock_model(**inputs)[0]) < 0.05  # quantized weights, the same model
        with enabled(transformer, GNAConfig(family="flux", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= TOL
        with enabled(transformer, GNAConfig(family="flux", window=2)):
            sparse = transformer(**inputs)[0]
    assert max_diff(sparse, stock) > 1e-3
    return inputs, sparse


def test_torchao_quantized_transformer_keeps_gna_exact_and_sparse_eager_and_compiled(tmp_path):
    """A FLUX transformer loaded with diffusers' ``TorchAoConfig`` (torchao int8 weight-only: every projection's
    weight becomes a torchao tensor subclass, the recipe diffusers documents with ``torch.compile``). GNA sits
    between the projections: exact with whole windows, sparse with small ones, and the same with its blocks
    compiled (dynamo traces the route beside the subclass weights)."""
    # Not in the test extra: once installed, every diffusers pipeline import loads torchao, which on a CPU-only
    # torch prints its failed CUDA extensions into every run of the main job. CI installs it (.ci/run).
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    stock_model = flux.tiny_transformer()
    stock_model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's notes on optional kernels this CPU build lacks
        transformer = flux.FluxTransformer2DModel.from_pretrained(
            tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()), torch_dtype=torch.float32).eval()
    assert type(transformer.single_transformer_blocks[0].attn.to_q.weight).__module__.startswith("torchao")
    inputs, sparse = check_quantized_flux(transformer, stock_model)
    torch._dynamo.reset()
    with torch.no_grad(), enabled(transformer, GNAConfig(family="flux", window=2)):
        transformer.compile_repeated_blocks(backend="aot_eager", fullgraph=True)
        assert max_diff(transformer(**inputs)[0], sparse) <= TOL
    torch._dynamo.reset()


def test_cpu_offload_hooks_keep_the_layout_probe_and_step_count(pipe, family):
    stock = generate(pipe, family)
    handle = apply(pipe, whole(family, dense_steps=1))
    pipe.enable_model_cpu_offload(device="cpu")
    assert max_diff(generate(pipe, family), stock) <= TOL
    assert handle.runtime.grid == tuple(GRIDS[family]) and handle.runtime.step == 3
    pipe.remove_all_hooks()


@pytest.mark.parametrize("level", ["block_level", "leaf_level"])
def test_group_offloading_keeps_gna_exact_and_sparse(pipe, family, level):
    """diffusers' group offloading wraps blocks (or leaf modules) in onload/offload hooks around the same
    attention modules. (enable_sequential_cpu_offload fails on this CPU-only build even without GNA.)"""
    stock = generate(pipe, family)
    groups = {"num_blocks_per_group": 1} if level == "block_level" else {}
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type=level, **groups)
    with enabled(pipe, whole(family, dense_steps=1)) as handle:
        assert max_diff(generate(pipe, family), stock) <= TOL
        assert handle.runtime.grid == tuple(GRIDS[family]) and handle.runtime.step == 3
    with enabled(pipe, config(family)):
        assert max_diff(generate(pipe, family), stock) > 1e-3


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_training_step_with_gradient_checkpointing(family, backend):
    transformer = FAMILIES[family].tiny_transformer().train()
    transformer.enable_gradient_checkpointing()
    grid = tuple(GRIDS[family])
    inputs = FAMILIES[family].transformer_inputs(transformer, grid, text=6)
    with enabled(transformer, config(family, backend=backend)):
        if backend == "flex":  # FlexAttention has no backward on CPU: refused clearly
            with pytest.raises(ValueError, match="backend 'flex' cannot run this call: .*backward on CPU"):
                transformer(**inputs)[0].square().mean().backward()
            return
        transformer(**inputs)[0].square().mean().backward()
    grads = [p.grad for p in transformer.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def controlnet_pipeline(family: str, nets: int, double: int = 1, multi: bool = False):
    """The family's tiny pipeline as its ControlNet pipeline, with ``nets`` ControlNets of ``double`` (dual-
    stream) blocks and, for FLUX, one single-stream block; in the family's multi-ControlNet when ``multi``."""
    import diffusers

    from gna_diffusers.patches import qwen_image

    module, prefix = {"flux": (flux, "Flux"), "qwen-image": (qwen_image, "QwenImage")}[family]
    parts = module.tiny_pipeline().components
    config = parts["transformer"].config
    extra = {"num_single_layers": 1} if family == "flux" else {}
    controlnets = [getattr(diffusers, f"{prefix}ControlNetModel").from_transformer(
        parts["transformer"], num_layers=double, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads, **extra) for _ in range(nets)]
    controlnet = getattr(diffusers, f"{prefix}MultiControlNetModel")(controlnets) if multi else controlnets[0]
    return getattr(diffusers, f"{prefix}ControlNetPipeline")(controlnet=controlnet, **parts)


def controlnet_generate(pipe, family: str, nets: int = 1, multi: bool = False) -> torch.Tensor:
    from PIL import Image

    from gna_diffusers.patches import qwen_image

    image = Image.new("RGB", (32, 32), (90, 30, 200))
    control = dict(control_image=[image] * nets, controlnet_conditioning_scale=[1.0] * nets) if multi else \
        dict(control_image=image)
    kwargs = {"flux": flux, "qwen-image": qwen_image}[family].tiny_call_kwargs()
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kwargs, **control).images


# (family, ControlNets, in a multi-ControlNet); Qwen-Image's multi-ControlNet takes one (union) ControlNet.
CONTROLNET_CASES = [("flux", 1, False), ("flux", 2, True), ("qwen-image", 1, False), ("qwen-image", 1, True)]


@pytest.mark.parametrize("family, nets, multi", CONTROLNET_CASES,
                         ids=[f"{f}-{'multi' if m else 'single'}" for f, _, m in CONTROLNET_CASES])
def test_controlnets_run_gna_beside_the_transformer(family, nets, multi, monkeypatch):
    """FLUX and Qwen-Image ControlNet pipelines (FLUX's upscaler ControlNets are used at 2-4K): each ControlNet's
    blocks attend over the same image tokens and are patched too, the preset's rules by block index; whole
    windows reproduce the stock pipeline, and remove restores the ControlNets as well."""
    pipe = controlnet_pipeline(family, nets, multi=multi)
    stock = controlnet_generate(pipe, family, nets, multi)
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family=family, window=-1)):
            assert max_diff(controlnet_generate(pipe, family, nets, multi), stock) <= TOL
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family=family, window=2)):
            sparse = controlnet_generate(pipe, family, nets, multi)
    assert max_diff(sparse, stock) > 1e-3
    layers = {"flux": (2 + 2, 1 + 1), "qwen-image": (2, 1)}[family]  # the transformer's, one ControlNet's
    assert len(spy.windows) == 2 * (layers[0] + nets * layers[1])  # 2 steps
    assert torch.equal(controlnet_generate(pipe, family, nets, multi), stock)


def test_a_controlnet_larger_than_the_transformer_stays_dense_and_is_named(monkeypatch):
    """A ControlNet with more blocks of a type than the transformer has no preset rules for its last ones: it
    is left dense, and apply says so once."""
    pipe = controlnet_pipeline("flux", nets=1, double=3)
    spy = OperatorSpy(monkeypatch)
    with pytest.warns(UserWarning, match=r"pipeline.controlnet \(FluxControlNetModel\) hold flux attention layers "
                                         r"GNA does not route, which stay dense"):
        handle = apply(pipe, GNAConfig(family="flux", window=2))
    try:
        image = controlnet_generate(pipe, "flux")
    finally:
        handle.remove()
    assert torch.isfinite(image).all() and len(spy.windows) == 2 * (2 + 2)


# --- copies, shared and compiled transformers ------------------------------------------------------------------


def test_deepcopy_gives_an_independently_patched_copy(pipe, family, monkeypatch):
    stock = generate(pipe, family)
    apply(pipe, config(family, dense_steps=1))
    sparse = generate(pipe, family)
    routed = dict(gna_diffusers.route._ROUTED)
    twin = copy.deepcopy(pipe)
    assert twin.transformer._gna_handle is not pipe.transformer._gna_handle
    assert torch.equal(generate(twin, family), sparse)
    assert twin.transformer._gna_handle.runtime.step == 3 and pipe.transformer._gna_handle.runtime.step == 3
    remove(twin)
    assert max_diff(generate(twin, family), stock) <= TOL  # the copy is stock again...
    assert torch.equal(generate(pipe, family), sparse)  # ...the original still sparse
    remove(pipe)
    patch = FAMILIES[family].PATCH
    key = (patch.dispatch_module, patch.routed_attribute)
    assert gna_diffusers.route._ROUTED.get(key, 0) == routed[key] - 1  # both released
    assert copy.deepcopy(pipe.transformer) is not None  # an unpatched copy too


def test_a_scheduler_copied_alone_follows_the_installation_without_copying_the_model(monkeypatch):
    """LTX-2 steps a copy of its scheduler for the audio latents beside the video one, after the same
    transformer calls: the copy must neither deep-copy the transformer (through the step counter) nor count
    each denoising step twice."""
    pipe = flux.tiny_pipeline()
    handle = apply(pipe, config("flux", dense_steps=2))
    follower = copy.deepcopy(pipe.scheduler)
    assert follower.step.runtime is handle.runtime and follower.step.owner is follower
    twin = copy.deepcopy(pipe)
    assert twin.scheduler.step.runtime is twin.transformer._gna_handle.runtime is not handle.runtime  # its own
    remove(twin)
    spy = OperatorSpy(monkeypatch)
    per_step = []

    def step_both(pipeline, step, timestep, callback_kwargs):
        follower.step(callback_kwargs["latents"], follower.timesteps[step], callback_kwargs["latents"])
        per_step.append(len(spy.windows))
        return callback_kwargs

    for generation in (1, 2):
        follower.set_timesteps(3)  # as LTX-2 sets its copy: before the pipeline's scheduler
        generate(pipe, "flux", prompts=("a cat",), steps=3, callback_on_step_end=step_both)
        # Per generation: two dense steps, then one sparse one (4 layers).
        assert per_step == [0, 0, 4, 4, 4, 8][:3 * generation] and handle.runtime.step == 3
    remove(pipe)
    assert "step" not in vars(pipe.scheduler)


def test_two_pipelines_sharing_a_transformer_each_count_their_steps(monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    first = flux.tiny_pipeline()
    second = FluxPipeline(**{**first.components, "scheduler": FlowMatchEulerDiscreteScheduler()})
    cfg = config("flux", dense_steps=2)
    handle = apply(first, cfg)
    assert apply(second, cfg) is handle  # the same preset: the second scheduler is counted too
    spy = OperatorSpy(monkeypatch)
    per_call = []
    first.transformer.register_forward_hook(lambda *_: per_call.append(len(spy.windows)))
    for pipeline in (first, second, first):
        generate(pipeline, "flux", prompts=("a cat",), steps=3)
    assert [b - a for a, b in zip([0] + per_call, per_call)] == [0, 0, 4] * 3
    with pytest.raises(RuntimeError, match="already applied"):
        apply(second, config("flux", dense_steps=1))  # a different preset on the shared transformer
    handle.remove()
    assert "step" not in vars(second.scheduler)


def test_from_pipe_shares_the_scheduler_and_is_attached_by_apply(monkeypatch):
    from diffusers import FluxImg2ImgPipeline

    pipe = flux.tiny_pipeline()
    cfg = config("flux", dense_steps=1)
    handle = apply(pipe, cfg)
    img2img = FluxImg2ImgPipeline.from_pipe(pipe)
    assert apply(img2img, cfg) is handle and "prepare_latents" in vars(img2img)
    spy = OperatorSpy(monkeypatch)
    per_call = []
    pipe.transformer.register_forward_hook(lambda *_: per_call.append(len(spy.windows)))
    img2img(prompt="a cat", image=torch.rand(1, 3, 32, 32), strength=1.0, height=32, width=32, num_inference_steps=3,
            generator=torch.Generator().manual_seed(0), output_type="pt", **flux.tiny_call_kwargs())
    assert [b - a for a, b in zip([0] + per_call, per_call)] == [0, 4, 4]
    handle.remove()
    assert "prepare_latents" not in vars(img2img) and "step" not in vars(pipe.scheduler)


def test_modular_pipeline_is_patched_and_counts_its_steps(monkeypatch):
    """Modular Diffusers (``FluxAutoBlocks().init_pipeline()``) holds ``.transformer`` and ``.scheduler`` as
    components: whole extent reproduces it, and the dense warm-up is counted on its scheduler."""
    from diffusers.modular_pipelines import FluxAutoBlocks

    pipe = FluxAutoBlocks().init_pipeline()
    pipe.update_components(**{k: v for k, v in flux.tiny_pipeline().components.items() if v is not None})

    def run():
        return pipe(prompt="a cat", height=32, width=32, num_inference_steps=3, output="latents",
                    generator=torch.Generator().manual_seed(0), **flux.tiny_call_kwargs())

    stock = run()
    with enabled(pipe, whole("flux")):
        assert max_diff(run(), stock) <= TOL
    spy = OperatorSpy(monkeypatch)
    per_call = []
    pipe.transformer.register_forward_hook(lambda *_: per_call.append(len(spy.windows)))
    with enabled(pipe, config("flux", dense_steps=1)) as handle:
        sparse = run()
        assert handle.runtime.grid == (8, 8)
    assert [b - a for a, b in zip([0] + per_call, per_call)] == [0, 4, 4]
    assert max_diff(sparse, stock) > 1e-3 and "step" not in vars(pipe.scheduler)


def test_a_pipeline_whose_steps_are_not_counted_is_reported():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    first = flux.tiny_pipeline()
    second = FluxPipeline(**{**first.components, "scheduler": FlowMatchEulerDiscreteScheduler()})
    with enabled(first, config("flux", dense_steps=2)):
        generate(first, "flux", steps=2)
        with pytest.warns(UserWarning, match=r"apply\(that_pipeline, preset\) to count its steps"):
            generate(second, "flux", steps=2)


def test_apply_to_a_compiled_transformer_patches_the_module_inside(pipe, family, monkeypatch):
    inner = pipe.transformer
    pipe.transformer = torch.compile(inner, backend="eager")
    handle = apply(pipe, config(family))
    assert handle.transformer is inner and inner._gna_handle is handle
    spy = OperatorSpy(monkeypatch)
    compiled = generate(pipe, family, steps=1)
    assert len(spy.windows) == 4
    pipe.transformer = inner
    assert max_diff(compiled, generate(pipe, family, steps=1)) <= TOL
    remove(pipe)
    assert not hasattr(inner, "_gna_handle")


def test_a_bare_flux_transformer_compiled_whole_runs_dense_instead_of_failing():
    """Compiled whole, a bare transformer cannot read its grid from img_ids (a host sync) and has no pipeline
    to prepare it: each call runs dense (exactly the stock model) instead of raising, at any resolution."""
    torch._dynamo.reset()  # what earlier tests compiled (frames and their guards)
    transformer = flux.tiny_transformer()
    cases = [flux.transformer_inputs(transformer, grid, text=5) for grid in ((4, 4), (4, 8))]
    with torch.no_grad():
        stock = [transformer(**inputs)[0] for inputs in cases]
        apply(transformer, GNAConfig(family="flux", window=2))
        compiled = torch.compile(transformer, backend="eager", fullgraph=True, dynamic=True)
        outs = [compiled(**inputs)[0] for inputs in cases]
    remove(transformer)
    torch._dynamo.reset()
    assert all(torch.equal(out, ref) for out, ref in zip(outs, stock))


def test_apply_remove_apply(pipe, family):
    first = None
    for _ in range(2):
        with enabled(pipe, config(family)):
            out = generate(pipe, family, steps=1)
        first = out if first is None else first
        assert torch.equal(out, first)


def test_processors_construct_without_arguments(family):
    processor = FAMILIES[family].PATCH.processor_class()
    assert processor.route is None and processor._attention_backend is None
    processor._attention_backend = "native"
    assert processor._attention_backend == "native"



def compiled_graphs(family, mode, dense_steps):
    """Graphs dynamo builds over two 6-step generations (``dense_steps`` None: the stock model), and the
    graph breaks it met. The eager backend: the graph capture is what is measured, not inductor."""
    from torch._dynamo.utils import counters

    pipe = FAMILIES[family].tiny_pipeline()
    if dense_steps is not None:
        apply(pipe, config(family, dense_steps=dense_steps))
    torch._dynamo.reset()
    counters.clear()
    if mode == "fullgraph":
        pipe.transformer.compile(fullgraph=True, backend="eager")
    else:
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")  # the CPU reference backend's mask cache
        for _ in range(2):  # a second generation compiles nothing new
            generate(pipe, family, prompts=("a cat",), steps=6)
    remove(pipe)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    torch._dynamo.reset()
    return graphs, breaks


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fullgraph", "regional"])
def test_torch_compile_sees_no_graph_break_and_recompiles_once_for_the_warmup(family, mode):
    stock, stock_breaks = compiled_graphs(family, mode, None)
    no_warmup, breaks = compiled_graphs(family, mode, 0)
    assert stock_breaks == breaks == 0
    assert no_warmup == stock  # GNA adds no graph: no per-layer or per-step specialisation
    with_warmup, breaks = compiled_graphs(family, mode, 2)
    assert breaks == 0
    # Dense -> sparse recompiles each compiled function once (whole model: 1 -> 2 graphs), never per step.
    assert stock < with_warmup <= 2 * stock
    if mode == "fullgraph":
        assert with_warmup == 2


@pytest.mark.parametrize("kind", ["bool key", "bool square", "bool square over heads", "additive key",
                                  "float product square"])
def test_route_honours_masks_over_context_on_both_sides(kind):
    """The route on its own: [text, grid, reference] with padded text, whole-extent windows: exactly the
    masked dense attention, for boolean masks (key validity; also expanded over the heads, as Lumina-Next's
    processor passes it) and float masks (additive: -inf / 0 per key, or Chroma's 1 / 0 outer product, which SDPA
    adds as a bias)."""
    import torch.nn.functional as F

    from gna_diffusers.config import LayerPattern
    from gna_diffusers.route import GNARoute, TokenLayout

    def sdpa(q, k, v, attn_mask=None, backend=None):
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)

    gen = torch.Generator().manual_seed(0)
    text, grid, reference = 5, (3, 4), 6
    total = text + 12 + reference
    q, k, v = (torch.randn(2, total, 2, 8, generator=gen) for _ in range(3))
    valid = torch.ones(2, total, dtype=torch.bool)
    valid[0, 3:text] = False  # the first prompt has 3 real text tokens
    square = kind.endswith("square")
    if kind.startswith("bool"):
        mask = valid[:, None, None, :] & (valid[:, None, :, None] if square else True)
    elif kind == "additive key":
        mask = torch.zeros(2, 1, 1, total).masked_fill(~valid[:, None, None, :], float("-inf"))
    else:
        m = valid.float()
        mask = m[:, None, None, :] * m[:, None, :, None]
    if kind.endswith("over heads"):
        mask = mask.expand(-1, 2, total, -1)
    route = GNARoute(("double", 0), text_first=True, backend="reference")
    route.layout = TokenLayout(grid, stream_tokens=12 + reference)
    route.pattern = LayerPattern(False, grid, (1, 1), (1, 1))
    out = route(sdpa, q, k, v, mask, {})
    rows = valid if square else torch.ones_like(valid)  # all-masked query rows are NaN
    torch.testing.assert_close(out[rows], sdpa(q, k, v, mask)[rows], atol=1e-5, rtol=1e-5)
    route.pattern = LayerPattern(False, (2, 2), (1, 1), (1, 1))
    sparse = route(sdpa, q, k, v, mask, {})
    assert (sparse[:, text:text + 12] - out[:, text:text + 12]).abs().max() > 1e-3  # grid queries changed
    torch.testing.assert_close(sparse[:, :text][rows[:, :text]], out[:, :text][rows[:, :text]])  # context kept


def test_a_mask_stored_per_head_runs_dense_with_one_warning():
    """A mask expanded over the heads is a view (stride 0): one head's is every head's. Stored per head, the heads'
    masks could differ, which one window cannot carry: the call runs dense, said once."""
    import torch.nn.functional as F

    from gna_diffusers.config import LayerPattern
    from gna_diffusers.route import GNARoute, TokenLayout

    def sdpa(q, k, v, attn_mask=None, backend=None):
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    mask = torch.ones(1, 2, 12, 12, dtype=torch.bool)
    mask[:, 1, :, 0] = False  # the second head may not see the first token
    route = GNARoute(("blocks", 0), text_first=False, backend="reference")
    route.layout = TokenLayout((3, 4), stream_tokens=12)
    route.pattern = LayerPattern(False, (2, 2), (1, 1), (1, 1))
    with pytest.warns(UserWarning, match=r"gna: layer blocks\.0 runs dense: attention mask of shape \(1, 2, 12, 12\)"):
        out = route(sdpa, q, k, v, mask, {})
    torch.testing.assert_close(out, sdpa(q, k, v, mask))


def test_a_dense_fallback_inside_blocks_compiled_fullgraph_runs_and_is_said_after_the_graph():
    """A layer's dense fallback (here a mask stored per head, passed through FLUX's joint_attention_kwargs) inside
    blocks compiled with fullgraph=True, where warnings.warn cannot run: the call runs dense (the stock output)
    instead of failing the compile, and its notice comes at the transformer's next call, outside the graph."""
    torch._dynamo.reset()  # what earlier tests compiled (frames and their guards)
    transformer = flux.tiny_transformer()
    inputs = flux.transformer_inputs(transformer, (4, 4), text=5)
    tokens = 5 + 16
    mask = torch.ones(1, transformer.config.num_attention_heads, tokens, tokens, dtype=torch.bool)
    mask[:, -1, :, 0] = False  # the last head may not see the first token: no one window carries that
    inputs["joint_attention_kwargs"] = {"attention_mask": mask}
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="flux", window=2)):
            transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
            out = transformer(**inputs)[0]
            with pytest.warns(UserWarning, match=r"gna: layer double\.0 runs dense: attention mask of shape "
                                                 r"\(1, 2, 21, 21\).*\(in a torch.compile'd forward\)"):
                transformer(**inputs)
    torch._dynamo.reset()
    assert max_diff(out, stock) <= 1e-6


@pytest.mark.parametrize("text_first", [True, False], ids=["text-first", "text-after"])
def test_route_takes_grid_queries_against_keys_with_context_beside_the_grid(text_first):
    """Image queries alone against [text, image] keys (PRX) or [image, text] keys (NucleusMoE-Image), with a (B, S)
    key mask as diffusers' dispatch takes it: whole windows are exactly the masked dense attention; a window changes
    the grid's rows."""
    import torch.nn.functional as F

    from gna_diffusers.config import LayerPattern
    from gna_diffusers.route import GNARoute, TokenLayout

    def sdpa(q, k, v, attn_mask=None, backend=None):
        mask = None if attn_mask is None else attn_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)

    gen = torch.Generator().manual_seed(0)
    text, grid = 5, (3, 4)
    q = torch.randn(2, 12, 2, 8, generator=gen)
    k, v = (torch.randn(2, 12 + text, 2, 8, generator=gen) for _ in range(2))
    valid = torch.ones(2, 12 + text, dtype=torch.bool)
    if text_first:
        valid[0, 3:text] = False  # the first prompt: 3 real tokens, then padding, then the grid
    else:
        valid[0, 12 + 3:] = False  # the grid, then 3 real tokens and padding
    route = GNARoute(("blocks", 0), text_first=text_first, backend="reference", cached_context_keys=True)
    route.layout = TokenLayout(grid, stream_tokens=12)
    route.pattern = LayerPattern(False, grid, (1, 1), (1, 1))
    out = route(sdpa, q, k, v, valid, {})
    torch.testing.assert_close(out, sdpa(q, k, v, valid), atol=1e-5, rtol=1e-5)
    route.pattern = LayerPattern(False, (2, 2), (1, 1), (1, 1))
    assert (route(sdpa, q, k, v, valid, {}) - out).abs().max() > 1e-3


def test_route_writes_the_grid_rows_into_the_joint_output(monkeypatch):
    """Eager inference: GNA writes the grid queries' rows straight into the (B, S, H, D) output, so the
    route holds no grid-sized buffer beside it (the concatenation it replaced held two). GNA and the dense
    context attention are stood in for by ops that allocate only their results, so the peak is the route's."""
    from test_calibrate import PeakTensorMemory

    import gna_diffusers
    from gna_diffusers.config import LayerPattern
    from gna_diffusers.route import GNARoute, TokenLayout

    def dense(q, k, v, attn_mask=None, backend=None):  # the context queries' attention
        return q * 2

    def operator(q, *args, out=None, **kwargs):
        return q.clone() if out is None else out.copy_(q)

    monkeypatch.setattr(gna_diffusers.route, "gna_attention", operator)
    text, grid = 4, (8, 8)
    q, k, v = (torch.randn(1, text + 64, 2, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    route = GNARoute(("double", 0), text_first=True, backend="triton")
    route.layout = TokenLayout(grid, stream_tokens=64)
    route.pattern = LayerPattern(False, (3, 3), (1, 1), (1, 1))
    tracker = PeakTensorMemory(q, k, v)
    with tracker:
        out = route(dense, q, k, v, None, {})
    torch.testing.assert_close(out[:, text:], q[:, text:])
    torch.testing.assert_close(out[:, :text], q[:, :text] * 2)
    output, grid_rows = out.numel() * 4, 64 * 2 * 16 * 4
    assert tracker.peak < output + grid_rows // 2, (tracker.peak, output, grid_rows)
    with torch.enable_grad():  # autograd keeps the out-of-place path
        q.requires_grad_(True)
        route(dense, q, k, v, None, {}).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("order", ["skip-first", "apply-first"])
def test_layer_skip_guidance_hooks_act_on_gna_layers(order):
    """diffusers' layer skipping (Skip Layer / Perturbed Attention Guidance) on a GNA model: with
    ``skip_attention_scores`` it replaces attention by its values through a function mode that only sees
    the stock SDPA call, and it looks processors up in its registry by class. Both hold for GNA's
    processors: whole-extent GNA with the skip equals stock with the skip, in either order. (Qwen-Image:
    diffusers' own hooks fail on the FLUX and HunyuanVideo attention classes, GNA or not.)"""
    from diffusers.hooks import LayerSkipConfig, apply_layer_skip

    from gna_diffusers.patches import qwen_image

    def transformer():
        return qwen_image.tiny_transformer()

    inputs = qwen_image.transformer_inputs(transformer(), (4, 4), text=6)
    # (skip_attention=True, the processor-output skip, fails on Qwen-Image in diffusers 0.42 with or without GNA.)
    skip = LayerSkipConfig(indices=[0], fqn="transformer_blocks", skip_attention=False, skip_attention_scores=True,
                           skip_ff=False)
    with torch.no_grad():
        plain = transformer()(**inputs)[0]
        stock = transformer()
        apply_layer_skip(stock, skip)
        expected = stock(**inputs)[0]
        model = transformer()
        with enabled(model, GNAConfig(family="qwen-image", window=-1)) if order == "apply-first" else \
                contextlib.nullcontext():
            apply_layer_skip(model, skip)  # looks the layer's processor class up in diffusers' registry
            with enabled(model, GNAConfig(family="qwen-image", window=-1)) if order == "skip-first" else \
                    contextlib.nullcontext():
                skipped = model(**inputs)[0]
    assert max_diff(expected, plain) > 1e-2  # the skips change the output
    assert max_diff(skipped, expected) <= TOL


# family -> its transformer_inputs' extra arguments: calls whose masks, scales or layouts reach the backends unusually
UNUSUAL_CALLS = {
    "bria-fibo2": dict(text=64, valid_text=(10, 60), edited=((2, 2),)),  # gist after the image, key mask, edit tokens
    "lumina-next": dict(text=6),  # its mask expanded over the heads, a proportional softmax scale
    "omnigen": dict(text=6, valid_text=(4, 6)),  # a (B, 1, S, S) additive mask of the dtype's minimum
    "auraflow": dict(text=6),  # learned registers before the prompt, joint and single blocks
}


@pytest.mark.parametrize("family", UNUSUAL_CALLS)
def test_backends_agree_on_unusual_calls(family):
    """flex and triton (the interpreter on CPU) against the reference backend inside transformers whose attention calls
    carry what the simpler families' do not."""
    from gna_diffusers.patches import MODULES

    skip_unless_triton_interprets()

    module = MODULES[family]
    transformer = module.tiny_transformer()
    inputs = module.transformer_inputs(transformer, (4, 4), batch=2, **UNUSUAL_CALLS[family])
    outputs = {}
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        for backend in ("reference", "flex", "triton"):
            with no_gna_warnings(), enabled(transformer, GNAConfig(family=family, base_grid=[4, 4], window=2,
                                                                    backend=backend)):
                outputs[backend] = transformer(**inputs)[0]
    assert max_diff(outputs["reference"], stock) > 1e-3  # the windows are sparse: GNA ran
    for backend in ("flex", "triton"):
        assert max_diff(outputs[backend], outputs["reference"]) <= 1e-4, backend


def test_triton_backend_in_a_transformer_matches_the_reference(family):
    """The triton kernel (the interpreter on CPU) inside a transformer: the route writes its grid rows into
    the joint output through out=, with padded text (HunyuanVideo) as extra keys; same as the reference."""
    skip_unless_triton_interprets()
    module = FAMILIES[family]
    transformer = module.tiny_transformer()
    grid = (2, 4, 4) if module.PATCH.video else (4, 4)
    extra = {"valid_text": (3, 6)} if family == "hunyuan-video" else {}
    inputs = module.transformer_inputs(transformer, grid, text=6, batch=2, **extra)
    with torch.no_grad():
        outputs = {"stock": transformer(**inputs)[0]}
        for backend in ("triton", "reference"):
            with enabled(transformer, config(family, base_grid=list(grid), window=2, backend=backend)):
                outputs[backend] = transformer(**inputs)[0]
    assert max_diff(outputs["triton"], outputs["reference"]) <= 1e-4
    assert max_diff(outputs["triton"], outputs["stock"]) > 1e-2  # the windows are sparse: GNA ran


def test_compiled_blocks_write_the_grid_rows_straight_into_the_joint_output():
    """FLUX's blocks compiled with Inductor (CPU; the kernel interpreted): in the generated code the kernel writes the
    grid rows into the joint [text, grid] output that already holds the text rows (the buffer ``joint_around``
    returns), with no grid-sized buffer of its own copied in after; and the compiled output is the eager one."""
    import re

    from torch._inductor.utils import run_and_get_code

    skip_unless_triton_interprets()
    torch._dynamo.reset()
    transformer = flux.tiny_transformer()
    inputs = flux.transformer_inputs(transformer, (8, 8), text=8)
    with torch.no_grad(), enabled(transformer, GNAConfig(family="flux", window=3, backend="triton")):
        eager = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True)
        compiled, codes = run_and_get_code(lambda: transformer(**inputs)[0])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    code = "\n".join(codes)
    aliases = dict(re.findall(r"^\s*(buf\d+) = (buf\d+)(?:;|$)", code, re.M))  # bufB = bufA: the same buffer

    def buffer(name: str) -> str:
        while name in aliases:
            name = aliases[name]
        return name

    joints = set(re.findall(r"(buf\d+) = torch\.ops\.gna_diffusers\.joint_around\.default\(", code))
    written = re.findall(r"gna_fwd_into\.default\(.*reinterpret_tensor\((buf\d+), [^()]*\([^()]*\), [^()]*\([^()]*\), "
                         r"\d+\)\)$", code, re.M)
    assert written and joints  # a double- and a single-stream block graph (each code once per compile)
    assert {buffer(name) for name in written} <= joints

