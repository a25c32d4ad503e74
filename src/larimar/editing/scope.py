"""The scope detector: which written item, if any, a query is about (spec 5.1).

Each written fact or paraphrase keeps two scope keys (`encoding.encode_texts`); a query is
embedded as a whole and, when it holds several sentences, by its last sentence too
(`encoding.query_views`). With a trained detector (the model config's `scope`, see
`larimar.model.scope`), the items nearest by cosine are scored by its network and the best
probability decides; without one, the best cosine does. Either way the query is in scope when
the score reaches the threshold.

The items are scanned on a float16 copy of their keys (`Items.coarse`, a quarter of the bytes:
at 10,000 facts the float64 scan was most of what the scope decision costs over an encoder pass)
and the few nearest are compared exactly, which gives the rows an exact scan gives.

Symbols: N items, S keys per item (2), V query views, H embedding size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model.larimar import LarimarModel
from ..model.scope import PairFeatures, ScopeConfig, probability
from .encoding import scope_cosines

COARSE_ERROR = 2e-3
"""Bound on |cosine in `COARSE_DTYPE` - exact cosine| for unit vectors: rounding each to float16
moves their dot product by at most 2 u (u = 2^-11), the float32 sum by about 384 x 2^-24, and
rounding the result by u; 1.5e-3 in all (`tests/editing/test_scope.py` checks it)."""


@dataclass(frozen=True)
class Match:
    """The item a query is nearest to, by the detector's score."""

    row: int
    """Item row."""
    similarity: float
    """Best cosine of a query view to one of the item's keys."""
    score: float
    """What the threshold is compared with: the trained detector's probability, else the cosine."""


class ScopeDetector:
    """Scores a query's views against written items (with the model's trained detector, if any)."""

    def __init__(self, config: ScopeConfig | None, tokenizer: Any) -> None:
        self.config = config
        self.features = PairFeatures(tokenizer) if config is not None else None

    @classmethod
    def of(cls, model: LarimarModel) -> ScopeDetector:
        """The detector of a model: its trained one (config `scope`), else the cosine."""
        return cls(model.config.scope, model.tokenizer)

    @property
    def trained(self) -> bool:
        """Whether scores are the trained detector's probabilities (else cosines)."""
        return self.config is not None

    @torch.no_grad()
    def match(self, views: Sequence[str], embedded: Tensor, keys: Tensor, text_of: Callable[[int], str],
              live: Tensor | None = None, coarse: Tensor | None = None) -> Match | None:
        """The best item for a query among items with scope keys (N, S, H).

        Args:
            views: the query's views (`encoding.query_views`).
            embedded: (V, H) their unit sentence embeddings (`encoder.embed`).
            keys: the items' unit scope keys.
            text_of: an item row's text.
            live: (N,) which rows may match (None: all), see `Memory.search_rows`.
            coarse: the keys in `COARSE_DTYPE` (`Items.coarse`), scanned first when given; the
                match is the same either way.

        Returns:
            The best match, or None when there are no (live) items.
        """
        count = keys.shape[0] if live is None else int(live.sum())
        if count == 0:
            return None
        want = 1 if self.config is None else min(self.config.candidates, count)
        rows, cos = nearest(keys, embedded, want, live, coarse)  # (want,), (want, S, V)
        best = cos.amax(dim=(1, 2))  # (want,)
        if self.config is None or self.features is None:
            return Match(rows[0], float(best[0]), float(best[0]))
        x = torch.stack([self.features(views[v], text_of(r), float(cos[i, 0, v]), float(cos[i, -1, v]))
                         for i, r in enumerate(rows) for v in range(len(views))])  # (want * V, F)
        p = probability(self.config, x).reshape(len(rows), len(views)).amax(1)  # (want,)
        k = int(p.argmax())
        return Match(rows[k], float(best[k]), float(p[k]))


def nearest(keys: Tensor, embedded: Tensor, k: int, live: Tensor | None = None,
            coarse: Tensor | None = None) -> tuple[list[int], Tensor]:
    """The k live items with the highest cosine (over their keys and the query's views), best
    first, and their cosines (k, S, V) in the keys' precision.

    With `coarse`, all items are scanned in its precision and only the rows within twice
    `COARSE_ERROR` of the k-th best are compared exactly: an item left out is beaten, exactly,
    by k others, so the rows are those of the exact scan (up to exact ties).
    """
    if coarse is None:
        near = None
        cos = scope_cosines(keys, embedded)  # (N, S, V)
    else:
        approx = coarse_best(coarse, embedded)  # (N,)
        if live is not None:
            approx = approx.masked_fill(~live, float("-inf"))
        kth = approx.topk(k).values[-1]
        near = (approx >= kth - 2 * COARSE_ERROR).nonzero().flatten()  # (M,) live rows, M >= k
        cos = scope_cosines(keys[near], embedded)  # (M, S, V)
        live = None
    best = cos.amax(dim=(1, 2))
    if live is not None:
        best = best.masked_fill(~live, float("-inf"))
    order = best.topk(k).indices
    rows = order if near is None else near[order]
    return rows.tolist(), cos[order]


def coarse_best(coarse: Tensor, embedded: Tensor) -> Tensor:
    """(N,) float32: each item's best cosine over its keys (N, S, H) in `COARSE_DTYPE` and the
    query's views (V, H), within `COARSE_ERROR` of the exact one."""
    n, s, h = coarse.shape  # (V, H) x (H, N * S): the form torch computes fastest in float16
    return (embedded.to(coarse.dtype) @ coarse.reshape(n * s, h).T).reshape(-1, n, s).amax(dim=(0, 2)).float()
