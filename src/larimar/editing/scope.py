"""The scope detector: which written item, if any, a query is about (spec 5.1).

Each written fact or paraphrase keeps two scope keys (`encoding.encode_texts`); a query is
embedded as a whole and, when it holds several sentences, by its last sentence too
(`encoding.query_views`). With a trained detector (the model config's `scope`, see
`larimar.model.scope`), the items nearest by cosine are scored by its network and the best
probability decides; without one, the best cosine does. Either way the query is in scope when
the score reaches the threshold.

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
    def match(self, views: Sequence[str], embedded: Tensor, keys: Tensor,
              text_of: Callable[[int], str], live: Tensor | None = None) -> Match | None:
        """The best item for a query among items with scope keys (N, S, H).

        Args:
            views: the query's views (`encoding.query_views`).
            embedded: (V, H) their unit sentence embeddings (`encoder.embed`).
            keys: the items' scope keys.
            text_of: an item row's text.
            live: (N,) which rows may match (None: all), see `Memory.search_rows`.

        Returns:
            The best match, or None when there are no (live) items.
        """
        count = keys.shape[0] if live is None else int(live.sum())
        if count == 0:
            return None
        cos = scope_cosines(keys, embedded)  # (N, S, V)
        best = cos.amax(dim=(1, 2))  # (N,)
        if live is not None:
            best = best.masked_fill(~live, float("-inf"))
        if self.config is None or self.features is None:
            row = int(best.argmax())
            return Match(row, float(best[row]), float(best[row]))
        rows = best.topk(min(self.config.candidates, count)).indices.tolist()
        x = torch.stack([self.features(views[v], text_of(r), float(cos[r, 0, v]), float(cos[r, -1, v]))
                         for r in rows for v in range(len(views))])  # (rows * V, F)
        p = probability(self.config, x).reshape(len(rows), len(views)).amax(1)  # (rows,)
        k = int(p.argmax())
        return Match(rows[k], float(best[rows[k]]), float(p[k]))
