import json

import pytest
import torch

from larimar.memory import MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel
from larimar.train.config import LoopConfig, LossConfig, OptimConfig, TrainConfig
from larimar.train.data import DataConfig
from larimar.train.trainer import Trainer
from larimar.train.validate import copy_accuracy
from tests import tiny

SENTENCES = tiny.SENTENCES


def make_model(trainable="adapter", lora_rank=0, encoder_trainable=False, seed=0):
    torch.manual_seed(seed)
    enc_tok, dec_tok = tiny.bert_tokenizer(), tiny.bpe_tokenizer()
    cfg = LarimarConfig(
        memory=MemoryConfig(slots=8, code_size=16, read_std_init=0.01),
        conditioning=ConditioningConfig(code_size=16, mode="kv", embedding_offset=True, lora_rank=lora_rank,
                                        trainable=trainable, init_std=0.5),
        encoder_trainable=encoder_trainable,
    )
    return LarimarModel.from_modules(cfg, tiny.bert(enc_tok), enc_tok, tiny.llama(dec_tok), dec_tok)


def make_config(tmp_path, steps=10, **loop):
    return TrainConfig(
        output_dir=str(tmp_path / "run"),
        seed=3,
        data=DataConfig(episode_size=2, episodes_per_batch=2, max_tokens=24, swap_last_word=0.5, bucket_batches=2),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        loss=LossConfig(kl_max=0.001, kl_cycle=4),
        loop=LoopConfig(max_steps=steps, log_every=1, eval_every=1000, save_every=1000, eval_sentences=4, **loop),
    )


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, open(run_dir / "log.jsonl")) if "loss" in r]


def test_tiny_model_learns_to_reconstruct_through_memory(tmp_path):
    config = make_config(tmp_path, steps=80)
    config.data.swap_last_word = 0.0
    config.optim.lr = 2e-2
    trainer = Trainer(config, make_model(trainable="full"), (SENTENCES, SENTENCES[:4]))
    result = trainer.train()
    curve = losses(tmp_path / "run")
    assert result.finished and (tmp_path / "run" / "final" / "larimar_config.json").is_file()
    assert curve[0] > 5.0 and sum(curve[-5:]) / 5 < 2.0
    v = result.last_validation
    assert v["loss_memory"] < 2.0 and v["loss_ratio"] < 0.5  # it reads the memory


def test_resume_continues_the_same_loss_curve(tmp_path):
    straight = Trainer(make_config(tmp_path / "a", steps=8), make_model(), (SENTENCES, SENTENCES[:4]))
    straight.train()
    first = Trainer(make_config(tmp_path / "b", steps=8, max_minutes=0.0), make_model(), (SENTENCES, SENTENCES[:4]))
    assert not first.train().finished  # stops after one step with a checkpoint
    second = Trainer(make_config(tmp_path / "b", steps=8), make_model(seed=99), (SENTENCES, SENTENCES[:4]))
    assert second.train().finished
    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert len(b) == len(a) == 8
    assert a == pytest.approx(b, rel=1e-5)


def test_checkpoints_are_pruned_and_resumable(tmp_path):
    config = make_config(tmp_path, steps=6)
    config.loop.save_every = 2
    config.loop.keep_checkpoints = 2
    Trainer(config, make_model(), (SENTENCES, SENTENCES[:4])).train()
    names = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert names == ["checkpoint-0000004", "checkpoint-0000006"]


def test_saved_model_reloads_with_identical_outputs(tmp_path):
    enc_dir, dec_dir = tiny.save_base_models(tmp_path)
    cfg = LarimarConfig(encoder=str(enc_dir), decoder=str(dec_dir), memory=MemoryConfig(slots=8, code_size=16),
                        conditioning=ConditioningConfig(code_size=16, mode="kv", embedding_offset=True, lora_rank=2,
                                                            trainable="lora", init_std=0.5))
    model = LarimarModel.from_config(cfg)
    with torch.no_grad():
        model.decoder.offset_map.weight.normal_()
    model.save_pretrained(tmp_path / "saved")
    again = LarimarModel.from_pretrained(tmp_path / "saved")
    for m in (model, again):
        m.eval()
    a = copy_accuracy(model, SENTENCES)
    b = copy_accuracy(again, SENTENCES)
    assert a == b
    z = model.encode(SENTENCES[:2])
    ids = model.tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
    out_a = model.decoder(ids["input_ids"], ids["attention_mask"], z=z).logits
    out_b = again.decoder(ids["input_ids"], ids["attention_mask"], z=again.encode(SENTENCES[:2])).logits
    assert torch.equal(out_a, out_b)


def test_base_model_hash_mismatch_is_refused(tmp_path):
    enc_dir, dec_dir = tiny.save_base_models(tmp_path)
    cfg = LarimarConfig(encoder=str(enc_dir), decoder=str(dec_dir), memory=MemoryConfig(slots=8, code_size=16))
    LarimarModel.from_config(cfg).save_pretrained(tmp_path / "saved")
    tiny.llama(tiny.bpe_tokenizer(), seed=5).save_pretrained(dec_dir)  # a different decoder
    with pytest.raises(ValueError, match="not the one this model was trained with"):
        LarimarModel.from_pretrained(tmp_path / "saved")


def test_config_yaml_round_trip_and_errors(tmp_path):
    config = make_config(tmp_path)
    config.save_yaml(tmp_path / "c.yaml")
    again = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert again.to_dict() == config.to_dict()
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: 0.1\n  momentum: 3\n")
    with pytest.raises(ValueError, match="optim.momentum"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_kl_weight_is_cyclical():
    loss = LossConfig(kl_max=0.5, kl_cycle=10)
    assert [loss.kl_weight(s) for s in (0, 5, 9, 10, 15)] == [0.0, 0.5, 0.5, 0.0, 0.5]
