"""Continuous greedy decoding: rows join a running batch and leave it as soon as they end.

`MemoryConditionedDecoder.greedy` decodes one fixed batch until its longest row ends. `DecodeLoop`
instead keeps a running batch per lane (rows with a readout z, rows without; with or without the
shared prefix): `add` prefills new rows and merges them into their lane, `step` feeds every lane
one token and returns the rows that ended (eos or their own token budget), which leave the batch
and its KV cache at once. Rows may start with a shared token prefix (a chat template's system
turn): its keys and values are computed once per lane and kept, and each row prefills only the
rest. The cache of a lane is laid out [front entries][padding][row tokens], where the front is the
memory entries (modes "kv", "prefix") or the shared prefix, so merging pads after the front and
every row's tokens stay contiguous. The tokens are those of `greedy` on each row alone up to
float rounding (padding and batch size change the summation order, as in any batched decoding).

Symbols: B rows in a lane, L cache length, C readout width, M candidate ids, P prefix tokens.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache

from .conditioning import MemoryConditionedDecoder, _DecoderInputs, _positions
from .sequence import Recall, candidate_ids, previous_tokens


@dataclass(frozen=True)
class Row:
    """One prompt to decode: its token ids, readout z (C,) or None, the ids of the text z recalls
    (see `MemoryConditionedDecoder.forward`) and its token budget."""

    key: Hashable
    ids: tuple[int, ...]
    z: Tensor | None = None
    candidates: tuple[int, ...] | None = None
    max_new_tokens: int = 20


@dataclass
class _Lane:
    """The running batch of one lane."""

    front: int  # entries at the front of the cache (memory or shared prefix)
    cache: DynamicCache
    mask: Tensor  # (B, L)
    position: Tensor  # (B, 1) of the next token
    token: Tensor  # (B, 1) the token to feed next
    previous: Tensor  # (B, 1) the token before it (sequence channel)
    z: Tensor | None  # (B, C)
    seen: Tensor | None  # (B, 1) copy coverage so far (mode "output" with z)
    scale: Tensor | None  # (B,) copy_scale of each row's z
    pointer: Tensor | None  # (B, V) each row's copy term before its gate (`pointer`)
    pointed: Tensor | None = None  # (B, 1) the token each row's pointer ranks first
    direction: Tensor | None = None  # (B, H) and
    fusion: Tensor | None = None  # (B, F): each row's `readout_terms`
    coverage: tuple[Tensor, Tensor] | None = None  # new rows' (ids, mask) until their first call sets seen
    rows: list[Row] = field(default_factory=list)
    out: list[list[int]] = field(default_factory=list)
    candidates: Tensor | None = None  # (B, M), rebuilt when the rows change
    recall: Recall | None = None  # the rows' recovered triples, rebuilt with candidates


def supports(decoder: MemoryConditionedDecoder) -> bool:
    """Whether `DecodeLoop` can run this decoder (not with sliding-window attention layers)."""
    return "sliding_attention" not in set(getattr(decoder.text_config, "layer_types", None) or ())


class DecodeLoop:
    """Greedy decoding of rows that come and go; see the module docstring.

    Args:
        decoder: the conditioned decoder (in eval mode; its weights must not change meanwhile).
        eos_token_id: as in `MemoryConditionedDecoder.greedy` (None: the generation config's).
        reply_start: every row's continuation is a chat reply (see `greedy`).
        prefix: token ids most rows start with, computed once per lane (None: no sharing).
    """

    def __init__(self, decoder: MemoryConditionedDecoder, eos_token_id: int | list[int] | None = None,
                 reply_start: bool = False,
                 prefix: Sequence[int] | None = None) -> None:
        if not supports(decoder):
            raise ValueError("DecodeLoop does not support sliding-window attention; use greedy()")
        self.decoder = decoder
        self.device = next(decoder.parameters()).device
        self.eos, _ = decoder._stop_tokens(eos_token_id, None, self.device)
        self.reply_start = reply_start
        self.prefix = tuple(prefix or ())
        self._lanes: dict[tuple[bool, bool], _Lane] = {}
        self._prefix_kv: dict[bool, list[tuple[Tensor, Tensor]]] = {}

    @property
    def active(self) -> int:
        """Rows being decoded."""
        return sum(len(lane.rows) for lane in self._lanes.values())

    def _shares_prefix(self, row: Row) -> bool:
        """A row reuses the prefix when it extends it and the prefix's states do not depend on z."""
        dec = self.decoder
        free = row.z is None or (dec.config.mode == "output" and dec.offset_map is None)
        return bool(self.prefix) and free and len(row.ids) > len(self.prefix) and row.ids[: len(self.prefix)] == self.prefix

    @torch.no_grad()
    def add(self, rows: Sequence[Row]) -> list[tuple[Hashable, list[int]]]:
        """Prefill rows and merge them into their lanes; returns those that ended at once."""
        for row in rows:
            if not row.ids:
                raise ValueError("cannot generate from an empty prompt")
            if row.max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be at least 1; got {row.max_new_tokens}")
        groups: dict[tuple[bool, bool], list[Row]] = {}
        for row in rows:
            groups.setdefault((row.z is not None, self._shares_prefix(row)), []).append(row)
        ended = []
        for key, group in groups.items():
            lane, inputs = self._prefill(group, shared=key[1])
            ended += self._advance(lane, self._logits(lane, inputs))
            if lane.rows:
                self._lanes[key] = lane if key not in self._lanes else _merge(self._lanes[key], lane)
        return ended

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, list[int]]]:
        """Feed every lane its next token; returns (key, generated ids) of the rows that ended."""
        ended = []
        for key, lane in list(self._lanes.items()):
            ended += self._advance(lane, self._next_logits(lane))
            if not lane.rows:
                del self._lanes[key]
        return ended

    def run(self, rows: Sequence[Row], batch_size: int = 16) -> list[list[int]]:
        """Generated ids of every row, in order, at most `batch_size` decoding at once (a row
        joins as soon as another ends)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        keyed = [Row(i, r.ids, r.z, r.candidates, r.max_new_tokens) for i, r in enumerate(rows)]
        out: dict[Hashable, list[int]] = {}
        start = 0
        while start < len(keyed) or self.active:
            free = batch_size - self.active
            if free > 0 and start < len(keyed):
                out.update(self.add(keyed[start : start + free]))
                start += free
            else:
                out.update(self.step())
        return [out[i] for i in range(len(keyed))]

    def keys(self) -> set[Hashable]:
        """Keys of the rows being decoded."""
        return {row.key for lane in self._lanes.values() for row in lane.rows}

    def drop(self) -> list[Hashable]:
        """Forget every running row (after an error); returns their keys."""
        keys = [row.key for lane in self._lanes.values() for row in lane.rows]
        self._lanes.clear()
        return keys

    # ----------------------------------------------------------------------------- internals
    def _prefix_states(self, with_z: bool) -> list[tuple[Tensor, Tensor]]:
        """Keys and values (1, G, P, D) per layer of the shared prefix, computed once per lane kind."""
        if with_z not in self._prefix_kv:
            dec = self.decoder
            ids = torch.tensor([self.prefix], device=self.device)
            cache = DynamicCache(config=dec.text_config)
            body, _ = dec._body_and_head()
            with dec._adapters(ids if with_z else None):  # adapters follow whether z is given
                body(inputs_embeds=dec._embed(ids, None), attention_mask=torch.ones_like(ids),
                     position_ids=_positions(torch.ones_like(ids)), cache=cache, use_cache=True)
            self._prefix_kv[with_z] = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prefix_kv[with_z]

    def _prefill(self, rows: list[Row], shared: bool) -> tuple[_Lane, _DecoderInputs]:
        """New rows (left-padded) as a lane, and their first decoder call."""
        dec = self.decoder
        z = None
        if rows[0].z is not None:
            z = torch.stack([r.z.reshape(-1) for r in rows]).to(self.device)
            z = dec._check_z(z, z)
        start = len(self.prefix) if shared else 0
        width = max(len(r.ids) for r in rows) - start
        ids = torch.full((len(rows), width), 0, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r.ids) + start :] = torch.tensor(r.ids[start:], device=self.device)
            mask[i, width - len(r.ids) + start :] = 1
        if shared:
            front = torch.tensor([self.prefix] * len(rows), device=self.device)
            full_ids, full_mask = torch.cat([front, ids], 1), torch.cat([torch.ones_like(front), mask], 1)
            cache = DynamicCache()
            for layer, (k, v) in enumerate(self._prefix_states(z is not None)):
                cache.update(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1), layer)
            inputs = _DecoderInputs(dec._embed(ids, z), full_mask, _positions(full_mask)[:, start:], cache, memory=0,
                                    tokens=ids, previous=previous_tokens(full_ids, full_mask)[:, start:])
        else:
            inputs = dec._prepare(ids, mask, z)
            full_ids, full_mask = ids, mask
        if inputs.tokens is not None:
            z, previous, tokens = dec.sequence_start(z, inputs.previous, inputs.tokens, mask, self.reply_start)
            inputs = inputs._replace(tokens=tokens, previous=previous)
        lane = _Lane(front=start or inputs.memory, cache=inputs.cache, mask=inputs.mask,
                     position=inputs.positions[:, -1:], z=z, seen=None, scale=None, pointer=None,
                     token=(inputs.tokens if inputs.tokens is not None else ids)[:, -1:],  # as the sketch reads it
                     previous=(inputs.previous if inputs.previous is not None else ids)[:, -1:],
                     rows=list(rows), out=[[] for _ in rows])
        if z is not None and dec.config.mode == "output":
            lane.coverage = (full_ids, full_mask)  # the pointer, and the coverage scaled by it, come with the logits
        return lane, inputs

    def _next_logits(self, lane: _Lane) -> Tensor:
        """Feed each row's last token (B, 1) and return the logits (B, V) after it."""
        dec = self.decoder
        lane.mask = torch.cat([lane.mask, lane.mask.new_ones(lane.mask.shape[0], 1)], 1)
        lane.position = lane.position + 1
        embeds = dec._embed(lane.token, lane.z)
        if lane.seen is not None:
            lane.seen = dec.copy_coverage(embeds, lane.z, lane.seen, scale=lane.scale, direction=lane.direction)[:, -1]
        inputs = _DecoderInputs(embeds, lane.mask, lane.position, lane.cache, memory=0, tokens=lane.token,
                                previous=lane.previous)
        return self._logits(lane, inputs)

    def _logits(self, lane: _Lane, inputs: _DecoderInputs) -> Tensor:
        """Logits (B, V) at the last position of one decoder call on the lane's rows."""
        dec, z = self.decoder, lane.z
        with dec._adapters(z):
            if z is not None and dec.config.mode == "output":
                body, _ = dec._body_and_head()
                hidden = body(inputs_embeds=inputs.embeds, attention_mask=inputs.mask, position_ids=inputs.positions,
                              cache=inputs.cache, use_cache=True).last_hidden_state[:, -1:]  # (B, 1, H)
                if lane.candidates is None and lane.rows[0].candidates is not None:
                    lane.candidates = candidate_ids([r.candidates for r in lane.rows], self.device)
                    lane.recall = dec.recall(torch.stack([r.z for r in lane.rows]), lane.candidates)
                if lane.direction is None:
                    lane.direction, lane.fusion = dec.readout_terms(z, hidden.dtype)
                fused = dec.fuse(hidden, z, lane.pointer, (lane.direction, lane.fusion))  # the pointer on the first call
                if lane.coverage is not None:
                    ids, mask = lane.coverage
                    lane.pointer, lane.coverage = fused[2], None
                    lane.pointed = lane.pointer.argmax(-1, keepdim=True)
                    dtype = inputs.embeds.dtype
                    lane.scale = (dec.copy_scale(z, dtype, lane.pointer, lane.direction)
                                  if dec.config.copy_seen_relative else None)
                    lane.seen = dec.copy_coverage(dec._embed(ids, z), z, mask=mask, scale=lane.scale,
                                                  direction=lane.direction)[:, -1]  # (B, 1)
                return dec.fused_logits(hidden, z, lane.seen[:, None], inputs.tokens[:, -1:], inputs.previous[:, -1:],
                                        lane.candidates, recall=lane.recall, fused=fused, pointed=lane.pointed)[:, -1]
            return dec.decoder(inputs_embeds=inputs.embeds, attention_mask=inputs.mask, position_ids=inputs.positions,
                               cache=inputs.cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _advance(self, lane: _Lane, logits: Tensor) -> list[tuple[Hashable, list[int]]]:
        """Pick each row's next token from logits (B, V); rows that ended leave the lane. Returns them."""
        token = logits.argmax(-1)  # (B,)
        if lane.z is not None:
            lane.z = self.decoder.said(lane.z, lane.previous[:, 0], lane.token[:, 0], token)
        lane.previous, lane.token = lane.token, token[:, None]
        ended = [False] * len(token) if self.eos is None else torch.isin(token, self.eos).tolist()
        keep, out = [], []
        for i, (row, tokens, stop) in enumerate(zip(lane.rows, lane.out, ended)):
            tokens.append(int(token[i]))
            if stop or len(tokens) >= row.max_new_tokens:
                out.append((row.key, tokens))
            else:
                keep.append(i)
        if len(keep) < len(lane.rows):
            _select(lane, keep)
        return out


def _select(lane: _Lane, keep: list[int]) -> None:
    """Keep only rows `keep` of a lane, and drop cache columns no remaining row attends to."""
    index = torch.tensor(keep, dtype=torch.long, device=lane.mask.device)
    lane.rows = [lane.rows[i] for i in keep]
    lane.out = [lane.out[i] for i in keep]
    lane.candidates = lane.recall = None
    if not keep:
        return
    lane.mask, lane.position = lane.mask[index], lane.position[index]
    lane.token, lane.previous = lane.token[index], lane.previous[index]
    for name in ("z", "seen", "scale", "pointer", "pointed", "direction", "fusion"):
        value = getattr(lane, name)
        setattr(lane, name, None if value is None else value[index])
    used = lane.mask.any(0)
    used[: lane.front] = True
    columns = used.nonzero().squeeze(-1) if not bool(used.all()) else None
    if columns is not None:
        lane.mask = lane.mask[:, columns]
    for layer in lane.cache.layers:
        layer.keys, layer.values = layer.keys[index], layer.values[index]
        if columns is not None:
            layer.keys, layer.values = layer.keys[:, :, columns], layer.values[:, :, columns]


def _merge(a: _Lane, b: _Lane) -> _Lane:
    """One lane of the rows of a and b: the shorter cache is padded after the front entries."""
    length = max(a.mask.shape[1], b.mask.shape[1])
    cache = DynamicCache()
    masks = [_pad(x.mask, x.front, length) for x in (a, b)]
    for layer, (la, lb) in enumerate(zip(a.cache.layers, b.cache.layers)):
        cache.update(torch.cat([_pad(la.keys, a.front, length, dim=2), _pad(lb.keys, b.front, length, dim=2)]),
                     torch.cat([_pad(la.values, a.front, length, dim=2), _pad(lb.values, b.front, length, dim=2)]), layer)

    def cat(x: Tensor | None, y: Tensor | None) -> Tensor | None:
        return None if x is None else torch.cat([x, y])

    return _Lane(front=a.front, cache=cache, mask=torch.cat(masks), position=torch.cat([a.position, b.position]),
                 token=torch.cat([a.token, b.token]), previous=torch.cat([a.previous, b.previous]), z=cat(a.z, b.z),
                 seen=cat(a.seen, b.seen), scale=cat(a.scale, b.scale), pointer=cat(a.pointer, b.pointer),
                 pointed=cat(a.pointed, b.pointed), direction=cat(a.direction, b.direction),
                 fusion=cat(a.fusion, b.fusion), rows=a.rows + b.rows, out=a.out + b.out)


def _pad(x: Tensor, front: int, length: int, dim: int = 1) -> Tensor:
    """x with zeros inserted after its first `front` entries along `dim`, to `length` entries."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    head, tail = x.narrow(dim, 0, front), x.narrow(dim, front, x.shape[dim] - front)
    return torch.cat([head, x.new_zeros(shape), tail], dim)
