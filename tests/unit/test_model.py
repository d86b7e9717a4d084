from __future__ import annotations

import torch

from memtrain.models.gpt.model import GPT, apply_rotary, rotary_tables


def test_causal_outputs_do_not_see_the_future():
    torch.manual_seed(0)
    model = GPT(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2)
    tokens = torch.randint(0, 50, (2, 12))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 50
    a, b = model(tokens), model(changed)
    # fp32 on CPU: identical inputs up to position 7 give bit-identical logits there
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_rotary_preserves_norm_and_encodes_relative_position():
    cos, sin = rotary_tables(16, 8, 10000.0, torch.device("cpu"))
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rot = lambda x, pos: apply_rotary(x.expand(1, 16, 1, 8), cos, sin)[0, pos, 0]  # noqa: E731
    # a rotation keeps the norm; the score depends only on the offset between positions
    # (fp32 round-off of a few ulps on O(1) values)
    torch.testing.assert_close(rot(q, 5).norm(), q.norm(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rot(q, 3) @ rot(k, 1), rot(q, 9) @ rot(k, 7), rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_matches_repeated_kv_heads():
    """K < H shares each k/v head across H/K query heads: same as repeating the k/v heads."""
    torch.manual_seed(0)
    gqa = GPT(vocab_size=40, dim=32, n_layers=1, n_heads=4, n_kv_heads=2)
    mha = GPT(vocab_size=40, dim=32, n_layers=1, n_heads=4, n_kv_heads=4)
    sd = gqa.state_dict()
    for name in ("wk", "wv"):
        w = sd[f"layers.0.attention.{name}.weight"].view(2, 8, 32)  # [K, Dh, D]
        sd[f"layers.0.attention.{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(sd)
    tokens = torch.randint(0, 40, (2, 10))
    # fp32: the same products summed in the same order, up to SDPA kernel differences
    torch.testing.assert_close(gqa(tokens), mha(tokens), rtol=1e-5, atol=1e-5)
