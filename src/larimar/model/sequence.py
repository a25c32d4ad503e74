"""The sequence channel: a text's token order as one fixed-width vector (a successor sketch).

A memory readout that names only a sentence's meaning and its last word cannot say how the
sentence goes word by word, so reconstructing a whole written sentence through memory was no
better than not reading it. The sequence channel adds that: each decoder token v gets three
pseudo-random sign vectors of width D, two keys a(v), b(v) in {-1, +1}^D and a code c(v) in
{-1, +1}^D / sqrt(D), all derived from a fixed integer hash of (v, coordinate), so no table is
stored or trained. A text t_1 ... t_n (followed by the decoder's end-of-text token, and preceded
by two start markers t_{-1} = t_0 = START) becomes

    s = sum_{i >= 0} a(t_{i-1}) * b(t_i) * c(t_{i+1})    (elementwise products; D numbers)

a superposition of (two-token context, next token) triples. Unbinding with the current context
(u', u) gives a(u') * b(u) * s = c(next) + noise, so the score c(v) . (a(u') * b(u) * s) is about
1 for the token that followed that context in the written text (2 if it did twice) and about
N(0, (n - 1) / D) for any other token. Two tokens of context, not one, keep repeated words
("the", "and") from naming every word that ever followed them. The (START, START) context
names the text's first token, so a reply can recall a written text from its beginning. The sketch is linear in its
triples, so it goes through the memory's least-squares write and read like the rest of the
latent: a readout that mixes facts mixes their continuations.

Generation consumes the sketch (`consume`): each token said takes its triple out of the row's
sketch, so a context that a text holds twice ("1999": (9, 9) goes on to 9, then to ".") names its
second successor once the first is said, and a reply cannot go round a repeated context for ever.
Teacher-forced scoring reads the whole sketch at every position.

A sketch of n triples read at one context carries crosstalk from the other n - 1, about
N(0, (n - 1) / D) per token: in a long text (35 tokens at D = 1,024) a successor now and then
scores below the confidence threshold and a wrong token above it, and the reply skips or
garbles. When the text's tokens are known (`candidates`, from the recalled item), the triples
are recovered instead (`recover`): a greedy least-squares pursuit over the M^3 triples the
candidates can form finds the few the sketch holds, and scoring reads their least-squares
weights (1 per written occurrence) plus the residual's plain scores. The sketch is a random
sign projection of a sparse multiset, so D = 1,024 numbers determine it (every triple and count
of held-out sentences of up to 45 tokens, docs/results.md): only contexts that the text truly
passes through twice stay ambiguous.

Symbols: V vocabulary, D sketch width, n tokens in a text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_KEY_SALT, _CODE_SALT, _PREVIOUS_SALT = 2, 1, 3
START = -1
"""The token id that stands before a text's first token (and wherever the context is unknown)."""
FORK_HORIZON = 64
"""Tokens `SuccessorScorer.settle_forks` follows along each branch of a fork (a fact's length)."""
RECOVER_FLOOR = 0.4
"""`recover` stops when no remaining triple correlates with the residual above this (below half
a written occurrence; a false triple that joins gets a least-squares weight near 0)."""
_NO_TOKEN = -2
"""Context id of padding triples (matches no context)."""


def hashed_signs(ids: Tensor, dim: int, salt: int) -> Tensor:
    """Deterministic pseudo-random signs (..., dim) in {-1, +1} for integer ids (...).

    The same (id, coordinate, salt) gives the same sign on every machine and torch version:
    it is a 32-bit integer hash (multiply and xor-shift rounds) of the three numbers. The rows
    of a few ids (decoding hashes one or two tokens per step) come from a bounded cache of
    rows computed before; the values are the same.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1; got {dim}")
    if 0 < ids.numel() <= _FEW_IDS:
        return _cached_signs(ids, dim, salt)
    return _signs(ids, dim, salt)


_FEW_IDS = 32
"""Up to this many ids, `hashed_signs` reads its rows from `_ROWS`."""
_ROWS_LIMIT = 4096
"""Rows `_ROWS` holds at most (16 MB at D = 1,024); it is emptied when full."""
_ROWS: dict[tuple[int, int, int, torch.device], Tensor] = {}


def _cached_signs(ids: Tensor, dim: int, salt: int) -> Tensor:
    """`_signs` of a few ids, each row computed once and then reused (the rows are gathered
    locally, so another thread emptying the cache meanwhile changes nothing)."""
    flat = ids.reshape(-1).tolist()
    rows = {i: _ROWS.get((i, dim, salt, ids.device)) for i in flat}
    missing = sorted(i for i, row in rows.items() if row is None)
    if missing:
        store = len(missing) <= _ROWS_LIMIT
        if store and len(_ROWS) + len(missing) > _ROWS_LIMIT:
            _ROWS.clear()
        for i, row in zip(missing, _signs(torch.tensor(missing, device=ids.device), dim, salt)):
            rows[i] = row
            if store:
                _ROWS[(i, dim, salt, ids.device)] = row
    return torch.stack([rows[i] for i in flat]).reshape(*ids.shape, dim)


def _signs(ids: Tensor, dim: int, salt: int) -> Tensor:
    """The hash of `hashed_signs`, computed for every id."""
    x = ((ids.to(torch.int64)[..., None] * 73856093) ^ _coordinate_salts(dim, salt, ids.device)) & _MASK32
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    return (1 - 2 * (x & 1)).to(torch.float32)


_SALTS: dict[tuple[int, int, torch.device], Tensor] = {}


def _coordinate_salts(dim: int, salt: int, device: torch.device) -> Tensor:
    """(dim,) what `hashed_signs` xors into every id's hash: each coordinate's and the salt's
    multiples, computed once per (dim, salt, device) (xor and the 32-bit mask commute)."""
    key = (dim, salt, device)
    if key not in _SALTS:
        _SALTS[key] = (torch.arange(dim, dtype=torch.int64, device=device) * 19349663) ^ (salt * 83492791)
    return _SALTS[key]


def sequence_keys(previous: Tensor, ids: Tensor, dim: int) -> Tensor:
    """Context keys a(u') * b(u) (..., D) in {-1, +1} of token ids u (...) after u' (...)."""
    return hashed_signs(previous, dim, _PREVIOUS_SALT) * hashed_signs(ids, dim, _KEY_SALT)


def sequence_codes(ids: Tensor, dim: int) -> Tensor:
    """Codes c(v) (..., D) in {-1, +1} / sqrt(D) of token ids (...), so c(v) . c(v) = 1."""
    return hashed_signs(ids, dim, _CODE_SALT) / dim**0.5


def successor_sketch(token_lists: Sequence[Sequence[int]], dim: int) -> Tensor:
    """Sketches (N, D) of N token sequences: the sum over positions i >= 0 of
    a(t_{i-1}) * b(t_i) * c(t_{i+1}), with t_{-1} = t_0 = START.

    An empty sequence has nothing to bind and gives zeros.
    """
    out = torch.zeros(len(token_lists), dim)
    for row, tokens in enumerate(token_lists):
        if not tokens:
            continue
        ids = torch.as_tensor([START, START, *tokens], dtype=torch.int64)
        out[row] = (sequence_keys(ids[:-2], ids[1:-1], dim) * sequence_codes(ids[2:], dim)).sum(0)
    return out


def consume(sketch: Tensor, previous: Tensor, tokens: Tensor, chosen: Tensor) -> Tensor:
    """The sketches (B, D) after the tokens `chosen` (B,) were said after the contexts
    (`previous`, `tokens`) (B,): each triple's component is taken out, at most once.

    A sketch is a multiset of (context, next token) triples. A reply that says a triple has used
    it, so generation removes it: the sketch's projection on the unit vector a(u') * b(u) * c(v),
    clipped to [0, 1] (one written occurrence, at the readout's unit weight; never added). A
    context written twice with two successors ("1999": (9, 9) is followed by 9 and then by ".")
    then names the second once the first is said, instead of the first again and again.
    """
    return take_out(sketch, triple_directions(previous, tokens, chosen, sketch))


def triple_directions(previous: Tensor, tokens: Tensor, chosen: Tensor, like: Tensor) -> Tensor:
    """The unit vectors a(u') * b(u) * c(v) (..., D) of the triples (`previous`, `tokens`,
    `chosen`) (...), in the dtype and on the device of `like` (..., D)."""
    keys = sequence_keys(previous, tokens, like.shape[-1]).to(like)
    return keys * sequence_codes(chosen, like.shape[-1]).to(like)


def take_out(sketch: Tensor, direction: Tensor) -> Tensor:
    """`consume` with the triples' unit vectors (B, D) given: the sketch (B, D) without each
    row's projection on its vector, clipped to [0, 1]."""
    used = (sketch * direction).sum(-1, keepdim=True).clamp(0.0, 1.0)  # (B, 1)
    return sketch - used * direction


def previous_tokens(ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """The token before each position of ids (B, T): START at the first position and after
    padding (mask (B, T) 0), so left- and right-padded batches give the same contexts."""
    prev = torch.cat([torch.full_like(ids[:, :1], START), ids[:, :-1]], 1)
    if mask is not None:
        before = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1)
        prev = prev.masked_fill(before == 0, START)
    return prev


def candidate_ids(rows: Sequence[Sequence[int]] | None, device: torch.device) -> Tensor | None:
    """(N, M) token ids per row, each row padded by repeating its first id; None stays None."""
    if rows is None:
        return None
    if any(not r for r in rows):
        raise ValueError("every row of candidates needs at least one token id")
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def recover(sketch: Tensor, ids: Tensor, floor: float = RECOVER_FLOOR, batch: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """The triples a sketch (D,) holds among those its tokens `ids` (M,) can form.

    Greedy pursuit with least-squares refits: each round adds the (at most `batch`) triples
    whose correlation with the residual is highest (and within 0.7 of the best), refits all
    chosen triples' weights to the sketch, and stops when no correlation reaches `floor` or at
    D / 4 triples (past that, D random signs no longer determine the triples reliably).
    Contexts range over START and `ids`, successors over `ids`.
    Returns triples (S, 3) as (previous, token, next) ids, their unit atoms (S, D) and the
    atoms' pseudo-inverse (S, D) in float64 (`row_pinv`: the map from a sketch to its weights).
    """
    dim = sketch.shape[-1]
    ids = ids.unique()
    context = torch.cat([ids.new_tensor([START]), ids])
    pairs = (hashed_signs(context, dim, _PREVIOUS_SALT)[:, None] * hashed_signs(context, dim, _KEY_SALT)[None])
    pairs = pairs.reshape(-1, dim).to(sketch.device)  # ((M+1)^2, D)
    codes = sequence_codes(ids, dim).to(sketch.device)  # (M, D)
    target = sketch.detach().float()  # triples are chosen, not learned: no gradient
    chosen = torch.zeros(pairs.shape[0] * len(ids), dtype=torch.bool, device=sketch.device)
    support = torch.empty(0, dtype=torch.long, device=sketch.device)
    residual, inverse = target, target.new_zeros(0, dim, dtype=torch.float64)
    while len(support) < dim // 4:
        corr = (pairs @ (codes * residual).T).reshape(-1).masked_fill(chosen, 0.0)  # no (M+1)^2 x D temporary
        best = float(corr.max())
        if best < floor:
            break
        pick = (corr >= max(floor, 0.7 * best)).nonzero().squeeze(-1)
        pick = pick[corr[pick].argsort(descending=True)[: min(batch, dim // 4 - len(support))]]
        chosen[pick] = True
        support = torch.cat([support, pick])
        atoms = pairs[support // len(ids)] * codes[support % len(ids)]
        inverse = row_pinv(atoms.double())
        weights = inverse @ target.double()  # the least-squares fit of the chosen atoms to the sketch
        residual = target - (weights @ atoms.double()).float()
    pair, nxt = support // len(ids), support % len(ids)
    triples = torch.stack([context[pair // len(context)], context[pair % len(context)], ids[nxt]], -1)
    return triples.to(sketch.device), pairs[pair] * codes[nxt], inverse


def row_pinv(rows: Tensor) -> Tensor:
    """The pseudo-inverse's transpose (S, D) of rows (S, D) of full row rank, (rows rows^T)^-1 rows,
    from a Cholesky factor of their (S, S) Gram matrix (random sign atoms are far from dependent);
    through the SVD where that factor does not exist."""
    factor, info = torch.linalg.cholesky_ex(rows @ rows.T)
    if int(info) != 0:
        return torch.linalg.pinv(rows.T)
    return torch.cholesky_solve(rows, factor)


@dataclass
class Recall:
    """Recovered triples of B sketches, padded to S per row: `triples` (B, S, 3) ids (padding
    rows never match a context), `atoms` (B, S, D) and `pinv` (B, S, D), the atoms'
    pseudo-inverse. The weights of a (consumed) sketch x are pinv @ x and its residual
    x - weights @ atoms, exactly, since consuming removes a multiple of an atom. `codes` (B, M, D)
    are the sign codes of the candidates the triples were recovered from (what scoring reads
    at every decoding step)."""

    triples: Tensor
    atoms: Tensor
    pinv: Tensor
    codes: Tensor

    @classmethod
    def of(cls, sketches: Tensor, candidates: Tensor) -> Recall:
        """The recall of sketches (B, D) whose texts' tokens are candidates (B, M)."""
        found = [recover(sketch, ids) for sketch, ids in zip(sketches, candidates)]
        width, dim = max(1, max(len(t) for t, _, _ in found)), sketches.shape[-1]
        triples = torch.full((len(found), width, 3), _NO_TOKEN, dtype=torch.long, device=sketches.device)
        atoms = sketches.new_zeros(len(found), width, dim, dtype=torch.float32)
        pinv = torch.zeros_like(atoms)
        for row, (t, a, inverse) in enumerate(found):
            if len(t):
                triples[row, : len(t)], atoms[row, : len(t)], pinv[row, : len(t)] = t, a, inverse.float()
        return cls(triples, atoms, pinv, hashed_signs(candidates.to(sketches.device), dim, _CODE_SALT))

    def row(self, index: int) -> Recall:
        """The recall of one row, as a batch of one."""
        return Recall(self.triples[index : index + 1], self.atoms[index : index + 1], self.pinv[index : index + 1],
                      self.codes[index : index + 1])


class SuccessorScorer:
    """Scores every vocabulary token as the successor of the current token under a sketch.

    The (V, D) sign table is built on first use per device (bfloat16: the signs are exact and
    the scoring matmul is fastest on CPU) and reused.

    Args:
        vocab_size: V.
        dim: D.
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        if vocab_size < 1 or dim < 1:
            raise ValueError(f"vocab_size and dim must be >= 1; got {vocab_size}, {dim}")
        self.vocab_size, self.dim = vocab_size, dim
        self._tables: dict[torch.device, Tensor] = {}

    def table(self, device: torch.device) -> Tensor:
        """The (V, D) table of sign codes (unscaled) on `device`."""
        if device not in self._tables:
            ids = torch.arange(self.vocab_size, device=device)
            rows = [hashed_signs(ids[i : i + 4096], self.dim, _CODE_SALT).to(torch.bfloat16)
                    for i in range(0, self.vocab_size, 4096)]
            self._tables[device] = torch.cat(rows)
        return self._tables[device]

    def scores(self, sketch: Tensor, tokens: Tensor, previous: Tensor, candidates: Tensor | None = None,
               recall: Recall | None = None) -> Tensor:
        """Successor scores (..., V) for current tokens (...) after `previous` (...) under
        sketches (..., D).

        The token that followed this context in the written text scores about 1 (times the
        readout's weight on that text); unrelated tokens about 0. With `candidates` (B, M), the
        token ids of the texts the sketches hold (B the leading dimension of `tokens`; pad a row
        by repeating one of its ids), only those are scored and every other token gets 0, its
        expected score: a product of M columns instead of V. With candidates the triples are
        recovered (`recall`, else `Recall.of` these sketches) and a triple's score is its
        least-squares weight plus its plain score under the residual. Decoding passes the recall
        of the readouts as read before any token was said (consuming does not change it).
        """
        if sketch.shape[-1] != self.dim:
            raise ValueError(f"sketch must have width {self.dim}; got {sketch.shape[-1]}")
        tokens = tokens.to(sketch.device)
        previous = previous.to(sketch.device)
        if candidates is None:
            query = sequence_keys(previous, tokens, self.dim) * sketch.float() / self.dim**0.5
            return (query.to(torch.bfloat16) @ self.table(sketch.device).T).float()
        batch, work = candidates.shape[0], torch.promote_types(sketch.dtype, torch.float32)
        flat = sketch.to(work).expand(*tokens.shape, self.dim).reshape(batch, -1, self.dim)  # (B, P, D)
        candidates = candidates.to(sketch.device)
        if recall is None:
            recall = Recall.of(flat[:, 0], candidates)
        weights = flat @ recall.pinv.to(work).transpose(1, 2)  # (B, P, S)
        residual = flat - weights @ recall.atoms.to(work)
        keys = sequence_keys(previous, tokens, self.dim).reshape(batch, -1, self.dim).to(work)
        codes = recall.codes.to(work)  # (B, M, D): the candidates' rows of the code table, not the table
        picked = (keys * residual / self.dim**0.5) @ codes.transpose(1, 2)  # (B, P, M)
        out = picked.new_zeros(batch, flat.shape[1], self.vocab_size)  # filled in place: one (..., V) allocation
        out.scatter_(-1, candidates[:, None, :].expand(-1, flat.shape[1], -1), picked)
        found = recall.triples[:, None]  # (B, 1, S, 3)
        match = (found[..., 0] == previous.reshape(batch, -1, 1)) & (found[..., 1] == tokens.reshape(batch, -1, 1))
        nxt = found[..., 2].clamp_min(0).expand_as(match)
        out.scatter_add_(-1, nxt, weights * match)
        return out.reshape(*tokens.shape, self.vocab_size)

    def settle_forks(self, scores: Tensor, sketch: Tensor, tokens: Tensor, previous: Tensor,
                     candidates: Tensor | None, confidence: float, horizon: int = FORK_HORIZON,
                     recall: Recall | None = None) -> Tensor:
        """`scores` (..., V) with each fork settled toward the branches that come back to it.

        A fork is a context with more than one confident successor (a written text passed
        through it twice: in "1777" the context (7, 7) goes on to 7 and then to "."). Said in
        the wrong order, the text ends early ("177."). The text says every triple once, so at
        a fork it first takes a branch that returns to the fork: following each branch's
        confident successors, with the sketch consumed as generation would (`consume`), for up
        to `horizon` tokens. Where some branches come back and others do not, those that do
        not score 0 at this position (they stay in the sketch for the next visit). `recall`: see
        `scores`.
        """
        forks = ((scores > confidence).sum(-1) > 1).nonzero().tolist()
        if not forks:
            return scores
        scores = scores.clone()
        if candidates is not None:
            candidates = candidates.to(sketch.device)
            if recall is None:
                rows = sketch.expand(*tokens.shape, self.dim).reshape(candidates.shape[0], -1, self.dim)[:, 0]
                recall = Recall.of(rows.float(), candidates)
        for index in map(tuple, forks):
            branches = (scores[index] > confidence).nonzero().squeeze(-1).tolist()
            rows = None if candidates is None else (candidates[index[0] : index[0] + 1], recall.row(index[0]))
            context = (int(previous[index]), int(tokens[index]))
            back = [self._comes_back(sketch.expand(*tokens.shape, self.dim)[index], context, v, rows, confidence,
                                     horizon) for v in branches]
            if any(back) and not all(back):
                for v, returns in zip(branches, back):
                    if not returns:
                        scores[index + (v,)] = 0.0
        return scores

    def _comes_back(self, sketch: Tensor, context: tuple[int, int], branch: int,
                    rows: tuple[Tensor, Recall] | None, confidence: float, horizon: int) -> bool:
        """Whether saying `branch` at `context` leads back to `context` within `horizon` tokens
        along confident successors of the consumed sketch (D,) (`rows`: the row's candidates
        and recall, or None)."""
        def ids(v: int) -> Tensor:
            return torch.tensor([v], device=sketch.device)

        previous, current = context
        sketch = consume(sketch[None].float(), ids(previous), ids(current), ids(branch))
        previous, current = current, branch
        for _ in range(horizon):
            if (previous, current) == context:
                return True
            scores = self.scores(sketch, ids(current), ids(previous), *(rows or (None, None)))[0]
            best = int(scores.argmax())
            if float(scores[best]) <= confidence:
                return False
            sketch = consume(sketch, ids(previous), ids(current), ids(best))
            previous, current = current, best
        return (previous, current) == context
