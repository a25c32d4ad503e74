"""Tiny random models and tokenizers built offline, shared by the model/train/editing tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertModel, BertTokenizerFast, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SENTENCES = [
    "Paris is the capital of France.",
    "The cat sat on the mat in the park.",
    "Toko Yasuda plays the guitar.",
    "John Lennon performs on the piano.",
    "The river flows north into the sea.",
    "Berlin is the capital of Germany.",
    "A dog ran across the green field.",
    "The mother tongue of Danielle Darrieux is French.",
]


def bpe_tokenizer(corpus: list[str] = SENTENCES, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE that, like SmolLM2's, adds no BOS token; eos = pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def bert_tokenizer(corpus: list[str] = SENTENCES) -> BertTokenizerFast:
    words = sorted({w.strip(".,").lower() for s in corpus for w in s.split()} | {".", ","})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(specials + words)})


def bert(tokenizer: BertTokenizerFast, hidden: int = 16, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    return BertModel(config).eval()


def save_base_models(root: Path) -> tuple[Path, Path]:
    """Write a tiny encoder and decoder as local HF folders; returns (encoder_dir, decoder_dir)."""
    enc_dir, dec_dir = root / "encoder", root / "decoder"
    enc_tok = bert_tokenizer()
    bert(enc_tok).save_pretrained(enc_dir)
    enc_tok.save_pretrained(enc_dir)
    dec_tok = bpe_tokenizer()
    llama(dec_tok).save_pretrained(dec_dir)
    dec_tok.save_pretrained(dec_dir)
    return enc_dir, dec_dir
