"""The built-in model comes out of one config: exporting configs/train/cpu-fusion.yaml gives the
shipped larimar_config.json (the weights, and the scope detector's fitted values, come from
`larimar train` on the same config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from larimar.editing.larimar import BUILTIN_DIR
from larimar.model.larimar import CONFIG_FILE
from larimar.train.config import ExportConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_exporting_the_builtin_config_gives_the_shipped_config() -> None:
    config = TrainConfig.from_yaml(ROOT / "configs/train/cpu-fusion.yaml")
    shipped = json.loads((BUILTIN_DIR / CONFIG_FILE).read_text())
    fitted = shipped["scope"]  # what the run's scope stage wrote; its shape follows the config
    assert fitted["candidates"] == config.scope.candidates
    assert len(fitted["b1"]) == len(fitted["w2"]) == len(fitted["w1"]) == config.scope.hidden
    exported = json.loads(json.dumps(config.export.model_config(config.model, fitted).to_dict()))
    shipped.pop("base"), exported.pop("base")  # provenance of the base models, filled in on save
    assert exported == shipped


def test_export_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="export.settings may set"):
        ExportConfig(settings={"memory": {}})
    with pytest.raises(ValueError, match="sequence_size"):
        ExportConfig(sequence_size=-1)
    config = TrainConfig.from_yaml(ROOT / "configs/train/cpu-fusion.yaml")
    with pytest.raises(ValueError, match="unknown keys"):
        ExportConfig(settings={"conditioning": {"nope": 1}}).model_config(config.model)
