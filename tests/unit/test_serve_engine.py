"""The inference core (t2iops.serve.engine) on the tiny SD1.5 model with a random adapter: every
request field it refuses is named, defaults come from the evaluate settings, generation is the
evaluation's sampler (same seed -> same image, from any thread), and an adapter reference that
cannot be loaded is a usage error naming what to give."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from t2iops.presets import preset_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine(tiny_sd15_path, tmp_path_factory):
    import torch
    from diffusers import T2IAdapter

    from t2iops.models.family import adapter_kwargs_for
    from t2iops.serve.engine import Engine, load_adapter, load_base

    cfg = preset_config("toy", [f"model.base_model={tiny_sd15_path}", "evaluate.num_inference_steps=2",
                                "evaluate.seed=5", "evaluate.conditioning_scales=[0.5]"])
    base = load_base(cfg)
    kwargs = adapter_kwargs_for(base.model.unet_config, "full_adapter", num_res_blocks=1,
                                vae_scale_factor=base.model.vae_scale_factor)
    folder = tmp_path_factory.mktemp("engine") / "adapter"
    torch.manual_seed(0)
    T2IAdapter(**kwargs).save_pretrained(str(folder))
    return Engine(base, load_adapter(str(folder), cfg, "torch"))


def condition(width: int = 32, height: int = 32) -> Image.Image:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return Image.fromarray(pixels)


def request(**fields):
    from t2iops.serve.engine import GenerateRequest

    return GenerateRequest(**{"prompt": "a red circle", "condition": condition(), **fields})


@pytest.mark.parametrize("fields, named, says", [
    ({"prompt": ""}, "prompt", "is empty"),
    ({"prompt": "   "}, "prompt", "is empty"),
    ({"prompt": None}, "prompt", "must be a string"),
    ({"prompt": "x" * 10_000}, "prompt", "10000 characters, more than the limit of 2000"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt", "more than the limit of 2000"),
    ({"condition": b"\x89PNG"}, "condition", "must be an image, got bytes"),
    ({"condition": condition(40, 32)}, "condition", "width 40 (nearest valid: 32 or 48): each side must be a multiple "
                                                    "of 16"),
    ({"condition": condition(32, 8)}, "condition", "height 8 (nearest valid: 16)"),
    ({"condition": condition(2064, 2048)}, "condition", "more than the limit of 4194304 (2048x2048)"),
    ({"scale": -0.1}, "scale", "-0.1 is out of range: give a number from 0 to 10"),
    ({"scale": float("inf")}, "scale", "out of range"),
    ({"scale": "1"}, "scale", "must be a number from 0 to 10, got '1'"),
    ({"steps": 0}, "steps", "0 is out of range: give an integer from 1 to 200"),
    ({"steps": 201}, "steps", "out of range"),
    ({"steps": 2.0}, "steps", "must be an integer from 1 to 200, got 2.0"),
    ({"steps": True}, "steps", "must be an integer"),
    ({"guidance": 51}, "guidance", "51 is out of range: give a number from 0 to 50"),
    ({"guidance": float("nan")}, "guidance", "out of range"),
    ({"seed": -1}, "seed", "-1 is out of range: give an integer from 0 to"),
    ({"seed": 2**63}, "seed", "out of range"),
])
def test_every_bad_field_is_named(engine, fields, named, says):
    from t2iops.errors import UsageError
    from t2iops.serve.engine import BadRequest

    with pytest.raises(BadRequest) as caught:
        engine.check(request(**fields))
    assert caught.value.field == named
    assert str(caught.value).startswith(f"{named}: ") and says in str(caught.value)
    assert isinstance(caught.value, UsageError)  # the CLI's exit 2; a server's 4xx


def test_a_good_request_passes_and_takes_the_evaluate_defaults(engine):
    engine.check(request(scale=0, steps=1, guidance=0, seed=0, negative_prompt=""))
    used = engine.resolve(request(condition=condition(48, 32)))
    assert (used["steps"], used["seed"], used["scale"], used["width"], used["height"]) == (2, 5, 0.5, 48, 32)
    described = engine.describe()
    assert described["size_multiple"] == 16 and described["adapter"]["runtime"] == "torch"
    assert described["adapter"]["verified"] is False  # a bare folder: no manifest to check it against
    assert described["sampler"]["num_inference_steps"] == 2


def test_same_seed_same_image_from_any_thread(engine):
    first = np.asarray(engine.generate(request(seed=3)))
    assert first.shape == (32, 32, 3)
    results = [None] * 3

    def run(i):
        results[i] = np.asarray(engine.generate(request(seed=3 if i < 2 else 4)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(results[0], first) and np.array_equal(results[1], first)
    assert not np.array_equal(results[2], first)
    unguided = np.asarray(engine.generate(request(seed=3, scale=0.0)))
    assert not np.array_equal(unguided, first)  # the adapter steers the image


def test_adapter_references_that_cannot_load(tmp_path):
    from t2iops.errors import UsageError
    from t2iops.serve.engine import load_adapter

    cfg = preset_config("toy")
    with pytest.raises(UsageError, match="registry:champion: no registry location: give --registry"):
        load_adapter("registry:champion", cfg)
    with pytest.raises(UsageError, match=r"runtime 'tensorrt': choose torch or onnxruntime"):
        load_adapter(str(tmp_path), cfg, "tensorrt")
    with pytest.raises(UsageError, match="no such folder; give an export folder"):
        load_adapter(str(tmp_path / "missing"), cfg)
    with pytest.raises(UsageError, match="not an adapter: give an export folder"):
        load_adapter(str(tmp_path), cfg)
    with pytest.raises(UsageError, match="the version must be 1-128 letters"):
        load_adapter("registry:../x", cfg, registry=str(tmp_path))


def test_an_image_is_the_evaluations_sample_with_that_seed(engine):
    """The evaluation generates batches, one generator per image seeded evaluate.seed + index;
    the engine's single image with that seed is the same image."""
    import dataclasses

    from t2iops.evaluate.sampling import generate

    batch = generate(engine.generators, ["a red circle", "a red circle"], [5, 6], (32, 32), engine.settings,
                     conditions=[condition(), condition()], scale=engine.default_scale)
    assert dataclasses.asdict(engine.settings)["num_inference_steps"] == 2
    for i, seed in enumerate((5, 6)):
        single = np.asarray(engine.generate(request(seed=seed)), dtype=np.int16)
        assert np.abs(single - batch[i].astype(np.int16)).max() <= 1
