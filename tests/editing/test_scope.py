"""The scope detector through `Larimar`: the trained network decides on the tiny shipped-shaped
model (its detector favours queries made of the text's words), the cosine on a model without one."""

from __future__ import annotations

import pytest
import torch

import larimar
from larimar.editing.encoding import query_views, scope_cosines
from larimar.editing.items import COARSE_DTYPE
from larimar.editing.scope import COARSE_ERROR, coarse_best, nearest
from larimar.model.scope import PairFeatures, probability

FACT = "Paris is the capital of France."


def test_the_trained_detector_decides_with_its_probability(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    [fid] = memory.write([FACT])
    inside = shipped.scope("Paris is the capital of", memory)
    outside = shipped.scope("Where does Olga Moreau live?", memory)
    assert inside.in_scope and inside.fact_id == fid and inside.score > 0.5
    assert not outside.in_scope and outside.score < 0.5 and outside.z is None
    features = PairFeatures(shipped.tokenizer)
    cos = shipped.model.encoder.embed(["Paris is the capital of"]).double() @ memory.items.embeddings[0].T  # (1, 2)
    expected = probability(shipped.model.config.scope, features("Paris is the capital of", FACT,
                                                                float(cos[0, 0]), float(cos[0, 1]))[None])
    assert abs(inside.score - float(expected)) < 1e-6
    assert abs(inside.similarity - float(cos.max())) < 1e-6


def test_the_detector_picks_the_most_probable_of_the_nearest_items(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    texts = ["Berlin is the capital of Germany.", FACT, "Rome is the capital of Italy."]
    ids = memory.write(texts)
    decision = shipped.scope("Paris is the capital of France", memory)
    assert decision.in_scope and decision.fact_id == ids[1]
    answer = shipped.ask("Paris is the capital of which country?", memory, max_new_tokens=4)
    assert answer.fact_id == ids[1] and answer.score is not None and 0.0 <= answer.score <= 1.0


def test_the_threshold_applies_to_the_probability(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    memory.write([FACT])
    query = "Where does Olga Moreau live?"
    assert shipped.scope(query, memory, scope_threshold=0.0).in_scope
    assert not shipped.scope("Paris is the capital of", memory, scope_threshold=1.0).in_scope


def test_without_a_trained_detector_the_cosine_decides(lm: larimar.Larimar) -> None:
    assert lm.model.config.scope is None and not lm.detector.trained
    memory = lm.new_memory()
    memory.write([FACT])
    decision = lm.scope("Where is Paris?", memory)
    assert decision.score == decision.similarity
    embedded = lm.model.encoder.embed(query_views("Where is Paris?")).double()
    assert abs(decision.similarity - float((memory.items.embeddings[0] @ embedded.T).max())) < 1e-6
    assert decision.in_scope == (decision.similarity >= lm.scope_threshold)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_coarse_cosines_stay_within_their_bound() -> None:
    gen = torch.Generator().manual_seed(0)
    views = _unit(torch.randn(2, 384, generator=gen, dtype=torch.float64))
    keys = _unit(torch.randn(600, 2, 384, generator=gen, dtype=torch.float64))
    keys[:100, 0] = _unit(views[0] + 0.05 * keys[:100, 0])  # cosines near 1
    keys[100:200, 1] = _unit(keys[100:200, 1].abs())  # all-positive coordinates
    keys[200:300, 0] = _unit(views[1] + 1e-3 * torch.randn(100, 384, generator=gen, dtype=torch.float64))
    keys[300:400] = 0.0
    keys[300:400, :, 0] = 1.0  # one coordinate
    keys[400:500, 1] = _unit(keys[400:500, 1] * torch.logspace(-6, 0, 384, dtype=torch.float64))  # tiny entries
    views = torch.cat([views, _unit(torch.full((1, 384), 1.0, dtype=torch.float64))])
    exact = scope_cosines(keys, views).amax(dim=(1, 2))
    approx = coarse_best(keys.to(COARSE_DTYPE), views)
    assert approx.dtype == torch.float32
    assert float((approx.double() - exact).abs().max()) <= 1.5e-3 <= COARSE_ERROR


@pytest.mark.parametrize("seed", range(6))
def test_the_coarse_scan_gives_the_rows_of_the_exact_scan(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    views = _unit(torch.randn(1 + seed % 2, 64, generator=gen, dtype=torch.float64))
    keys = _unit(torch.randn(3000, 2, 64, generator=gen, dtype=torch.float64))
    crowd = torch.randint(0, 3000, (40,), generator=gen)  # cosines closer together than float16 can tell
    keys[crowd, seed % 2] = _unit(views[0] + 0.3 * _unit(torch.randn(40, 64, generator=gen, dtype=torch.float64)))
    keys[crowd[:10], 0] = keys[crowd[0], 0] + 1e-7 * torch.randn(10, 64, generator=gen, dtype=torch.float64)
    live = torch.rand(3000, generator=gen) > 0.2
    for k in (1, 8):
        for mask in (None, live):
            rows, cos = nearest(keys, views, k, mask, keys.to(COARSE_DTYPE))
            want, want_cos = nearest(keys, views, k, mask)
            assert rows == want
            assert torch.allclose(cos, want_cos, rtol=0, atol=1e-12)
            assert mask is None or all(bool(mask[r]) for r in rows)


def test_the_coarse_keys_follow_writes_and_forgets(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    ids = memory.write([FACT, "Berlin is the capital of Germany.", "Rome is the capital of Italy."])
    memory.forget(ids[1])
    keys, coarse, live = memory.search_rows()
    assert torch.equal(coarse, keys.to(COARSE_DTYPE)) and live is not None and not bool(live[1])
    assert shipped.scope("Berlin is the capital of", memory).fact_id != ids[1]
    items = memory.items  # the forgotten row dropped
    assert len(items.owners) == 2 and torch.equal(items.coarse, items.embeddings.to(COARSE_DTYPE))
    copy = memory.copy()
    copy.write(["Madrid is the capital of Spain."])
    assert torch.equal(copy.items.coarse, copy.items.embeddings.to(COARSE_DTYPE)) and len(memory.items.owners) == 2
