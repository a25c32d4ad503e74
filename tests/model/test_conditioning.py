"""Tests for larimar.model.conditioning on tiny random decoders (CPU, float32)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from larimar.model.conditioning import (
    ConditioningConfig,
    DecoderShape,
    MemoryConditionedDecoder,
)

VOCAB = 96
CODE = 12
EOS = 3
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _gemma3_config(**overrides: object) -> Gemma3TextConfig:
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        **COMMON,
    )
    return Gemma3TextConfig(**{**base, **overrides})


ARCHS = {
    "llama_gqa": lambda: LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **COMMON,
        )
    ),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **COMMON)
    ),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **COMMON,
        )
    ),
    "gemma3": lambda: Gemma3ForCausalLM(_gemma3_config()),
    "gemma3_eager": lambda: Gemma3ForCausalLM(_gemma3_config(attn_implementation="eager")),
}
MODES = {
    "kv": dict(mode="kv", slots=2, embedding_offset=True),
    "kv_shared": dict(mode="kv", share_key_value=True, embedding_offset=True),
    "prefix": dict(mode="prefix", prefix_length=3, embedding_offset=True),
    "output": dict(mode="output", embedding_offset=False, fusion_hidden=16),
}


def make_decoder(arch: str) -> PreTrainedModel:
    torch.manual_seed(0)
    return ARCHS[arch]().eval()


def condition(decoder: PreTrainedModel, **overrides: object) -> MemoryConditionedDecoder:
    """A conditioned decoder whose maps are large enough for z to visibly matter."""
    torch.manual_seed(1)
    config = ConditioningConfig(code_size=CODE, init_std=1.0, **overrides)
    model = MemoryConditionedDecoder(decoder, config)
    if model.offset_map is not None:
        nn.init.normal_(model.offset_map.weight, std=0.1)
    if model.fusion_out is not None:  # mode "output" starts as the identity; make z matter
        nn.init.normal_(model.memory_map.weight, std=0.5)
        nn.init.normal_(model.fusion_out.weight, std=0.5)
    return model


def batch(lengths: list[int], side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) and attention mask (B, T) of sequences padded with 0 to the longest."""
    generator = torch.Generator().manual_seed(2)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(width - length, width) if side == "left" else slice(0, length)
        ids[row, span] = torch.randint(4, VOCAB, (length,), generator=generator)
        mask[row, span] = 1
    return ids, mask


def code(batch_size: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch_size, CODE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(ARCHS))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> dict:
    return MODES[request.param]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="code_size"):
        ConditioningConfig(code_size=0)
    with pytest.raises(ValueError, match="mode"):
        ConditioningConfig(code_size=4, mode="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lora_rank"):
        ConditioningConfig(code_size=4, trainable="lora")
    with pytest.raises(ValueError, match="slots"):
        ConditioningConfig(code_size=4, slots=0)
    with pytest.raises(ValueError, match="embedding_offset: false"):
        ConditioningConfig(code_size=4, mode="output", embedding_offset=True)
    with pytest.raises(ValueError, match="fusion_hidden"):
        ConditioningConfig(code_size=4, mode="output", embedding_offset=False, fusion_hidden=0)


def test_output_mode_starts_as_the_base_model_and_caches_states(arch: str) -> None:
    decoder = make_decoder(arch)
    ids, mask = batch([7, 5], side="right")
    base = decoder(input_ids=ids, attention_mask=mask).logits
    model = MemoryConditionedDecoder(decoder, ConditioningConfig(code_size=CODE, **MODES["output"]))
    z = code(2)
    real = mask.bool()
    torch.testing.assert_close(model(ids, mask, z=z).logits[real], base[real], rtol=1e-5, atol=1e-5)
    # the final states are z-independent, so fusing cached states equals the full forward
    model = condition(decoder, **MODES["output"])
    hidden = model.final_hidden(ids, mask)  # (B, T, H)
    seen = model.copy_coverage(model.decoder.get_input_embeddings()(ids), z)  # (B, T, 1)
    torch.testing.assert_close(model.fused_logits(hidden, z, seen), model(ids, mask, z=z).logits)
    rows = model.fused_logits(hidden[:, 2], z, seen[:, 2])  # (B, H) rows, one z each
    torch.testing.assert_close(rows, model(ids, mask, z=z).logits[:, 2])


def test_copy_term_scores_tokens_by_cosine() -> None:
    config = ConditioningConfig(code_size=CODE, **MODES["output"], copy_seen_relative=False, copy_seen_threshold=0.6)
    model = MemoryConditionedDecoder(make_decoder("llama_gqa"), config)
    weight = model.decoder.get_output_embeddings().weight  # (V, H)
    target = 17
    with torch.no_grad():
        model.memory_map.weight.zero_()
        model.memory_map.weight[:, 0] = 50 * weight[target] / weight[target].norm()  # U z = 50 * unit(w_17)
    z = torch.zeros(1, CODE)
    z[0, 0] = 1.0
    hidden = torch.zeros(1, 32)
    logits = model.fused_logits(hidden, z)[0].detach()
    assert int(logits.argmax()) == target and float(logits[target]) == pytest.approx(50.0, rel=1e-4)
    # once the target is the current input token, the copy term switches itself off
    seen = model.copy_coverage(weight[[5, target, 9]][None], z).detach()  # (1, 3, 1): before, at, after
    assert float(seen[0, 0, 0]) < 0.9
    assert float(seen[0, 1, 0]) == pytest.approx(1.0) and float(seen[0, 2, 0]) == pytest.approx(1.0)
    after = model.fused_logits(hidden, z, seen[0, 2])[0].detach()
    assert float(after[target]) < 1e-3


@pytest.mark.parametrize("positions", [1, 3, 40])
def test_one_product_gives_the_head_logits_and_the_pointer(positions: int) -> None:
    config = ConditioningConfig(code_size=CODE, **MODES["output"])
    model = MemoryConditionedDecoder(make_decoder("llama_gqa"), config).double()
    gen = torch.Generator().manual_seed(positions)
    hidden, z = torch.randn(2, positions, 32, generator=gen, dtype=torch.float64), torch.randn(2, CODE, generator=gen,
                                                                                              dtype=torch.float64)
    features, logits, pointer = model.fuse(hidden, z)
    mixed = hidden + model.fusion_out(features)
    weight = model.decoder.get_output_embeddings().weight
    torch.testing.assert_close(logits, F.linear(mixed, weight))
    torch.testing.assert_close(pointer, model.pointer(z, torch.float64))
    given = model.fuse(hidden, z, pointer=torch.zeros(2, VOCAB, dtype=torch.float64))
    torch.testing.assert_close(given[1], logits)
    assert not given[2].any()  # a given pointer is passed through, not recomputed


def test_fusion_applies_the_code_half_apart_and_equals_the_joint_layer() -> None:
    config = ConditioningConfig(code_size=CODE, **MODES["output"])
    model = MemoryConditionedDecoder(make_decoder("llama_gqa"), config).double()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.fusion_in.weight.normal_(generator=gen)
        model.fusion_in.bias.normal_(generator=gen)
    hidden, z = torch.randn(2, 4, 32, generator=gen, dtype=torch.float64), torch.randn(2, CODE, generator=gen,
                                                                                      dtype=torch.float64)
    features, logits, pointer = model.fuse(hidden, z)
    joint = F.gelu(model.fusion_in(torch.cat([hidden, z[:, None].expand(-1, 4, -1)], -1)))
    torch.testing.assert_close(features, joint)
    direction, on_code = model.readout_terms(z, torch.float64)
    torch.testing.assert_close(direction, model.memory_map(z))
    given = model.fuse(hidden, z, terms=(direction, on_code))
    for a, b in zip(given, (features, logits, pointer)):
        torch.testing.assert_close(a, b)
    seen = torch.rand(2, 4, 1, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(model.copy_coverage(hidden, z, direction=direction), model.copy_coverage(hidden, z))
    with torch.no_grad():  # the split weights follow an in-place change of the layer
        model.fusion_in.weight.mul_(2.0)
    torch.testing.assert_close(model.fuse(hidden, z)[0], F.gelu(model.fusion_in(
        torch.cat([hidden, z[:, None].expand(-1, 4, -1)], -1))))
    assert model.fused_logits(hidden, z, seen).shape == (2, 4, VOCAB)


def test_relative_coverage_does_not_depend_on_how_clean_the_readout_is() -> None:
    config = ConditioningConfig(code_size=CODE, **MODES["output"], copy_seen_relative=True, copy_seen_threshold=0.9)
    model = MemoryConditionedDecoder(make_decoder("llama_gqa"), config)
    table = model.decoder.get_input_embeddings().weight  # (V, H)
    target, other = 17, 5
    with torch.no_grad():
        model.memory_map.weight.zero_()
        # a "mixed" readout: the target's direction plus a lot of another token's
        mixed = table[target] / table[target].norm() + 0.8 * table[other] / table[other].norm()
        model.memory_map.weight[:, 0] = mixed
    z = torch.zeros(1, CODE)
    z[0, 0] = 1.0
    best = F.cosine_similarity(table, mixed[None], dim=-1)
    top = int(best.argmax())
    seen = model.copy_coverage(table[[3, top]][None], z).detach()  # (1, 2, 1)
    absolute = float(best[top])
    assert absolute < 0.95  # an absolute threshold near 1 would miss the repeated word
    assert float(seen[0, 1, 0]) == pytest.approx(1.0, abs=1e-5)  # relative: the copied token is 1.0
    assert float(seen[0, 0, 0]) == pytest.approx(float(best[3]) / absolute, abs=1e-5)


def test_fused_logits_need_output_mode() -> None:
    model = condition(make_decoder("llama_gqa"), **MODES["kv"])
    with pytest.raises(ValueError, match="output"):
        model.fused_logits(torch.zeros(1, 32), code(1))


@pytest.mark.parametrize(
    ("arch_name", "expected"),
    [
        ("llama_gqa", DecoderShape(layers=2, kv_heads=2, head_dim=8, hidden=32)),
        ("gpt2", DecoderShape(layers=2, kv_heads=4, head_dim=8, hidden=32)),
        ("gemma3", DecoderShape(layers=2, kv_heads=2, head_dim=8, hidden=32)),
    ],
)
def test_decoder_shape(arch_name: str, expected: DecoderShape) -> None:
    assert DecoderShape.from_config(make_decoder(arch_name).config) == expected


def test_kv_map_width_follows_gqa_and_sharing() -> None:
    decoder = make_decoder("llama_gqa")
    separate = MemoryConditionedDecoder(decoder, ConditioningConfig(code_size=CODE, mode="kv", slots=3))
    shared_config = ConditioningConfig(code_size=CODE, mode="kv", slots=3, share_key_value=True)
    shared = MemoryConditionedDecoder(decoder, shared_config)
    assert separate.memory_map.weight.shape == (2 * 2 * 3 * 2 * 8, CODE)  # L * (k, v) * S * G * D
    assert shared.memory_map.weight.shape == (2 * 1 * 3 * 2 * 8, CODE)


def test_shapes_and_loss(arch: str, mode: dict) -> None:
    model = condition(make_decoder(arch), **mode)
    ids, mask = batch([7, 5])
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, mask, z=code(2), labels=labels)
    assert out.logits.shape == (2, 7, VOCAB)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_without_z_is_exactly_the_base_decoder(arch: str, mode: dict) -> None:
    decoder = make_decoder(arch)
    ids, mask = batch([7, 5])
    base_padded = decoder(input_ids=ids, attention_mask=mask).logits
    base_plain = decoder(input_ids=ids).logits
    model = condition(decoder, **mode)
    assert torch.equal(model(ids, mask).logits, base_padded)
    assert torch.equal(model(ids).logits, base_plain)


def test_z_changes_the_logits(arch: str, mode: dict) -> None:
    model = condition(make_decoder(arch), **mode)
    ids, mask = batch([7, 5])
    plain = model(ids, mask).logits
    first = model(ids, mask, z=code(2, seed=4)).logits
    second = model(ids, mask, z=code(2, seed=5)).logits
    assert not torch.allclose(first, plain)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("with_z", [False, True])
def test_logits_from_gives_the_last_positions_of_the_full_forward(arch: str, mode: dict, with_z: bool) -> None:
    model = condition(make_decoder(arch), **mode)
    ids, mask = batch([7, 5])
    z = code(2) if with_z else None
    full = model(ids, mask, z=z).logits
    tail = model(ids, mask, z=z, logits_from=4).logits
    assert tail.shape == (2, 3, VOCAB)
    torch.testing.assert_close(tail, full[:, 4:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="logits_from must be in"):
        model(ids, mask, z=z, logits_from=7)
    with pytest.raises(ValueError, match="leave logits_from at 0"):
        model(ids, mask, z=z, labels=ids, logits_from=1)


def test_gradients_reach_the_maps_and_z(arch: str, mode: dict) -> None:
    model = condition(make_decoder(arch), **mode)
    ids, mask = batch([6, 6])
    z = code(2).requires_grad_(True)
    model(ids, mask, z=z, labels=ids).loss.backward()
    assert model.memory_map.weight.grad.abs().sum() > 0
    if model.offset_map is not None:
        assert model.offset_map.weight.grad.abs().sum() > 0
    if model.fusion_in is not None:
        assert model.fusion_in.weight.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_tokens(arch: str, mode: dict, side: str) -> None:
    model = condition(make_decoder(arch), **mode)
    ids, mask = batch([5, 8], side)
    z = code(2)
    padded = model(ids, mask, z=z).logits[0][mask[0].bool()]  # (5, V)
    alone = model(ids[:1][mask[:1].bool()][None], z=z[:1]).logits[0]  # (5, V)
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "stop",
    [{}, {"eos_token_id": EOS, "pad_token_id": EOS}, {"eos_token_id": [EOS, 5]}],
    ids=["config_defaults", "eos_and_pad", "eos_list"],
)
def test_generate_without_z_matches_base_greedy(arch: str, stop: dict) -> None:
    decoder = make_decoder(arch)
    model = condition(decoder)
    ids, mask = batch([6, 4])
    ours = model.generate(ids, mask, max_new_tokens=7, **stop)
    theirs = decoder.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=7, **stop
    )
    assert torch.equal(ours, theirs)


def test_cached_decoding_matches_a_full_forward(arch: str, mode: dict) -> None:
    model = condition(make_decoder(arch), **mode)
    model.decoder.generation_config.eos_token_id = None  # decode all 6 tokens
    ids, mask = batch([6, 4])
    z = code(2)
    out = model.greedy(ids, mask, z=z, max_new_tokens=6)
    assert out.sequences.shape == (2, 12) and out.logits.shape == (2, 6, VOCAB)
    assert torch.equal(out.sequences[:, 6:], out.logits.argmax(-1))
    full_mask = torch.cat([mask, torch.ones(2, 5, dtype=mask.dtype)], 1)
    full = model(out.sequences[:, :-1], full_mask, z=z).logits[:, 5:]  # (B, 6, V)
    torch.testing.assert_close(out.logits, full, rtol=1e-4, atol=1e-5)


def test_generation_stops_at_eos() -> None:
    model = condition(make_decoder("llama_gqa"))
    ids, mask = batch([5])
    z = code(1)
    first = int(model.greedy(ids, mask, z=z, max_new_tokens=1).sequences[0, -1])
    stopped = model.generate(ids, mask, z=z, max_new_tokens=5, eos_token_id=first)
    assert stopped.shape == (1, 6)


@pytest.mark.parametrize("mode_name", ["kv", "prefix", "output"])
def test_memory_stays_visible_beyond_the_sliding_window(mode_name: str) -> None:
    torch.manual_seed(0)
    decoder = Gemma3ForCausalLM(_gemma3_config(layer_types=["sliding_attention"] * 2)).eval()
    model = condition(decoder, **{"embedding_offset": False, **MODES[mode_name]})
    ids, mask = batch([10])
    first = model(ids, mask, z=code(1, seed=4)).logits[0, -1]
    second = model(ids, mask, z=code(1, seed=5)).logits[0, -1]
    assert not torch.allclose(first, second)


def test_lora_is_active_only_with_z(arch: str) -> None:
    decoder = make_decoder(arch)
    ids, mask = batch([7, 5])
    base = decoder(input_ids=ids, attention_mask=mask).logits
    base_tokens = decoder.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=4
    )
    model = condition(decoder, lora_rank=4, trainable="lora")
    z = code(2)
    without_lora = model(ids, mask, z=z).logits
    for name, param in model.decoder.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.5)
    assert torch.equal(model(ids, mask).logits, base)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=4), base_tokens)
    assert not torch.allclose(model(ids, mask, z=z).logits, without_lora)


def test_lora_targets_are_inferred(arch: str) -> None:
    model = condition(make_decoder(arch), lora_rank=2)
    names = [name for name, _ in model.decoder.named_parameters() if "lora_A" in name]
    lora_modules = {name.rsplit(".lora_A", 1)[0] for name in names}
    assert len(lora_modules) == (4 if arch == "gpt2" else 8)  # 2 layers x attention projections


def test_trainable_parts() -> None:
    model = condition(make_decoder("llama_gqa"), **MODES["kv"], lora_rank=2)
    maps = {model.memory_map.weight, model.offset_map.weight}
    model.set_trainable("adapter")
    assert set(model.trainable_parameters()) == maps
    model.set_trainable("lora")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder_names = names - {"memory_map.weight", "offset_map.weight"}
    assert decoder_names and all("lora_" in name for name in decoder_names)
    model.set_trainable("full")
    assert len(model.trainable_parameters()) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="lora_rank"):
        condition(make_decoder("llama_gqa"), **MODES["kv"]).set_trainable("lora")


@pytest.mark.parametrize("arch_name", ["gpt2", "gemma3"])
def test_tied_embeddings_stay_tied(arch_name: str) -> None:
    decoder = make_decoder(arch_name)
    model = condition(decoder, trainable="full", lora_rank=2)
    assert decoder.get_input_embeddings().weight is decoder.get_output_embeddings().weight
    params = model.trainable_parameters()
    assert len(params) == len({id(p) for p in params})


def test_z_errors_name_the_expected_size() -> None:
    model = condition(make_decoder("llama_gqa"))
    ids, mask = batch([5, 5])
    with pytest.raises(ValueError, match=f"code size {CODE}"):
        model(ids, mask, z=torch.randn(2, CODE + 1))
    with pytest.raises(ValueError, match=f"code size {CODE}"):
        model(ids, mask, z=torch.randn(CODE))
    with pytest.raises(ValueError, match="batch size 3"):
        model(ids, mask, z=torch.randn(3, CODE))
    with pytest.raises(ValueError, match="batch size 3"):
        model.generate(ids, mask, z=torch.randn(3, CODE))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, mask, max_new_tokens=0)


def test_maps_follow_the_decoder_dtype() -> None:
    decoder = make_decoder("llama_gqa").to(torch.bfloat16)
    model = condition(decoder)
    ids, mask = batch([5, 3])
    assert model.memory_map.weight.dtype == torch.bfloat16
    assert model(ids, mask, z=code(2)).logits.dtype == torch.bfloat16  # float32 z is cast
