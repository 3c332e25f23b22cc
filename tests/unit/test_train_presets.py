"""Every preset is a valid configuration, and the two fill50k recipes say what their sources say."""
import pytest

from t2iops.config import load_config
from t2iops.errors import UsageError
from t2iops.presets import preset_names, preset_path


def test_presets_exist():
    assert {"toy", "sdxl-fill50k-diffengine", "sdxl-fill50k-diffusers"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_validates(name):
    cfg = load_config(preset_path(name))
    assert cfg.train.batch_size >= 1
    # The resolution must suit the family's adapter (SDXL adapters downscale by 16, then 2 more).
    assert cfg.encode.resolution % 32 == 0


def test_diffengine_preset_matches_its_recipe():
    cfg = load_config(preset_path("sdxl-fill50k-diffengine"))
    assert cfg.model.base_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert cfg.model.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.max_grad_norm) == (1e-5, 1e-2, 1.0)
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (2, 2)
    assert cfg.train.mixed_precision == "fp16" and cfg.train.gradient_checkpointing
    assert cfg.encode.resolution == 1024 and cfg.encode.random_crop and cfg.encode.random_flip
    # 3 epochs of 50k samples at 4 samples per optimizer step.
    assert cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum == 3 * 50_000


def test_diffusers_preset_matches_its_recipe():
    cfg = load_config(preset_path("sdxl-fill50k-diffusers"))
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.batch_size, cfg.train.grad_accum) == (1e-5, 15000, 1, 4)
    assert cfg.train.mixed_precision == "fp16" and cfg.train.seed == 42 and cfg.train.validate_every == 100
    assert cfg.model.vae is None and not cfg.encode.random_flip


def test_schema_defaults_are_the_diffusers_recipe():
    """Without a params file a run is the diffusers SDXL recipe (seeds and the adapter's shape
    aside: the schema keeps seed 0 and derives the adapter from the base model's UNet)."""
    from t2iops.config import Config

    recipe = load_config(preset_path("sdxl-fill50k-diffusers"), ["train.seed=0", "model.adapter_type=auto",
                                                                   "model.adapter_channels=null"])
    assert (Config().train, Config().encode, Config().model, Config().export) == (
        recipe.train, recipe.encode, recipe.model, recipe.export)


def test_unknown_preset():
    with pytest.raises(UsageError, match="unknown preset"):
        preset_path("nope")
