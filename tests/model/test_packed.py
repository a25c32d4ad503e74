"""Prepacked linear layers (`larimar.model.packed`): the same products as `F.linear`, the same
parameters and state dicts, and a fallback wherever the packed kernel does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizer

from larimar.model import packed
from larimar.model.encoder import SentenceEncoder
from larimar.model.packed import PackedLinear, pack_linears

needs_onednn = pytest.mark.skipif(not packed.available(), reason="this torch has no oneDNN")


def linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(24, 40, bias=bias).requires_grad_(False)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (11, 24), (2, 7, 24), (0, 24)])
def test_packed_products_equal_f_linear_up_to_rounding(bias: bool, shape: tuple[int, ...]) -> None:
    plain = linear(bias)
    layer = PackedLinear.sharing(plain)
    x = torch.randn(*shape)
    with torch.no_grad():
        out = layer(x)
    assert layer._packed is not None or x.numel() == 0, "the packed kernel was not used"
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, F.linear(x, plain.weight, plain.bias), rtol=1e-5, atol=1e-5)


def test_sharing_keeps_the_same_parameters_and_state_dict() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2, bias=False)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert pack_linears(model) == 2
    assert [type(m) for m in (model[0], model[2][0])] == [PackedLinear, PackedLinear]
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == list(before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert pack_linears(model) == 0, "packed layers are not packed twice"


@needs_onednn
def test_a_weight_changed_in_place_is_packed_again() -> None:
    layer = PackedLinear.sharing(linear())
    x = torch.randn(3, 24)
    with torch.no_grad():
        first = layer(x)
        layer.weight.mul_(2.0)
        second = layer(x)
    torch.testing.assert_close(second, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)


@needs_onednn
def test_a_packed_layer_deep_copies_and_saves_without_its_packed_copy(tmp_path) -> None:
    layer = PackedLinear.sharing(linear())
    x = torch.randn(3, 24)
    with torch.no_grad():
        expected = layer(x)
    assert layer._packed is not None
    twin = copy.deepcopy(layer)
    torch.save(layer, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
    assert layer._packed is not None, "copying leaves the original's packed weight"
    for other in (twin, loaded):
        assert other._packed is None and other.weight is not layer.weight
        with torch.no_grad():
            torch.testing.assert_close(other(x), expected)


def test_gradients_and_other_dtypes_use_f_linear() -> None:
    layer = PackedLinear.sharing(nn.Linear(24, 40))
    x = torch.randn(3, 24)
    layer(x).square().sum().backward()  # a trainable weight: the autograd path
    assert layer.weight.grad is not None and layer._packed is None
    frozen = PackedLinear.sharing(linear())
    x64 = torch.randn(3, 24, dtype=torch.float64)
    with torch.no_grad():
        out = frozen.double()(x64)
    assert out.dtype == torch.float64 and frozen._packed is None
    torch.testing.assert_close(out, F.linear(x64, frozen.weight, frozen.bias))


@needs_onednn
def test_gradient_through_a_frozen_layer_reaches_its_input() -> None:
    layer = PackedLinear.sharing(linear())
    x = torch.randn(3, 24, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, -1))


def tiny_bert() -> tuple[BertModel, BertTokenizer]:
    words = "the cat sat on a mat dog ran in park".split()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(specials + words)})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return BertModel(config).eval(), tokenizer


def test_a_frozen_encoder_packs_its_body_and_keeps_its_embeddings() -> None:
    body, tokenizer = tiny_bert()
    reference = SentenceEncoder(copy.deepcopy(body), tokenizer, code_size=8, trainable=True).eval()
    frozen = SentenceEncoder(body, tokenizer, code_size=8, trainable=False)
    frozen.head.load_state_dict(reference.head.state_dict())
    linears = [m for m in frozen.encoder.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is PackedLinear for m in linears)
    assert frozen.encoder.pooler is None
    assert not any(type(m) is PackedLinear for m in reference.encoder.modules()), "a trainable body stays as it is"
    texts = ["the cat sat on a mat", "a dog ran in the park", "cat"]
    torch.testing.assert_close(frozen.encode(texts), reference.encode(texts), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(frozen.embed(texts), reference.embed(texts), rtol=1e-4, atol=1e-5)
