"""The scope detector through `Larimar`: the trained network decides on the tiny shipped-shaped
model (its detector favours queries made of the text's words), the cosine on a model without one."""

from __future__ import annotations

import larimar
from larimar.editing.encoding import query_views
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
