"""Which base models a saved Larimar model was trained on, and a check that they are the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .assets import (
    DECODER_GGUF_SHA256,
    DECODER_PACKAGE,
    DEFAULT_NAME,
    ENCODER_PACKAGE,
    encoder_path,
    file_sha256,
)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no weights file ({' or '.join(WEIGHT_FILES)}) in {folder}")


def describe_base(name: str, role: str) -> dict[str, Any]:
    """Package, version and sha256 of the weights behind `name` ("default" or a local folder)."""
    if name == DEFAULT_NAME and role == "decoder":
        pkg = DECODER_PACKAGE
        return {"package": pkg.distribution, "version": pkg.version, "sha256": DECODER_GGUF_SHA256}
    if name == DEFAULT_NAME:
        pkg = ENCODER_PACKAGE
        sha = file_sha256(_weights_file(encoder_path()))
        return {"package": pkg.distribution, "version": pkg.version, "sha256": sha}
    return {"path": str(name), "sha256": file_sha256(_weights_file(Path(name)))}


def verify_base(name: str, role: str, recorded: dict[str, Any] | None) -> None:
    """Raise if the base model now behind `name` differs from the one recorded at save time."""
    if not recorded:
        return
    current = describe_base(name, role)
    if current["sha256"] != recorded.get("sha256"):
        source = recorded.get("package") or recorded.get("path")
        raise ValueError(
            f"the {role} {name!r} is not the one this model was trained with: sha256 "
            f"{current['sha256'][:12]}... != recorded {str(recorded.get('sha256'))[:12]}... "
            f"(expected {source} {recorded.get('version', '')}); install that exact version"
        )
