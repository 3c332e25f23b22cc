"""The base-model reference artifacts carry: saved and read back alike, resolved from a real
tiny model folder, and refused when a model.* setting names another model."""
import json

import pytest

from t2iops.config import ModelConfig, load_config
from t2iops.errors import ModelError
from t2iops.models.locate import is_offline
from t2iops.models.reference import BaseModelRef, check_agrees, reference_from_record, resolve_reference
from t2iops.models.resolve import load_base_model


def test_a_reference_round_trips_through_json_and_old_records_read_as_fp32():
    ref = BaseModelRef(path="org/base", revision="main", commit="c0ffee", variant="fp16",
                       vae="madebyollin/sdxl-vae-fp16-fix", dtype="bf16", config_hash="abcd")
    assert BaseModelRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    legacy = {"path": "org/base", "revision": None, "commit": None, "variant": None, "vae": None, "config_hash": "x"}
    assert BaseModelRef.from_dict(legacy).dtype == "fp32"
    with pytest.raises(ModelError, match=r"cache.json: base_model has unknown keys \['weights'\]"):
        BaseModelRef.from_dict({"path": "org/base", "weights": 1}, "cache.json")
    with pytest.raises(ModelError, match="must be an object with a 'path'"):
        BaseModelRef.from_dict({"revision": "main"}, "summary.json")


def test_resolving_a_folder_hashes_its_configs_and_loads_through_the_one_loader(tiny_sd15_path):
    cfg = load_config(None, [f"model.base_model={tiny_sd15_path}"])
    ref, folder = resolve_reference(cfg.model)
    assert str(folder) == tiny_sd15_path and ref.commit is None and len(ref.config_hash) == 16
    assert resolve_reference(cfg.model)[0] == ref  # the same folder resolves to the same reference
    base = load_base_model(ref, components=())
    assert base.ref == ref and base.family == "sd15"


def test_a_setting_that_disagrees_with_the_artifact_names_both_values(tiny_sd15_path, tiny_sdxl_path):
    ref = BaseModelRef(path=tiny_sd15_path, dtype="fp32")
    other = load_config(None, [f"model.base_model={tiny_sdxl_path}", "model.vae=org/vae"]).model
    with pytest.raises(ModelError) as err:
        check_agrees(ref, other, "cache /c (cache.json)")
    message = str(err.value)
    assert f"model.base_model='{tiny_sdxl_path}'" in message and f"path '{tiny_sd15_path}'" in message
    assert "model.vae='org/vae'" in message and "vae None" in message and "cache /c (cache.json)" in message
    # Unset settings take the artifact's values; the same folder named another way agrees.
    check_agrees(ref, ModelConfig(), "cache")
    check_agrees(ref, load_config(None, [f"model.base_model={tiny_sd15_path}/"]).model, "cache")
    fp16 = load_config(None, [f"model.base_model={tiny_sd15_path}", "model.dtype=fp16"]).model
    with pytest.raises(ModelError, match="model.dtype='fp16' but .* dtype 'fp32'"):
        reference_from_record(ref.to_dict(), fp16, "training run /r (summary.json)")
    # An artifact that records nothing (a bare adapter folder): the settings name the model.
    assert reference_from_record(None, fp16, "adapter").dtype == "fp16"


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("ON", True), ("0", False),
                                            ("false", False), ("", False)])
def test_offline_is_read_one_way(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert is_offline() is offline
    assert is_offline(local_files_only=True) is True
