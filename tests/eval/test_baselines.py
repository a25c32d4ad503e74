"""FT-L, ROME and GRACE on the tiny random Llama: efficacy, exact reset, ROME's algebra, the
statistics cache, GRACE's codebook rules, and hyperparameter errors.

The tiny model's random head (std 0.02 on a width-32 normalised state) cannot move any logit
by more than about one nat, so the tests edit a copy whose head is scaled by 10. Its random
attention barely carries information between tokens, so the prompts end with the subject (ROME
writes at the subject's last token). Hyperparameters are set for this scale: its MLP outputs
are ~100x smaller than SmolLM2's, so ROME's norm clamp (relative to them) is loosened.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from larimar.eval.baselines import GRACEEditor, rank_one_update, stats
from larimar.eval.baselines.base import down_proj
from larimar.eval.datasets import EditCase
from larimar.eval.editors import available_editors, get_editor

CASE = EditCase(
    case_id="2", subject="Toko Yasuda", prompt="The instrument of Toko Yasuda",
    target_new="piano", target_true="guitar",
)
OTHER = EditCase(
    case_id="3", subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux",
    target_new="French", target_true="English",
)
FAR_PROMPT = "BBC One, by"
WORDS = ("the piano guitar player plays French mother tongue capital of France Paris BBC One "
         "John Lennon performs on and is by").split()


@pytest.fixture()
def model(tiny_model: Any) -> Any:
    edited = copy.deepcopy(tiny_model)
    with torch.no_grad():
        edited.lm_head.weight.mul_(10)
    return edited


def stats_sentences(n: int = 120) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(n)]


def logits(model: Any, tok: Any, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits


def make(name: str, model: Any, tok: Any, tmp_path: Path, **hp: Any) -> Any:
    if name == "ft":
        hp = {"norm_constraint": 0.1, "lr": 2e-2, "num_steps": 40, **hp}
    if name == "rome":
        hp = {"stats_sentences": stats_sentences(), "cache_dir": tmp_path, "v_lr": 0.1,
              "clamp_norm_factor": 1e3, "v_weight_decay": 1e-4, "v_num_steps": 40, **hp}
    if name == "grace":
        hp = {"value_lr": 0.5, "value_steps": 40, "epsilon_init": 0.5, **hp}
    return get_editor(name, model=model, tokenizer=tok, **hp)


def test_registry_names() -> None:
    assert {"ft", "rome", "grace"} <= set(available_editors())


@pytest.mark.parametrize("name", ["ft", "rome", "grace"])
def test_edit_succeeds_and_reset_is_exact(name, model, tiny_tokenizer, tmp_path) -> None:
    ed = make(name, model, tiny_tokenizer, tmp_path)
    before_logits = [logits(model, tiny_tokenizer, t) for t in (CASE.prompt, FAR_PROMPT)]
    new0, true0 = ed.score([CASE.prompt] * 2, [CASE.target_new, CASE.target_true])
    ed.edit([CASE])
    new1, true1 = ed.score([CASE.prompt] * 2, [CASE.target_new, CASE.target_true])
    assert new1 < new0 - 2.0, (new0, new1)  # the target's NLL drops strongly
    assert new1 < true1  # ES: P(new) > P(true)
    assert ed.generate([CASE.prompt], 3)[0].strip().startswith(CASE.target_new)
    assert ed.config()["name"] == name
    ed.reset()
    after_logits = [logits(model, tiny_tokenizer, t) for t in (CASE.prompt, FAR_PROMPT)]
    assert all(torch.equal(a, b) for a, b in zip(before_logits, after_logits))
    assert ed.score([CASE.prompt] * 2, [CASE.target_new, CASE.target_true]) == [new0, true0]


@pytest.mark.parametrize("name", ["ft", "rome"])
def test_weight_editors_forget_by_replay(name, model, tiny_tokenizer, tmp_path) -> None:
    """Forgetting one of two edits leaves exactly the weights of editing the other alone."""
    ed = make(name, model, tiny_tokenizer, tmp_path)
    weight = ed._weight
    ed.edit([OTHER])
    only_other = weight.detach().clone()
    ed.reset()
    ed.edit([CASE, OTHER])
    assert not torch.equal(weight, only_other)
    ed.forget(["no-such-case"])  # ignored
    ed.forget([CASE.case_id])
    assert torch.equal(weight, only_other)
    ed.forget([OTHER.case_id])
    assert torch.equal(weight, ed._original) and ed._log == []


@pytest.mark.parametrize("name", ["ft", "rome"])
def test_batch_edit_is_sequential(name, model, tiny_tokenizer, tmp_path) -> None:
    ed = make(name, model, tiny_tokenizer, tmp_path)
    base = ed.score([CASE.prompt, OTHER.prompt], [CASE.target_new, OTHER.target_new])
    ed.edit([CASE, OTHER])
    after = ed.score([CASE.prompt, OTHER.prompt], [CASE.target_new, OTHER.target_new])
    ed.reset()
    assert after[0] < base[0] - 1.0 and after[1] < base[1] - 1.0


def test_rank_one_update_algebra() -> None:
    gen = torch.Generator().manual_seed(0)
    h, i = 5, 8
    a = torch.randn(i, i, generator=gen, dtype=torch.float64)
    mom2 = a @ a.T + 0.1 * torch.eye(i, dtype=torch.float64)
    w, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((h, i), (i,), (h,)))
    new = rank_one_update(w, mom2, k, v)
    torch.testing.assert_close(new @ k, v)
    u = torch.linalg.solve(mom2, k)
    for _ in range(3):
        x = torch.randn(i, generator=gen, dtype=torch.float64)
        x = x - (u @ x) / (u @ k) * k  # x^T C^-1 k* = 0
        torch.testing.assert_close(new @ x, w @ x)
    assert torch.linalg.matrix_rank(new - w) == 1


def test_rome_edit_writes_key_to_value(model, tiny_tokenizer, tmp_path) -> None:
    ed = make("rome", model, tiny_tokenizer, tmp_path)
    weight = down_proj(model, ed.layer).weight
    w0 = weight.detach().clone()
    ed.edit([CASE])
    (upd,) = ed.updates
    w1 = weight.detach().clone()
    torch.testing.assert_close(w1 @ upd.key, upd.value)  # W' k* = v*
    u = torch.linalg.solve(ed.mom2, upd.key)
    x = torch.randn(w0.shape[1], dtype=w0.dtype, generator=torch.Generator().manual_seed(1))
    x = x - (u @ x) / (u @ upd.key) * upd.key
    torch.testing.assert_close(w1 @ x, w0 @ x)  # C-orthogonal directions untouched
    ed.reset()
    assert torch.equal(weight, w0) and not ed.updates


def test_rome_statistics_cached_once(model, tiny_tokenizer, tmp_path, monkeypatch) -> None:
    calls = []
    compute = stats.compute_second_moment

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(stats, "compute_second_moment", counting)
    first = make("rome", model, tiny_tokenizer, tmp_path)
    second = make("rome", model, tiny_tokenizer, tmp_path)
    assert len(calls) == 1
    assert len(list((tmp_path / stats.STATS_SUBDIR).glob("*.safetensors"))) == 1
    torch.testing.assert_close(first.mom2, second.mom2, rtol=0, atol=0)
    make("rome", model, tiny_tokenizer, tmp_path, stats_samples=60)  # other sample size
    assert len(calls) == 2


def test_rome_statistics_from_corpus_file(model, tiny_tokenizer, tmp_path) -> None:
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(f'{{"text": "{s}", "source": "wikipedia"}}\n'
                              for s in stats_sentences()))
    ed = get_editor("rome", model=model, tokenizer=tiny_tokenizer, stats_corpus=corpus,
                    cache_dir=tmp_path)
    direct = make("rome", model, tiny_tokenizer, tmp_path)
    torch.testing.assert_close(ed.mom2, direct.mom2)
    assert ed.config()["n_stats_sentences"] == 120


def test_grace_far_query_untouched_near_query_uses_value(model, tiny_tokenizer,
                                                         tmp_path) -> None:
    ed: GRACEEditor = make("grace", model, tiny_tokenizer, tmp_path)
    far0 = logits(model, tiny_tokenizer, FAR_PROMPT)
    near0 = logits(model, tiny_tokenizer, CASE.prompt)
    ed.edit([CASE])
    (entry,) = ed.codebook
    keys: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []

    def grab(_m: Any, args: Any, out: torch.Tensor) -> None:
        keys.append(args[0][0])
        outs.append(out[0])

    handle = ed.module.register_forward_hook(grab)
    try:
        far1 = logits(model, tiny_tokenizer, FAR_PROMPT)
        near1 = logits(model, tiny_tokenizer, CASE.prompt)
    finally:
        handle.remove()
    _, hit_far = ed.lookup(keys[0])
    assert not hit_far.any()
    assert torch.equal(far1, far0)  # no token within epsilon: exactly the unedited model
    _, hit_near = ed.lookup(keys[1])
    assert hit_near.tolist()[-1]  # the prompt's last token is within epsilon of its key
    # the hook returning the replaced output runs before ours, so outs[1] is the replaced one
    torch.testing.assert_close(outs[1][-1], entry.value)
    assert not torch.equal(near1, near0)
    ed.forget([CASE.case_id])
    assert not ed.codebook and not ed.module._forward_hooks
    assert torch.equal(logits(model, tiny_tokenizer, CASE.prompt), near0)


def test_grace_expand_split_and_forget(model, tiny_tokenizer, tmp_path) -> None:
    ed: GRACEEditor = make("grace", model, tiny_tokenizer, tmp_path, epsilon_init=1e6,
                           value_steps=2)
    same = EditCase("4", "Toko Yasuda", "Toko Yasuda plays the", "piano", "guitar")
    ed.edit([CASE, same])  # same label within reach: the first entry expands
    (entry,) = ed.codebook
    d_same = entry.covers["4"]
    assert entry.epsilon == max(1e6, d_same) and d_same > 0
    ed.edit([OTHER])  # other label within reach: split, both radii d / 2
    assert len(ed.codebook) == 2
    d = (ed.codebook[1].key - entry.key).norm().item()
    assert entry.epsilon == pytest.approx(d / 2) and ed.codebook[1].epsilon == pytest.approx(d / 2)
    ed.forget(["3"])
    assert [e.case_id for e in ed.codebook] == ["2"]
    ed.reset()
    assert not ed.codebook and not ed.module._forward_hooks


def test_grace_forget_shrinks_expanded_radius(model, tiny_tokenizer, tmp_path) -> None:
    ed: GRACEEditor = make("grace", model, tiny_tokenizer, tmp_path, value_steps=1)
    ed.edit([CASE])
    entry = ed.codebook[0]
    key, _ = ed._key_and_output("Toko Yasuda plays the")
    d = (key - entry.key).norm().item()
    ed.hparams.epsilon_init = d  # make the second key reachable, beyond the current radius
    ed.edit([EditCase("4", "Toko Yasuda", "Toko Yasuda plays the", "piano", "guitar")])
    assert len(ed.codebook) == 1 and entry.epsilon == pytest.approx(d)
    ed.forget(["4"])
    assert entry.epsilon == entry.base_epsilon == 0.5 and not entry.covers


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("ft", {"lr": -1.0}, "lr must be > 0"),
        ("ft", {"norm_constraint": 0}, "norm_constraint must be > 0"),
        ("ft", {"lrr": 1.0}, r"unknown ft hyperparameter\(s\) \['lrr'\]; known: layer"),
        ("ft", {"layer": 2}, "layer 2 is out of range; the model has 2 layers"),
        ("rome", {"kl_factor": -0.1}, "kl_factor must be >= 0"),
        ("rome", {"kl_prompt": "is a"}, "kl_prompt needs exactly one"),
        ("rome", {"context_prefixes": ()}, "context_prefixes is empty"),
        ("grace", {"epsilon_init": 0.0}, "epsilon_init must be > 0"),
        ("grace", {"module": "attn"}, "module must be 'mlp' or 'down_proj'"),
        ("grace", {"layer_fraction": 1.5}, r"layer_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_hyperparameters(name, hp, message, model, tiny_tokenizer, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        make(name, model, tiny_tokenizer, tmp_path, **hp)


def test_rome_needs_statistics_text(model, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="stats_sentences=.* or stats_corpus=PATH"):
        get_editor("rome", model=model, tokenizer=tiny_tokenizer)
