"""Condition any Hugging Face causal LM on a memory readout z (spec section 2.1).

Symbols: B batch, T tokens, C code size, L decoder layers, S memory slots per layer,
G key/value heads, D head dim, H hidden size, P prefix length, V vocabulary,
M memory entries at the front of the attention span (S in mode "kv", P in mode "prefix").

Mode "kv" (the paper): z -> S extra key/value pairs per layer, written into the KV cache
before the real tokens, so they are never rotated and every token can attend to them; the
real tokens keep positions 0..T-1. Mode "prefix": z -> P soft embeddings prepended to the
input. Both can add a linear map of z to every token embedding ("embedding offset").
Mode "output" (late fusion): the base decoder runs untouched and z enters only after its
final hidden state h: a zero-initialised residual MLP on [h; z] before the output head, plus a
gated copy term that scores tokens by the cosine between their output embeddings and U z
(see `fused_logits`). The decoder's own states then never depend on z, so a frozen decoder's states can be
computed once and cached for training, which is what makes training feasible on a CPU.
Without z the module calls the untouched base decoder, so its output is bit-for-bit the
base model's.
"""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.pytorch_utils import Conv1D

from .conditioning_config import ConditioningConfig, ConditioningMode, TrainablePart
from .late_fusion import LateFusion
from .sequence import Recall, SuccessorScorer, previous_tokens

__all__ = ["ConditioningConfig", "ConditioningMode", "DecoderShape", "GreedyOutput", "MemoryConditionedDecoder",
           "TrainablePart", "causal_lm_loss"]

_LORA_TARGET_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("attn.c_attn", "attn.c_proj"),
)
_MASK_BUILDERS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder that the conditioning maps must match."""

    layers: int
    """Decoder layers L."""
    kv_heads: int
    """Key/value heads G (fewer than query heads under grouped-query attention)."""
    head_dim: int
    """Width D of one attention head."""
    hidden: int
    """Hidden size H (token embedding width)."""

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "DecoderShape":
        """Read the sizes from a (text) decoder config, filling the usual defaults."""
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            hidden=config.hidden_size,
        )


@dataclass
class GreedyOutput:
    """Greedy decoding result."""

    sequences: Tensor
    """(B, T + N) prompt followed by N generated tokens; rows past their eos are padded."""
    logits: Tensor
    """(B, N, V) the logits each generated token was chosen from."""


class _DecoderInputs(NamedTuple):
    """One conditioned decoder call: what goes in besides the weights."""

    embeds: Tensor  # (B, T', H) new input embeddings
    mask: Tensor  # (B, past + T') 2D attention mask over the cache and the new positions
    positions: Tensor  # (B, T') position ids of the new positions
    cache: DynamicCache
    memory: int  # M entries at the front that every position may attend to
    seen: Tensor | None = None  # (B, 1) mode "output": copy coverage of the earlier positions
    tokens: Tensor | None = None  # (B, T') mode "output": the token ids of the new positions
    previous: Tensor | None = None  # (B, T') mode "output": the token before each of them


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy. logits (B, T, V); labels (B, T), -100 is ignored."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def _positions(mask: Tensor) -> Tensor:
    """Position ids (B, T) that skip padding, as transformers' generate makes them."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 0)


def _infer_lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The first candidate set of attention projection names that the model contains."""
    names = [name for name, _ in model.named_modules()]
    for candidate in _LORA_TARGET_CANDIDATES:
        if any(name.endswith("." + candidate[0]) for name in names):
            return candidate
    raise ValueError(
        f"could not find attention projections {_LORA_TARGET_CANDIDATES} in "
        f"{type(model).__name__}; set ConditioningConfig.lora_targets"
    )


def _with_lora(decoder: PreTrainedModel, config: ConditioningConfig) -> PeftModel:
    """Wrap the decoder in peft LoRA adapters (injected in place into `decoder`)."""
    targets = config.lora_targets or _infer_lora_targets(decoder)
    targeted = [m for n, m in decoder.named_modules() if any(n.endswith("." + t) for t in targets)]
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in targeted),
    )
    return get_peft_model(decoder, lora)


class MemoryConditionedDecoder(LateFusion, nn.Module):
    """A causal LM whose output depends on a memory readout z (B, C), or is the base's without z.

    Args:
        decoder: any transformers causal LM; with lora_rank > 0 it gets LoRA layers in place.
        config: how z enters the decoder.

    Example:
        >>> model = MemoryConditionedDecoder(decoder, ConditioningConfig(code_size=384))
        >>> out = model(input_ids, attention_mask, z=z, labels=input_ids)  # z (B, 384)
        >>> out.logits.shape  # (B, T, V)
        >>> model.generate(input_ids, attention_mask, z=z, max_new_tokens=8)  # (B, T + 8)
    """

    def __init__(self, decoder: PreTrainedModel, config: ConditioningConfig) -> None:
        super().__init__()
        self.config = config
        self.text_config = decoder.config.get_text_config(decoder=True)
        self.shape = DecoderShape.from_config(self.text_config)
        self._check_layer_types()
        factory = {"device": decoder.device, "dtype": decoder.dtype}
        self.memory_map = nn.Linear(config.code_size, self._memory_width(), bias=False, **factory)
        nn.init.normal_(self.memory_map.weight, std=config.init_std / config.code_size**0.5)
        self.fusion_in = self.fusion_out = self.copy_gate = None
        if config.mode == "output":
            hidden = self.shape.hidden
            nn.init.zeros_(self.memory_map.weight)  # U z starts at 0: the base model's logits
            self.fusion_in = nn.Linear(hidden + config.code_size, config.fusion_hidden, **factory)
            self.fusion_out = nn.Linear(config.fusion_hidden, hidden, **factory)
            nn.init.zeros_(self.fusion_out.weight)
            nn.init.zeros_(self.fusion_out.bias)
            self.copy_gate = nn.Linear(config.fusion_hidden, 1, **factory)
            nn.init.zeros_(self.copy_gate.weight)  # gate 2 * sigmoid(0) = 1 everywhere at first
            nn.init.zeros_(self.copy_gate.bias)
            # once the text holds what the copy term points at, stop copying it
            self.copy_seen = nn.Parameter(torch.tensor(-100.0, **factory))
        self.offset_map = None
        if config.embedding_offset:
            self.offset_map = nn.Linear(config.code_size, self.shape.hidden, bias=False, **factory)
            nn.init.zeros_(self.offset_map.weight)
        self.decoder = _with_lora(decoder, config) if config.lora_rank else decoder
        self.successors = None
        if config.sequence_size:
            vocab = self.decoder.get_output_embeddings().weight.shape[0]
            self.successors = SuccessorScorer(vocab, config.sequence_size)
        self.set_trainable(config.trainable)

    @property
    def z_size(self) -> int:
        """Width of the readouts z this module takes: C, plus D with a sequence channel."""
        return self.config.code_size + self.config.sequence_size

    def _code(self, z: Tensor) -> Tensor:
        """The C coordinates of z that the learned maps read (the sequence channel dropped)."""
        return z[..., : self.config.code_size] if self.config.sequence_size else z

    def _memory_width(self) -> int:
        """Output width of the kv map (L * kinds * S * G * D) or the prefix map (P * H)."""
        if self.config.mode == "prefix":
            return self.config.prefix_length * self.shape.hidden
        if self.config.mode == "output":
            return self.shape.hidden
        kinds = 1 if self.config.share_key_value else 2
        s = self.shape
        return s.layers * kinds * self.config.slots * s.kv_heads * s.head_dim

    def _check_layer_types(self) -> None:
        """Refuse layer types whose attention mask this module cannot extend to the memory."""
        unknown = set(getattr(self.text_config, "layer_types", None) or ()) - set(_MASK_BUILDERS)
        if unknown:
            raise ValueError(
                f"memory conditioning supports layer types {sorted(_MASK_BUILDERS)}; "
                f"the decoder has {sorted(unknown)}"
            )

    def set_trainable(self, part: TrainablePart) -> None:
        """Choose what trains: "adapter" (the maps), "lora" (+ LoRA), "full" (+ decoder)."""
        if part == "lora" and not self.config.lora_rank:
            raise ValueError('trainable part "lora" needs ConditioningConfig.lora_rank > 0')
        for name, param in self.decoder.named_parameters():
            param.requires_grad_(part == "full" or (part == "lora" and "lora_" in name))
        for module in (self.memory_map, self.offset_map, self.fusion_in, self.fusion_out, self.copy_gate):
            if module is not None:
                module.requires_grad_(True)
        if self.config.mode == "output":
            self.copy_seen.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that currently require gradients (tied weights listed once)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        z: Tensor | None = None,
        labels: Tensor | None = None,
        candidates: Tensor | None = None,
        logits_from: int = 0,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) for input_ids (B, T), conditioned on z (B, C) if given.

        With z=None this is exactly the base decoder called with input_ids and attention_mask.
        labels (B, T) give `loss`, the mean next-token cross-entropy over labels != -100.
        candidates (B, M): the token ids of the text each readout recalls, which limits the
        sequence channel's scores to them (`SuccessorScorer.scores`).
        logits_from: logits only at positions >= it, (B, T - logits_from, V) (scoring a
        continuation needs no more; the vocabulary-sized products are most of a short forward).
        """
        if not 0 <= logits_from < input_ids.shape[1]:
            raise ValueError(f"logits_from must be in [0, {input_ids.shape[1]}); got {logits_from}")
        if labels is not None and logits_from:
            raise ValueError("labels need the logits of every position; leave logits_from at 0")
        keep = input_ids.shape[1] - logits_from
        if z is None:
            with self._adapters(None):
                logits = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                                      logits_to_keep=keep).logits
        else:
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            z = self._check_z(z, input_ids)
            inputs = self._prepare(input_ids, mask, z)
            with self._adapters(z):
                logits = self._logits(inputs, z, keep=keep, candidates=candidates)  # (B, keep, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        z: Tensor | None = None,
        max_new_tokens: int = 20,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        reply_start: bool = False,
        candidates: Tensor | None = None,
    ) -> Tensor:
        """Greedy continuation (B, T + N), N <= max_new_tokens; see `greedy`."""
        out = self.greedy(input_ids, attention_mask, z, max_new_tokens, eos_token_id, pad_token_id, reply_start,
                          candidates)
        return out.sequences

    @torch.no_grad()
    def greedy(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        z: Tensor | None = None,
        max_new_tokens: int = 20,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        reply_start: bool = False,
        candidates: Tensor | None = None,
    ) -> GreedyOutput:
        """Greedy decoding of input_ids (B, T) with the KV cache, conditioned on z (B, C) if given.

        Like transformers' greedy `generate`: eos and pad ids default to the decoder's
        generation config (pad falls back to the first eos), decoding stops once every row
        has produced an eos, and finished rows are padded. With z=None it picks the tokens of
        the base model's `generate(do_sample=False)` (without its logits processors).

        `reply_start` (a sequence channel and z): the continuation is a new text (a chat
        reply), so the sequence channel's context restarts at (START, START) after the prompt
        and the memory can recall a written text from its first token; otherwise the prompt's
        triples leave the sketch (`sequence_start`). `candidates`: see `forward`.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if z is not None:
            z = self._check_z(z, input_ids)
        eos, pad = self._stop_tokens(eos_token_id, pad_token_id, input_ids.device)
        inputs = self._prepare(input_ids, mask, z)
        recall = self.recall(z, candidates)  # of the readout before the prompt's triples leave it
        if inputs.tokens is not None:
            z, previous, tokens = self.sequence_start(z, inputs.previous, inputs.tokens, mask, reply_start)
            inputs = inputs._replace(tokens=tokens, previous=previous)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tokens, step_logits = [], []
        with self._adapters(z):
            for _ in range(max_new_tokens):
                logits = self._logits(inputs, z, keep=1, candidates=candidates, recall=recall)[:, -1]  # (B, V)
                token = logits.argmax(-1)  # (B,)
                if eos is not None:
                    token = token.masked_fill(done, pad)
                    done |= torch.isin(token, eos)
                tokens.append(token)
                step_logits.append(logits)
                if done.all():
                    break
                if z is not None and inputs.tokens is not None and inputs.previous is not None:
                    z = self.said(z, inputs.previous[:, -1], inputs.tokens[:, -1], token)
                inputs = self._next_inputs(inputs, token, z)
        sequences = torch.cat([input_ids, torch.stack(tokens, 1)], 1)  # (B, T + N)
        return GreedyOutput(sequences=sequences, logits=torch.stack(step_logits, 1))

    def _stop_tokens(
        self, eos_token_id: int | list[int] | None, pad_token_id: int | None, device: torch.device
    ) -> tuple[Tensor | None, int | None]:
        """Eos ids (E,) or None, and the pad id, defaulting to the decoder's generation config."""
        defaults = self.decoder.generation_config
        eos = defaults.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            return None, None
        eos = torch.tensor(eos, device=device).flatten()  # (E,)
        pad = defaults.pad_token_id if pad_token_id is None else pad_token_id
        return eos, int(eos[0]) if pad is None else pad

    def _check_z(self, z: Tensor, input_ids: Tensor) -> Tensor:
        """Validate z (B, C) against the code size and the batch; cast it to the maps' dtype."""
        size = self.z_size
        if z.ndim != 2 or z.shape[1] != size:
            raise ValueError(
                f"z must have shape (batch, {size}) for code size {size}; got {tuple(z.shape)}"
            )
        if z.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"z has batch size {z.shape[0]} but input_ids has batch size {input_ids.shape[0]}"
            )
        return z.to(self.memory_map.weight.dtype)

    def _adapters(self, z: Tensor | None) -> AbstractContextManager:
        """LoRA adapters are on only on the memory path."""
        if z is None and isinstance(self.decoder, PeftModel):
            return self.decoder.disable_adapter()
        return nullcontext()

    def _embed(self, input_ids: Tensor, z: Tensor | None) -> Tensor:
        """Token embeddings (B, T, H), shifted by the embedding offset of z (B, C) if any."""
        embeds = self.decoder.get_input_embeddings()(input_ids)
        if z is None or self.offset_map is None:
            return embeds
        return embeds + self.offset_map(self._code(z))[:, None, :]  # (B, 1, H) broadcast over T

    def _prepare(self, input_ids: Tensor, mask: Tensor, z: Tensor | None) -> _DecoderInputs:
        """The first decoder call for input_ids (B, T) and mask (B, T), with the memory of z."""
        embeds = self._embed(input_ids, z)
        if z is None or self.config.mode == "output":
            cache = DynamicCache(config=self.text_config)
            return _DecoderInputs(embeds, mask, _positions(mask), cache, memory=0, tokens=input_ids,
                                  previous=previous_tokens(input_ids, mask))
        if self.config.mode == "kv":
            return self._prepare_kv(embeds, mask, z)
        return self._prepare_prefix(embeds, mask, z)

    def _prepare_kv(self, embeds: Tensor, mask: Tensor, z: Tensor) -> _DecoderInputs:
        """Memory slots in the cache, visible to all tokens; tokens keep positions 0..T-1."""
        slots = self.config.slots
        positions = _positions(mask)  # (B, T)
        mask = torch.cat([mask.new_ones(mask.shape[0], slots), mask], 1)  # (B, S + T)
        return _DecoderInputs(embeds, mask, positions, self._memory_cache(z), memory=slots)

    def _prepare_prefix(self, embeds: Tensor, mask: Tensor, z: Tensor) -> _DecoderInputs:
        """P soft embeddings before the tokens, at positions 0..P-1; tokens follow."""
        length = self.config.prefix_length
        prefix = self.memory_map(z).view(-1, length, self.shape.hidden)  # (B, P, H)
        embeds = torch.cat([prefix, embeds], 1)  # (B, P + T, H)
        mask = torch.cat([mask.new_ones(mask.shape[0], length), mask], 1)  # (B, P + T)
        return _DecoderInputs(embeds, mask, _positions(mask), DynamicCache(), memory=length)

    def _memory_cache(self, z: Tensor) -> DynamicCache:
        """A cache holding the memory slots of z (B, C): keys and values (B, G, S, D) per layer."""
        s = self.shape
        kinds = 1 if self.config.share_key_value else 2
        kv = self.memory_map(z).view(-1, s.layers, kinds, self.config.slots, s.kv_heads, s.head_dim)
        kv = kv.permute(1, 2, 0, 4, 3, 5)  # (L, kinds, B, G, S, D)
        cache = DynamicCache()
        for layer, pair in enumerate(kv):
            cache.update(pair[0], pair[-1], layer)
        return cache

    def _next_inputs(
        self, inputs: _DecoderInputs, token: Tensor, z: Tensor | None
    ) -> _DecoderInputs:
        """The decoder call that feeds the chosen token (B,) after `inputs`."""
        ones = inputs.mask.new_ones(inputs.mask.shape[0], 1)
        seen = None
        if z is not None and self.config.mode == "output":
            seen = self.copy_coverage(inputs.embeds, z, inputs.seen)[:, -1]  # (B, 1)
        return inputs._replace(
            seen=seen,
            tokens=token[:, None],
            previous=inputs.tokens[:, -1:] if inputs.tokens is not None else None,
            embeds=self._embed(token[:, None], z),  # (B, 1, H)
            mask=torch.cat([inputs.mask, ones], 1),
            positions=inputs.positions[:, -1:] + 1,  # (B, 1)
        )

    def _logits(self, inputs: _DecoderInputs, z: Tensor | None = None, keep: int = 0,
                candidates: Tensor | None = None, recall: Recall | None = None) -> Tensor:
        """Decoder logits (B, keep, V) at the last `keep` positions of one call (0: all T'
        positions of the call; generation needs only the last); the cache grows by T'."""
        if z is not None and self.config.mode == "output":
            body, _ = self._body_and_head()
            hidden = body(
                inputs_embeds=inputs.embeds,
                attention_mask=inputs.mask,
                position_ids=inputs.positions,
                cache=inputs.cache,
                use_cache=True,
            ).last_hidden_state[:, -keep if keep else 0 :]  # (B, keep or T', H)
            fused = self.fuse(hidden, z)  # its pointer (B, V) serves the coverage scale and every position
            scale = self.copy_scale(z, inputs.embeds.dtype, fused[2]) if self.config.copy_seen_relative else None
            seen = self.copy_coverage(inputs.embeds, z, inputs.seen, scale=scale)
            tokens, previous = inputs.tokens, inputs.previous
            if keep:
                seen = seen[:, -keep:]
                tokens = None if tokens is None else tokens[:, -keep:]
                previous = None if previous is None else previous[:, -keep:]
            return self.fused_logits(hidden, z, seen, tokens, previous, candidates, recall=recall, fused=fused)
        return self.decoder(
            inputs_embeds=inputs.embeds,
            attention_mask=self._attention_mask(inputs),
            position_ids=inputs.positions,
            cache=inputs.cache,
            use_cache=True,
            logits_to_keep=keep,
        ).logits

    def _attention_mask(self, inputs: _DecoderInputs) -> Tensor | dict[str, Tensor | None]:
        """The 2D mask, or for sliding-window layers per-type masks that keep the memory visible.

        Full attention already lets every position see the M memory entries at the front; a
        sliding window would hide them from positions more than a window away.
        """
        layer_types = set(getattr(self.text_config, "layer_types", None) or ())
        if inputs.memory == 0 or "sliding_attention" not in layer_types:
            return inputs.mask
        memory = inputs.memory

        def memory_visible(batch: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
            return key < memory

        return {
            kind: _MASK_BUILDERS[kind](
                config=self.text_config,
                inputs_embeds=inputs.embeds,
                attention_mask=inputs.mask,
                cache=inputs.cache,
                position_ids=inputs.positions,
                or_mask_function=memory_visible,
            )
            for kind in layer_types
        }

    def _body_and_head(self) -> tuple[nn.Module, nn.Module]:
        """The base decoder's transformer body (final norm included) and its output head."""
        base = self.decoder.get_base_model() if isinstance(self.decoder, PeftModel) else self.decoder
        return getattr(base, base.base_model_prefix), base.get_output_embeddings()

    def final_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The base decoder's final hidden states (B, T, H), the input of its output head.

        In mode "output" these do not depend on z, so a frozen decoder's can be cached.
        """
        body, _ = self._body_and_head()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        with self._adapters(None):
            return body(input_ids=input_ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state
