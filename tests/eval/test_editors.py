"""Editor registry, the dummy editor, and the none / icl editors on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from larimar.eval.datasets import EditCase, LocalityPrompt
from larimar.eval.editors import (
    DummyEditor,
    Editor,
    InContextEditor,
    available_editors,
    get_editor,
    register_editor,
)
from larimar.eval.lm import continuation_nll, generate_greedy

CASE = EditCase(
    case_id="2", subject="Toko Yasuda", prompt="Toko Yasuda, the", target_new="piano",
    target_true="guitar", paraphrase_prompts=["Toko Yasuda plays the"],
    neighborhood_prompts=[LocalityPrompt("John Lennon performs on the", "guitar")],
)


def test_registry() -> None:
    assert {"dummy", "none", "icl"} <= set(available_editors())
    assert isinstance(get_editor("dummy"), DummyEditor)
    with pytest.raises(ValueError, match="unknown editor 'no-such-editor'; available: .*dummy"):
        get_editor("no-such-editor")
    with pytest.raises(ValueError, match="already registered"):
        register_editor("dummy")(type("Other", (DummyEditor,), {}))


def test_forget_default_raises() -> None:
    class Plain(DummyEditor):
        name = "plain"
        forget = Editor.forget

    with pytest.raises(NotImplementedError, match="'plain' cannot forget"):
        Plain().forget(["2"])


def test_dummy_editor_learns_and_forgets() -> None:
    ed = DummyEditor()
    before = ed.score([CASE.prompt, CASE.prompt], ["piano", "guitar"])
    assert before == ed.score([CASE.prompt, CASE.prompt], ["piano", "guitar"])  # deterministic
    assert all(1.0 <= s < 5.0 for s in before)
    ed.edit([CASE])
    after = ed.score([CASE.prompt, "John Lennon performs on the"], ["piano", "piano"])
    assert after[0] < before[1]
    assert after[1] == DummyEditor().score(["John Lennon performs on the"], ["piano"])[0]
    assert ed.generate([CASE.prompt, "John Lennon"], 5) == [" piano.", " unknown."]
    ed.forget(["2"])
    assert ed.score([CASE.prompt], ["piano"]) == before[:1]


def test_none_editor_matches_helpers(tiny_model, tiny_tokenizer) -> None:
    ed = get_editor("none", model=tiny_model, tokenizer=tiny_tokenizer)
    ed.edit([CASE])  # ignored
    want = continuation_nll(tiny_model, tiny_tokenizer, [CASE.prompt], ["piano"])
    assert ed.score([CASE.prompt], ["piano"]) == want
    assert ed.generate([CASE.prompt], 3) == generate_greedy(tiny_model, tiny_tokenizer, [CASE.prompt], 3)


def test_none_editor_uses_loader(tiny_model, tiny_tokenizer) -> None:
    ed = get_editor("none", load_decoder=lambda: (tiny_model, tiny_tokenizer))
    assert ed.model is tiny_model
    with pytest.raises(ValueError, match="pass both model and tokenizer"):
        get_editor("none", model=tiny_model)


def test_icl_prepends_facts(tiny_model, tiny_tokenizer) -> None:
    ed = get_editor("icl", model=tiny_model, tokenizer=tiny_tokenizer)
    q = "John Lennon performs on the"
    plain = ed.score([q], ["guitar"])
    ed.edit([CASE])
    ctx = "New fact: Toko Yasuda, the piano\n"
    assert ed.score([q], ["guitar"]) == continuation_nll(tiny_model, tiny_tokenizer, [ctx + q], ["guitar"])
    assert ed.generate([q], 3) == generate_greedy(tiny_model, tiny_tokenizer, [ctx + q], 3)
    ed.forget(["2"])
    assert ed.score([q], ["guitar"]) == plain
    ed.edit([CASE])
    ed.reset()
    assert ed.score([q], ["guitar"]) == plain


def fake_embed(texts) -> torch.Tensor:
    """Bag of two features: mentions Toko Yasuda, mentions anything else."""
    rows = [[1.0, 0.0] if "Toko Yasuda" in t else [0.0, 1.0] for t in texts]
    return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_icl_scope_detector(tiny_model, tiny_tokenizer) -> None:
    ed = InContextEditor(model=tiny_model, tokenizer=tiny_tokenizer, scope_threshold=0.5, embed=fake_embed)
    ed.edit([CASE])
    assert ed.in_scope(["Toko Yasuda plays the", "John Lennon performs on the"]) == [True, False]
    base = get_editor("none", model=tiny_model, tokenizer=tiny_tokenizer)
    q = "John Lennon performs on the"
    assert ed.score([q], ["guitar"]) == base.score([q], ["guitar"])
    with pytest.raises(ValueError, match="scope_threshold needs an embed"):
        InContextEditor(model=tiny_model, tokenizer=tiny_tokenizer, scope_threshold=0.5)


def _case(i: int, subject: str) -> EditCase:
    return EditCase(case_id=str(i), subject=subject, prompt=f"{subject} plays the", target_new=f"t{i}",
                    target_true=None)


def test_icl_keeps_the_nearest_facts_when_they_do_not_fit(tiny_model, tiny_tokenizer) -> None:
    cases = [_case(i, s) for i, s in enumerate(["Anna", "Toko Yasuda", "Bob", "Carl"])]

    def embed(texts) -> torch.Tensor:  # Toko Yasuda along one axis, each other subject its own
        rows = [[1.0 if "Toko" in t else 0.0, 1.0 if "Anna" in t else 0.0, 1.0 if "Bob" in t else 0.0,
                 1.0 if "Carl" in t else 0.0, 0.1] for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)

    ed = InContextEditor(model=tiny_model, tokenizer=tiny_tokenizer, embed=embed, max_facts=2)
    ed.edit(cases)
    [ctx] = ed._context(["Toko Yasuda plays the"])
    lines = ctx.splitlines()
    assert len(lines) == 2 and lines[-1] == "New fact: Toko Yasuda plays the t1"  # the nearest last
    # without an embedder: the latest facts; a rewritten case counts as the latest
    latest = InContextEditor(model=tiny_model, tokenizer=tiny_tokenizer, max_facts=2)
    latest.edit(cases)
    latest.edit([cases[0]])
    assert latest._context(["x"])[0] == "New fact: Carl plays the t3\nNew fact: Anna plays the t0\n"
    # everything fits: all facts in edit order, and the embedder is never called
    everything = InContextEditor(model=tiny_model, tokenizer=tiny_tokenizer, embed=lambda t: 1 / 0, max_facts=None)
    everything.edit(cases)
    assert everything._context(["x"])[0].count("New fact:") == 4
    with pytest.raises(ValueError, match="max_facts"):
        InContextEditor(model=tiny_model, tokenizer=tiny_tokenizer, max_facts=0)


def test_one_registry_builds_every_editor_from_run_options() -> None:
    from larimar.eval.editors import EDITORS, EditorOptions, build_editor

    assert set(available_editors()) == set(EDITORS) >= {"dummy", "none", "icl", "ft", "rome", "grace", "larimar"}
    assert all(cls.name == name for name, cls in EDITORS.items())
    assert isinstance(build_editor("dummy", EditorOptions()), DummyEditor)
    with pytest.raises(ValueError, match="does not take options"):
        build_editor("dummy", EditorOptions(scope_threshold=0.5))
    with pytest.raises(ValueError, match="rome needs a sentence corpus"):
        build_editor("rome", EditorOptions())
