"""Mode "output" (late fusion) of `MemoryConditionedDecoder`: the memory enters after the base
decoder's final hidden state, so the decoder's own states never depend on it.

Symbols: B batch, T tokens, C code size, H hidden size, V vocabulary.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from .sequence import START, Recall, consume, take_out, triple_directions


class LateFusion:
    """The late-fusion methods of `MemoryConditionedDecoder` (a mixin: it reads the decoder's
    fusion_in, fusion_out, copy_gate, copy_seen, memory_map, successors and config)."""

    def _unit_embeddings(self, dtype: torch.dtype) -> Tensor:
        """The decoder's input embeddings scaled to unit rows (V, H), cached while they do not
        change (normalising the whole table at every step cost a third of a generation)."""
        weight = self.decoder.get_input_embeddings().weight
        return self._cached("_unit_table", weight, dtype, lambda w: F.normalize(w, dim=-1))

    def _head_norms(self, weight: Tensor) -> Tensor:
        """Row norms (V,) of the output head's weight, cached like `_unit_embeddings`."""
        return self._cached("_head_norm", weight, weight.dtype, lambda w: w.norm(dim=-1))

    def _cached(self, name: str, weight: Tensor, dtype: torch.dtype, make) -> Tensor:
        """make(weight in dtype), recomputed only when the weight changes (always while training it)."""
        if torch.is_grad_enabled() and weight.requires_grad:
            return make(weight.to(dtype))
        key = (weight.data_ptr(), weight._version, weight.device, dtype)
        cached = getattr(self, name, None)
        if cached is None or cached[0] != key:
            cached = (key, make(weight.detach().to(dtype)))
            setattr(self, name, cached)
        return cached[1]

    def _fusion_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The fusion MLP's first weight split into its hidden-state columns (F, H) and its code
        columns (F, C), cached like `_unit_embeddings`: decoding applies the code half once per row."""
        hidden = self.fusion_in.in_features - self.config.code_size
        return self._cached("_fusion_split", self.fusion_in.weight, dtype,
                            lambda w: (w[:, :hidden].contiguous(), w[:, hidden:].contiguous()))

    def readout_terms(self, z: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """What late fusion reads of readouts z (B, C) through their code part, which decoding
        never changes (`said` changes only the sketch), so a decoding row computes it once:
        U z (B, H) and the fusion MLP's first layer on the code, its bias included (B, F)."""
        code = self._code(z.to(dtype))
        _, code_weight = self._fusion_weights(dtype)
        return self.memory_map(code), F.linear(code, code_weight, self.fusion_in.bias)

    def copy_coverage(self, embeds: Tensor, z: Tensor, past: Tensor | None = None, mask: Tensor | None = None,
                      scale: Tensor | None = None, direction: Tensor | None = None) -> Tensor:
        """How much of what the copy term points at the text already holds, at each position.

        embeds (B, T, H) are the input embeddings of consecutive positions, z (B, C); past
        (B, 1) is the value at the position before them; mask (B, T), if given, leaves padding
        out; scale (B,) is `copy_scale(z)` and direction (B, H) is U z, when known. Returns
        (B, T, 1): the running maximum over positions of the cosine between an input token's
        embedding and U z.
        """
        if direction is None:
            direction = self.memory_map(self._code(z).to(embeds.dtype))
        cos = F.cosine_similarity(embeds, direction.to(embeds.dtype)[:, None, :], dim=-1)  # (B, T)
        if self.config.copy_seen_relative:
            cos = cos / (self.copy_scale(z, embeds.dtype) if scale is None else scale)[:, None]
        if mask is not None:
            cos = cos.masked_fill(mask == 0, float("-inf"))
        run = torch.cummax(cos, dim=1).values
        if past is not None:
            run = torch.maximum(run, past.to(run))
        return run.unsqueeze(-1)

    def copy_scale(self, z: Tensor, dtype: torch.dtype, pointer: Tensor | None = None,
                   direction: Tensor | None = None) -> Tensor:
        """(B,) the best cosine any token embedding reaches with U z (what relative coverage
        divides by). With tied input and output embeddings, `pointer(z)` (B, V) holds those
        cosines times |U z|, so passing it saves a product with the vocabulary table; direction
        (B, H) is U z when known."""
        if direction is None:
            direction = self.memory_map(self._code(z).to(dtype))  # (B, H)
        if pointer is not None and self._tied():
            best = pointer.amax(-1) / direction.norm(dim=-1).clamp_min(1e-12)
        else:
            best = (self._unit_embeddings(dtype) @ F.normalize(direction, dim=-1).T).amax(0)  # (B,)
        return best.clamp_min(1e-6)

    def pointer(self, z: Tensor, dtype: torch.dtype) -> Tensor:
        """(..., V) the copy term before its gate, for latents z (..., C): every token's output
        embedding over its norm, dotted with U z. It depends on z alone, so generation computes
        it once per row and each step scales it by that step's gate (`fused_logits`); `fuse`
        computes it in the same product with the table as the head's logits."""
        _, head = self._body_and_head()
        direction = self.memory_map(self._code(z.to(dtype)))  # (..., H)
        return (direction @ head.weight.T) / self._head_norms(head.weight).clamp_min(1e-6)

    def fuse(self, hidden: Tensor, z: Tensor, pointer: Tensor | None = None,
             terms: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The fusion MLP's features (..., F), the head's logits of the fused state (..., V) and
        `pointer(z)` (B, V), for final hidden states (..., H) and readouts z (B, C). Without a
        given pointer, it comes out of the same product with the head's weight as the logits:
        one pass over the vocabulary table instead of two (most of a short query's extra cost).
        terms: `readout_terms(z)` when already known.

        The MLP's first layer reads [h; code] as h W_h^T + (code W_c^T + b), its two halves apart."""
        _, head = self._body_and_head()
        direction, on_code = self.readout_terms(z, hidden.dtype) if terms is None else terms  # (B, H), (B, F)
        hidden_weight, _ = self._fusion_weights(hidden.dtype)
        per_position = on_code.unsqueeze(-2) if hidden.ndim == z.ndim + 1 else on_code
        features = F.gelu(F.linear(hidden, hidden_weight) + per_position)  # (..., F)
        mixed = hidden + self.fusion_out(features)
        flat = mixed.reshape(-1, mixed.shape[-1])  # (N, H)
        n = flat.shape[0]
        if pointer is None:
            flat = torch.cat([flat, direction.to(flat.dtype)])  # (N + B, H)
        both = vocab_product(flat, head.weight)  # (N [+ B], V)
        logits = both[:n].reshape(*mixed.shape[:-1], -1)
        if head.bias is not None:
            logits = logits + head.bias
        if pointer is None:
            pointer = both[n:] / self._head_norms(head.weight).clamp_min(1e-6)
        return features, logits, pointer

    def said(self, z: Tensor, previous: Tensor, tokens: Tensor, chosen: Tensor) -> Tensor:
        """z (B, C) after generation chose `chosen` (B,) at the contexts (`previous`, `tokens`)
        (B,): with a sequence channel, the sketch loses the triple just said (`consume`);
        otherwise z itself."""
        if self.successors is None:
            return z
        code, sketch = z[..., : self.config.code_size], z[..., self.config.code_size :]
        return torch.cat([code, consume(sketch, previous.to(z.device), tokens.to(z.device), chosen.to(z.device))], -1)

    def sequence_start(self, z: Tensor | None, previous: Tensor, tokens: Tensor, mask: Tensor,
                       reply_start: bool) -> tuple[Tensor | None, Tensor, Tensor]:
        """z and the sequence channel's contexts `previous`, `tokens` (B, T) for the continuation
        of a prompt (mask (B, T)). With `reply_start` (a chat reply: a new text) the last
        position's context restarts at (START, START), so the memory recalls a written text
        from its first token; otherwise the prompt's triples leave z's sketch (`said_prompt`)."""
        if reply_start:
            restart = torch.full_like(tokens[:, -1:], START)
            return z, torch.cat([previous[:, :-1], restart], 1), torch.cat([tokens[:, :-1], restart], 1)
        return (None if z is None else self.said_prompt(z, previous, tokens, mask)), previous, tokens

    def said_prompt(self, z: Tensor, previous: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        """z (B, C) after a prompt that generation continues: every triple the prompt's tokens
        (B, T) form after `previous` (B, T) leaves the sketch as if generation had said it (mask
        (B, T) 1 on real tokens). A continuation of a written text then does not take again a way
        its prompt took ("... merges with" prompted, "... where it merges into" follows)."""
        if self.successors is None or tokens.shape[1] < 2:
            return z
        code, sketch = z[..., : self.config.code_size], z[..., self.config.code_size :]
        previous, tokens, mask = previous.to(z.device), tokens.to(z.device), mask.to(z.device)
        # every position's triple direction in one batch (T - 1, B, D); the sketch then loses them in order
        directions = triple_directions(previous[:, :-1].T, tokens[:, :-1].T, tokens[:, 1:].T, sketch).contiguous()
        keep = (mask[:, :-1] * mask[:, 1:]).bool().T[..., None]  # (T - 1, B, 1)
        for i in range(directions.shape[0]):
            sketch = torch.where(keep[i], take_out(sketch, directions[i]), sketch)
        return torch.cat([code, sketch], -1)

    def recall(self, z: Tensor | None, candidates: Tensor | None) -> Recall | None:
        """The triples that readouts z (B, C), as read before any token is said, hold among their
        texts' tokens `candidates` (B, M) (`Recall`), for every decoding step of those rows; None
        without a sequence channel, z or candidates."""
        if self.successors is None or z is None or candidates is None:
            return None
        return Recall.of(z[..., self.config.code_size :].float(), candidates.to(z.device))

    def _tied(self) -> bool:
        """Whether the decoder's input embeddings are its output head's weight."""
        _, head = self._body_and_head()
        return self.decoder.get_input_embeddings().weight is head.weight

    def fused_logits(self, hidden: Tensor, z: Tensor, seen: Tensor | None = None,
                     tokens: Tensor | None = None, previous: Tensor | None = None,
                     candidates: Tensor | None = None, pointer: Tensor | None = None,
                     recall: Recall | None = None, fused: tuple[Tensor, Tensor, Tensor] | None = None,
                     pointed: Tensor | None = None) -> Tensor:
        """Logits of final hidden states fused with z: hidden (..., H), z (B, C) -> (..., V).

        seen (..., 1), from `copy_coverage`, lets the gate stop copying once the text already
        holds the word it points at (no "Rome, Rome, Rome"); the full forward and generation
        always pass it.

        logits = head(h + F([h; z])) + g([h; z]) * normalize_rows(W_out) @ (U z): a residual MLP
        on the hidden state plus a copy term that scores every token by the cosine between its
        output embedding and the vector U z (so frequent, long embeddings do not win by norm),
        with a gate g in (0, 2), computed from the MLP's hidden features, that lets each position
        decide how much to copy.

        With a sequence channel and `tokens` (...), the ids whose next token is being predicted,
        and `previous` (...), the ids before them (START where unknown), each token also gets
        weight * relu(s - t) / (1 - t) for its successor score s under the readout's sketch
        (threshold t), and the copy term is off where the sketch confidently
        continues with something other than what it points at (`ConditioningConfig.sequence_confidence`).
        With `ConditioningConfig.sequence_lead` set, a confident successor also leads its row.
        Where a context has several confident successors, those that do not lead back to it are
        set aside for this position (`SuccessorScorer.settle_forks`).
        candidates (B, M) limit the successor scores to the recalled text's tokens. pointer,
        `pointer(z)` when already known (B, V) for z (B, C), else computed here (once per row of z).
        recall, `recall(z, candidates)` of the rows' readouts before any token was said (decoding).
        fused, `fuse(hidden, z)` when already computed. pointed (B, 1), the token the pointer
        ranks first (its argmax: the gate scales a row's pointer by a positive number, so this is
        the token the copy term points at), when already known.
        """
        if self.fusion_in is None or self.fusion_out is None or self.copy_gate is None:
            raise ValueError('fused_logits needs ConditioningConfig.mode "output"')
        z = z.to(hidden.dtype)
        features, logits, pointer = self.fuse(hidden, z, pointer) if fused is None else fused  # pointer once per row
        if recall is None and tokens is not None and z.ndim == 2:
            recall = self.recall(z, candidates)  # once for both the scores and the forks
        if hidden.ndim == z.ndim + 1:
            z = z.unsqueeze(-2).expand(*hidden.shape[:-1], z.shape[-1])  # (B, T, C)
            pointer = pointer.unsqueeze(-2)  # (B, 1, V)
            pointed = None if pointed is None else pointed.unsqueeze(-2)  # (B, 1, 1)
        sketch = z[..., self.config.code_size :]
        gate = self.copy_gate(features)  # (..., 1)
        if seen is not None:
            gate = gate + self.copy_seen * F.relu(seen.to(gate) - self.config.copy_seen_threshold)
        copy_weight = 2 * torch.sigmoid(gate)  # (..., 1) what the pointer is scaled by
        cfg, scores = self.config, None
        if self.successors is not None and tokens is not None:
            if previous is None:
                previous = torch.full_like(tokens, START)
            tokens, previous = tokens.to(sketch.device), previous.to(sketch.device)
            if pointed is None:
                pointed = pointer.argmax(-1, keepdim=True)  # (B, 1) or (B, 1, 1)
            scores = self.successors.scores(sketch, tokens, previous, candidates, recall)  # (..., V)
            scores = self.successors.settle_forks(scores, sketch, tokens, previous, candidates, cfg.sequence_confidence,
                                                  recall=recall)
            logits = logits + _successor_term(scores, cfg.sequence_weight, cfg.sequence_threshold).to(logits)
            on_pointed = scores.gather(-1, pointed.expand(*scores.shape[:-1], 1))  # (..., 1) score of the copied token
            yields = (scores.amax(-1, keepdim=True) > cfg.sequence_confidence) & (on_pointed < cfg.sequence_confidence)
            copy_weight = copy_weight.masked_fill(yields, 0.0)
        logits = logits + copy_weight * pointer  # (..., V)
        if scores is not None and cfg.sequence_lead is not None:
            logits = _lead(logits, scores, cfg.sequence_confidence, cfg.sequence_lead)
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


FEW_ROWS = 8
"""Up to this many rows, `vocab_product` multiplies the table by the rows' transpose."""


def vocab_product(rows: Tensor, weight: Tensor) -> Tensor:
    """rows (N, H) times the vocabulary table weight (V, H), transposed: (N, V).

    For a few rows (a query's last positions, a small decoding batch) it is computed as
    weight @ rows.T: CPU BLAS kernels for a row-major product of 2-8 rows can pass over the
    whole table once per row, where this form passes over it once (docs/results.md).
    """
    if rows.shape[0] <= FEW_ROWS:
        return (weight @ rows.T).T
    return F.linear(rows, weight)


def _successor_term(scores: Tensor, weight: float, threshold: float) -> Tensor:
    """weight * relu(scores - threshold) / (1 - threshold), (..., V): what the sequence channel
    adds to the logits. Without a gradient to record, the steps run in place on one temporary
    (each vocabulary-sized allocation costs more than its arithmetic on a CPU)."""
    if torch.is_grad_enabled() and scores.requires_grad:
        return weight * F.relu(scores - threshold) / (1 - threshold)
    return (scores - threshold).relu_().mul_(weight).div_(1 - threshold)


def _lead(logits: Tensor, scores: Tensor, confidence: float, margin: float) -> Tensor:
    """Raise each row's most confident successor to at least (the best other logit) + margin.

    logits, scores: (..., V). Rows whose best successor score is <= confidence are unchanged.
    """
    best_score, best = scores.max(-1, keepdim=True)  # (..., 1)
    if not bool((best_score > confidence).any()):
        return logits
    current = logits.gather(-1, best)
    others = logits.scatter(-1, best, float("-inf")).amax(-1, keepdim=True)
    raised = torch.maximum(current, others + margin)
    return logits.scatter(-1, best, torch.where(best_score > confidence, raised, current))

