"""Cached-state training for late fusion (conditioning mode "output"), on tiny random models."""

import json

import pytest
import torch

from larimar.memory import EpisodicMemory, MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel
from larimar.train.config import FusionConfig, LoopConfig, OptimConfig, TrainConfig
from larimar.train.data import DataConfig
from larimar.train.cache import answer_start, build_cache, fusion_examples
from larimar.train.fusion import FusionTrainer, projection_readout
from tests import tiny

SENTENCES = tiny.SENTENCES
CODE = 16


def make_model(lexical_tokens=4, seed=0):
    torch.manual_seed(seed)
    enc_tok, dec_tok = tiny.bert_tokenizer(), tiny.bpe_tokenizer()
    cfg = LarimarConfig(
        memory=MemoryConfig(slots=12, code_size=CODE),
        conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False, fusion_hidden=32),
        lexical_tokens=lexical_tokens,
    )
    model = LarimarModel.from_modules(cfg, tiny.bert(enc_tok), enc_tok, tiny.llama(dec_tok), dec_tok)
    if lexical_tokens:
        model.init_copy_path(logit_scale=3.0)  # tiny random embeddings: a gentle start
    return model


def make_config(tmp_path, steps=10, **loop):
    return TrainConfig(
        output_dir=str(tmp_path / "run"),
        seed=5,
        model=LarimarConfig(
            memory=MemoryConfig(slots=12, code_size=CODE),
            conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False),
        ),
        data=DataConfig(max_tokens=24, swap_last_word=0.5),
        optim=OptimConfig(lr=1e-2, warmup_steps=2, schedule="constant"),
        loop=LoopConfig(max_steps=steps, log_every=1, eval_every=1000, save_every=1000, eval_sentences=8, **loop),
        fusion=FusionConfig(batch_sentences=8, episode_sizes=(1, 2, 4), extra_positions=1, shard_size=5),
    )


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, open(run_dir / "log.jsonl")) if "loss" in r]


@pytest.mark.parametrize("seed", range(4))
def test_projection_readout_equals_write_then_read(seed):
    gen = torch.Generator().manual_seed(seed)
    e = 1 + seed
    memory = EpisodicMemory(MemoryConfig(slots=24, code_size=10)).double()
    with torch.no_grad():
        memory.prior.copy_(torch.randn(24, 10, generator=gen, dtype=torch.float64))
    z = torch.randn(3, e, 10, generator=gen, dtype=torch.float64)
    q = torch.randn(3, 5, 10, generator=gen, dtype=torch.float64)
    expected = memory.read(memory.write(z), q)
    torch.testing.assert_close(projection_readout(z, q), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(projection_readout(z, z), z, rtol=1e-9, atol=1e-9)  # written items come back


def test_examples_swap_a_share_and_query_with_the_prefix():
    pairs = fusion_examples(SENTENCES * 10, swap=0.5, seed=0)
    originals = set(SENTENCES)
    swapped = [w for w, _ in pairs if w not in originals]
    assert 0.3 < len(swapped) / len(pairs) < 0.7
    for written, query in pairs:
        assert written.startswith(query + " ") and len(query) < len(written)
    assert fusion_examples(SENTENCES, 0.5, 1) == fusion_examples(SENTENCES, 0.5, 1)


def test_answer_start_finds_the_last_word():
    tok = tiny.bpe_tokenizer()
    ids = tok("Paris is the capital of France.<eos>", add_special_tokens=False)["input_ids"]
    start = answer_start(tok, "Paris is the capital of", ids)
    assert tok.decode(ids[start:]).startswith(" France")


def test_cache_holds_the_models_states_and_is_reused(tmp_path):
    model = make_model()
    paths = build_cache(model, SENTENCES, tmp_path / "cache", shard_size=3, seed=0, max_tokens=24)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    data = torch.load(paths[0], weights_only=False)
    ids = data["ids"][0]
    full = model.decoder.final_hidden(ids[None])[0]
    torch.testing.assert_close(data["hidden"][0].float(), full, rtol=1e-2, atol=1e-2)  # stored in fp16
    stamp = paths[0].stat().st_mtime_ns
    build_cache(model, SENTENCES, tmp_path / "cache", shard_size=3, seed=0, max_tokens=24)
    assert paths[0].stat().st_mtime_ns == stamp  # complete shards are not recomputed


def _recall(model, sentences):
    """Share of sentences whose last word's first token is top-1 after writing the sentence and
    reading with its prefix (the full, uncached model path)."""
    from larimar.train.data import split_last_word
    from larimar.train.validate import _first_new_token

    hits = 0
    with torch.no_grad():
        for s in sentences:
            head, word, _ = split_last_word(s)
            z_w, z_q = model.encode([s]), model.encode([head])
            z = model.memory.read(model.memory.write(z_w[None]), z_q[None])[0]
            prefix, target = _first_new_token(model.tokenizer, head, word)
            logits = model.decoder(torch.tensor([prefix]), z=z).logits[0, -1]
            hits += int(logits.argmax()) == target
    return hits / len(sentences)


def test_tiny_model_learns_to_recall_through_memory(tmp_path):
    config = make_config(tmp_path, steps=150)
    config.data.swap_last_word = 0.0
    model = make_model()
    before = _recall(model, SENTENCES)
    result = FusionTrainer(config, model, (SENTENCES * 4, SENTENCES)).train()
    curve = losses(tmp_path / "run")
    assert result.finished and (tmp_path / "run" / "final" / "larimar_config.json").is_file()
    assert set(result.last_validation) == {"copy_acc", "copy_acc_e4", "copy_acc_plain", "copy_n"}
    assert sum(curve[-10:]) / 10 < 0.5 * sum(curve[:5]) / 5
    # what was trained on cached states works through the full (uncached) model path
    assert _recall(model, SENTENCES) >= max(0.75, before + 0.25)


def test_resume_continues_the_same_loss_curve(tmp_path):
    data = (SENTENCES * 2, SENTENCES[:4])
    FusionTrainer(make_config(tmp_path / "a", steps=6), make_model(), data).train()
    first = FusionTrainer(make_config(tmp_path / "b", steps=6, max_minutes=0.0), make_model(), data)
    assert not first.train().finished
    second = FusionTrainer(make_config(tmp_path / "b", steps=6), make_model(seed=9), data)
    assert second.train().finished
    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-5)


def test_other_configurations_are_refused(tmp_path):
    config = make_config(tmp_path)
    config.model.conditioning = ConditioningConfig(code_size=CODE, mode="kv", embedding_offset=True)
    assert not config.uses_cached_states
    with pytest.raises(ValueError, match="output"):
        FusionTrainer(config, make_model(), (SENTENCES, SENTENCES))
    with pytest.raises(ValueError, match="divide"):
        FusionConfig(batch_sentences=8, episode_sizes=(3,))
    with pytest.raises(ValueError, match="batch_sentences"):
        small = make_config(tmp_path)
        small.fusion.batch_sentences = 64
        small.fusion.episode_sizes = (1,)
        FusionTrainer(small, make_model(), (SENTENCES, SENTENCES)).prepare()


def test_lexical_channel_reads_the_last_tokens_right_aligned():
    model = make_model(lexical_tokens=6)
    enc, tok = model.encoder, model.tokenizer
    ids, mask = enc.lexical(["Paris is the capital of France.", "Paris"])
    france = tok("Paris is the capital of France", add_special_tokens=False)["input_ids"][-6:]
    assert ids[0].tolist() == france and mask[0].tolist() == [1] * 6
    paris = tok("Paris", add_special_tokens=False)["input_ids"]
    assert ids[1, -len(paris):].tolist() == paris and mask[1].sum() == len(paris) and mask[1, 0] == 0
    z = enc.encode(["Paris is the capital of France.", "Paris is the capital of Germany."])
    assert not torch.allclose(z[0], z[1])
    with pytest.raises(ValueError, match="lexical_ids"):
        enc.latent(torch.zeros(1, enc.hidden_size))


def test_lexical_channel_needs_a_lexicon():
    from larimar.model.encoder import SentenceEncoder

    tok = tiny.bert_tokenizer()
    with pytest.raises(ValueError, match="lexicon"):
        SentenceEncoder(tiny.bert(tok), tok, code_size=8, lexical_tokens=4)
    with pytest.raises(ValueError, match="lexical_tokens"):
        SentenceEncoder(tiny.bert(tok), tok, code_size=8, lexical_tokens=-1)


def test_lexical_model_saves_only_its_trained_parts(tmp_path):
    enc_dir, dec_dir = tiny.save_base_models(tmp_path)
    cfg = LarimarConfig(encoder=str(enc_dir), decoder=str(dec_dir), memory=MemoryConfig(slots=12, code_size=CODE),
                        conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False,
                                                        fusion_hidden=8),
                        lexical_tokens=3)
    model = LarimarModel.from_config(cfg)
    with torch.no_grad():
        model.decoder.memory_map.weight.normal_()
    saved = model.trained_state_dict()
    assert "encoder.lexical_head.weight" in saved
    assert not any("embed_tokens" in name for name in saved)  # the shared lexicon is the decoder's
    model.save_pretrained(tmp_path / "m")
    again = LarimarModel.from_pretrained(tmp_path / "m")
    texts = ["Paris is the capital of France."]
    torch.testing.assert_close(again.encode(texts), model.encode(texts))
    ids = model.tokenizer(texts, return_tensors="pt")["input_ids"]
    z = model.encode(texts)
    torch.testing.assert_close(again.decoder(ids, z=z).logits, model.decoder(ids, z=z).logits)


def test_frozen_parameters_keep_their_initial_values(tmp_path):
    config = make_config(tmp_path, steps=5)
    config.fusion.frozen = ("decoder.memory_map", "encoder.lexical_head")
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    FusionTrainer(config, model, (SENTENCES * 2, SENTENCES[:4])).train()
    after = dict(model.named_parameters())
    assert torch.equal(after["decoder.memory_map.weight"], before["decoder.memory_map.weight"])
    assert torch.equal(after["encoder.lexical_head.weight"], before["encoder.lexical_head.weight"])
    assert not torch.equal(after["decoder.copy_gate.weight"], before["decoder.copy_gate.weight"])
    config.fusion.frozen = ("decoder.no_such_map",)
    with pytest.raises(ValueError, match="no_such_map"):
        FusionTrainer(config, make_model(), (SENTENCES, SENTENCES))


def test_export_turns_a_checkpoint_into_a_loadable_model(tmp_path, capsys):
    import yaml

    from larimar.cli import main

    enc_dir, dec_dir = tiny.save_base_models(tmp_path)
    config = make_config(tmp_path, steps=2)
    config.model.encoder, config.model.decoder = str(enc_dir), str(dec_dir)
    config.loop.save_every = 2
    FusionTrainer(config, sentences=(SENTENCES * 2, SENTENCES[:4])).train()
    cfg_path = tmp_path / "run" / "config.yaml"
    assert yaml.safe_load(cfg_path.read_text())["fusion"]["batch_sentences"] == 8
    out = tmp_path / "exported"
    assert main(["export", "--config", str(cfg_path), "--checkpoint", str(tmp_path / "run" / "checkpoint-0000002"),
                 "--out", str(out), "--readout-scale", "2.0"]) == 0
    model = LarimarModel.from_pretrained(out)
    assert model.config.readout_scale == 2.0
    with pytest.raises(SystemExit, match="checkpoint-STEP"):
        main(["export", "--config", str(cfg_path), "--checkpoint", str(tmp_path), "--out", str(out)])


def test_export_can_add_a_sequence_channel(tmp_path):
    from larimar.cli import main

    enc_dir, dec_dir = tiny.save_base_models(tmp_path)
    config = make_config(tmp_path, steps=2)
    config.model.encoder, config.model.decoder = str(enc_dir), str(dec_dir)
    config.loop.save_every = 2
    trainer = FusionTrainer(config, sentences=(SENTENCES * 2, SENTENCES[:4]))
    trainer.train()
    ckpt, cfg_path = tmp_path / "run" / "checkpoint-0000002", tmp_path / "run" / "config.yaml"
    out = tmp_path / "seq"
    assert main(["export", "--config", str(cfg_path), "--checkpoint", str(ckpt), "--out", str(out),
                 "--sequence-size", "64"]) == 0
    model = LarimarModel.from_pretrained(out)
    assert model.config.memory.code_size == CODE + 64 and model.config.memory.key_size == CODE
    # the trained weights are the run's; the prior's new value columns start at zero
    prior = model.memory.prior.detach()
    torch.testing.assert_close(prior[:, :CODE], trainer.model.memory.prior.detach())
    assert prior[:, CODE:].abs().sum() == 0
    z = model.encode(["the cat sat on the mat."])
    assert z.shape == (1, CODE + 64)
    # the learned part of the latent is the run's own
    torch.testing.assert_close(z[:, :CODE], trainer.model.encode(["the cat sat on the mat."]))
    with pytest.raises(SystemExit, match="sequence-size"):
        main(["export", "--config", str(cfg_path), "--checkpoint", str(ckpt), "--out", str(out), "--sequence-size", "-1"])
    with pytest.raises(ValueError, match="already has a sequence channel"):
        model.config.with_sequence_channel(8)
    # weights of another shape are refused with a clear message
    LarimarModel.from_config(config.model.with_sequence_channel(32)).load_trained(ckpt / "trained.safetensors")
    data = config.model.to_dict()
    data["conditioning"]["fusion_hidden"] = 16
    with pytest.raises(ValueError, match="another configuration"):
        LarimarModel.from_config(LarimarConfig.from_dict(data)).load_trained(ckpt / "trained.safetensors")
