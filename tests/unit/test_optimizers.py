"""Each optimizer: one step on a tiny problem equals its paper's update written out here; its
state bytes on the tiny GPT equal `memtrain estimate`'s; it reduces a small regression's loss.
MeZO: the trainer's step equals SPSA with the regenerated z, no .grad is ever allocated.

Tolerances: float32 throughout; the reference recomputes the same formula with other op orders
(sums, rsqrt vs sqrt-then-divide), so rtol 1e-5 / atol 1e-7 (a few ulps of O(1) values) unless said."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from memtrain.config.errors import ConfigError
from memtrain.config.loader import load_config
from memtrain.engine.zeroth_order import step_seed
from memtrain.memory import optimizer_memory
from memtrain.memory.estimator import estimate, flat, param_units
from memtrain.models import get_spec
from memtrain.optim.adam_mini import AdamMini
from memtrain.optim.adamw_bf16 import AdamWBF16, stochastic_round_bf16
from memtrain.optim.builder import build_optimizer
from memtrain.optim.came import CAME
from memtrain.optim.lion import Lion
from memtrain.optim.mezo import MeZO
from memtrain.optim.sm3 import SM3
from tests.conftest import TINY

RTOL, ATOL = 1e-5, 1e-7


def one_step(opt_cls, theta, grads, steps=1, **kw):
    """Apply `steps` steps with the given gradients (a list) to a copy of theta."""
    p = nn.Parameter(theta.clone())
    opt = opt_cls([p], **kw)
    for g in grads[:steps]:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 5, generator=gen)
    grads = [torch.randn(6, 5, generator=gen) for _ in range(2)]
    return theta, grads


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-parameter"])
def test_lion_matches_algorithm_2(problem, foreach):
    theta, (g1, g2) = problem
    lr, b1, b2, wd = 1e-2, 0.9, 0.99, 0.1
    got, _ = one_step(Lion, theta, [g1, g2], steps=2, lr=lr, betas=(b1, b2), weight_decay=wd, foreach=foreach)
    m, t = torch.zeros_like(theta), theta.clone()
    for g in (g1, g2):
        c = b1 * m + (1 - b1) * g
        t = t - lr * (torch.sign(c) + wd * t)
        m = b2 * m + (1 - b2) * g
    torch.testing.assert_close(got, t, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-parameter"])
def test_sm3_matches_sm3_ii(problem, foreach):
    theta, (g1, g2) = problem
    lr = 0.1
    got, opt = one_step(SM3, theta, [g1, g2], steps=2, lr=lr, foreach=foreach)
    t, mu_r, mu_c = theta.clone(), torch.zeros(6), torch.zeros(5)
    for g in (g1, g2):
        nu = torch.empty_like(g)
        for i in range(6):
            for j in range(5):
                nu[i, j] = min(mu_r[i], mu_c[j]) + g[i, j] ** 2
        t = t - lr * g / nu.sqrt()
        mu_r = torch.tensor([max(nu[i, j] for j in range(5)) for i in range(6)])
        mu_c = torch.tensor([max(nu[i, j] for i in range(6)) for j in range(5)])
    torch.testing.assert_close(got, t, rtol=RTOL, atol=ATOL)
    acc = opt.state[next(iter(opt.state))]["accumulators"]
    assert [a.shape for a in acc] == [(6, 1), (1, 5)]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-parameter"])
def test_came_matches_algorithm_1(problem, foreach):
    theta, (g1, g2) = problem
    lr, (b1, b2, b3), (e1, e2), d = 1e-2, (0.9, 0.999, 0.9999), (1e-30, 1e-16), 1.0
    got, _ = one_step(CAME, theta, [g1, g2], steps=2, lr=lr, betas=(b1, b2, b3), eps=(e1, e2), d=d, foreach=foreach)
    t = theta.clone()
    r, c, m, R, C = torch.zeros(6), torch.zeros(5), torch.zeros(6, 5), torch.zeros(6), torch.zeros(5)
    ones_r, ones_c = torch.ones(6), torch.ones(5)
    for g in (g1, g2):
        r = b2 * r + (1 - b2) * ((g**2 + e1) @ ones_c) / 5  # mean over columns
        c = b2 * c + (1 - b2) * (ones_r @ (g**2 + e1)) / 6  # mean over rows
        v = torch.outer(r, c) / (r.sum() / 6)
        u = g / v.sqrt()
        u = u / max(1.0, float(u.pow(2).mean().sqrt()) / d)
        m = b1 * m + (1 - b1) * u
        U = (u - m) ** 2
        R = b3 * R + (1 - b3) * ((U + e2) @ ones_c) / 5
        C = b3 * C + (1 - b3) * (ones_r @ (U + e2)) / 6
        S = torch.outer(R, C) / (R.sum() / 6)
        t = t - lr * m / S.sqrt()
    torch.testing.assert_close(got, t, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-parameter"])
def test_adam_mini_one_v_per_head_row_and_tensor(foreach):
    """A GQA attention: W_q with 4 heads, W_k with 2; W_v per row; the output layer full AdamW."""
    torch.manual_seed(0)
    from memtrain.models.gpt.model import GPT

    model = GPT(vocab_size=16, dim=8, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=8)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    opt = AdamMini(AdamMini.build_param_groups(model, wd), lr=lr, betas=(b1, b2), eps=eps, foreach=foreach)
    opt.step()

    def expected(name, blocks):
        g, t0 = dict(model.named_parameters())[name].grad, before[name]
        m = (1 - b1) * g / (1 - b1)  # bias-corrected first moment after one step
        v = torch.stack([(1 - b2) * (gb**2).mean() for gb in blocks(g)]) / (1 - b2)
        decay = wd if g.ndim >= 2 else 0.0
        rows_per_block = g.shape[0] // len(v) if g.ndim >= 2 else None
        denom = v.repeat_interleave(rows_per_block)[:, None] if rows_per_block else v
        return t0 * (1 - lr * decay) - lr * m / (denom.sqrt() + eps)

    params = dict(model.named_parameters())
    cases = {
        "layers.0.attention.wq.weight": lambda g: g.view(4, -1),  # 4 query heads of Dh=2 rows
        "layers.0.attention.wk.weight": lambda g: g.view(2, -1),  # 2 key/value heads
        "layers.0.attention.wv.weight": lambda g: list(g),  # per output neuron
        "layers.0.feed_forward.w2.weight": lambda g: list(g),
        "norm.weight": lambda g: [g],  # one for the tensor
    }
    for name, blocks in cases.items():
        torch.testing.assert_close(params[name].detach(), expected(name, blocks), rtol=RTOL, atol=ATOL, msg=name)
    for name in ("tok_embeddings.weight", "output.weight"):  # AdamW: a v per element
        g = params[name].grad
        want = before[name] * (1 - lr * wd) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(params[name].detach(), want, rtol=RTOL, atol=ATOL, msg=name)
    state = opt.state[params["layers.0.attention.wq.weight"]]
    assert state["exp_avg_sq"].shape == (4,)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-parameter"])
def test_adamw_bf16_step_is_adamw_and_rounding_is_unbiased(problem, foreach):
    theta, (g1, _) = problem
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    got, opt = one_step(AdamWBF16, theta, [g1], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, foreach=foreach)
    m, v = (1 - b1) * g1, (1 - b2) * g1**2
    want = theta * (1 - lr * wd) - lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    state = opt.state[next(iter(opt.state))]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    # stored moments: v rounded up or down to a neighbouring bfloat16 (8 significant bits: < 2^-7 relative)
    torch.testing.assert_close(state["exp_avg_sq"].float(), v, rtol=2**-7, atol=0)
    # unbiased: 1 + 2^-10 lies a quarter of the way from 1 to the next bfloat16 (1 + 2^-7... step 2^-7)
    x = torch.full((20000,), 1 + 2**-9)
    r = stochastic_round_bf16(x, torch.Generator().manual_seed(0)).float()
    assert set(r.unique().tolist()) == {1.0, 1 + 2**-7}
    # 2^-9 / 2^-7 = 1/4 rounds up; the mean of 20000 Bernoulli(1/4) draws is within 0.02 of 1/4 (6 sigma)
    assert abs(float((r > 1).float().mean()) - 0.25) < 0.02
    assert torch.equal(x.to(torch.bfloat16).float(), torch.ones(20000))  # round-to-nearest loses it every time


# -- foreach: the multi-tensor step against the per-parameter loop ---------------------------------

FOREACH = {
    "lion": (Lion, dict(lr=1e-2, weight_decay=0.1)),
    "sm3": (SM3, dict(lr=1e-1, momentum=0.9, weight_decay=0.1)),
    "came": (CAME, dict(lr=1e-2, weight_decay=0.1)),
    "adam_mini": (AdamMini, dict(lr=1e-2, weight_decay=0.1)),
    "adamw_bf16": (AdamWBF16, dict(lr=1e-2, weight_decay=0.1)),
}


def tiny_gpt():
    from memtrain.models.gpt.model import GPT

    torch.manual_seed(0)
    return GPT(vocab_size=40, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=24)


@pytest.mark.parametrize("name", list(FOREACH))
def test_foreach_equals_the_per_parameter_loop(name, monkeypatch):
    """Bit for bit on CPU: the same elementwise kernels, run per bucket instead of per parameter.
    Buckets of 4 KiB split the tiny GPT's parameters into many (and keep its larger ones alone);
    on the second step one matrix has no gradient and must be left alone by both."""
    from memtrain.optim import _foreach

    monkeypatch.setattr(_foreach, "BUCKET_BYTES", 4096)
    monkeypatch.setattr(_foreach.buckets, "__defaults__", (4096,))
    cls, kw = FOREACH[name]
    models = {flag: tiny_gpt() for flag in (True, False)}
    opts = {}
    for flag, model in models.items():
        groups = cls.build_param_groups(model, 0.1) if name == "adam_mini" else model.parameters()
        opts[flag] = cls(groups, **kw, foreach=flag)
    assert len(list(_foreach.buckets(list(models[True].parameters())))) > 5
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in models[True].parameters()]
        for flag, model in models.items():
            for i, (p, g) in enumerate(zip(model.parameters(), grads)):
                p.grad = None if (step == 1 and i == 3) else g.clone()
            opts[flag].step()
    for (n, a), b in zip(models[True].named_parameters(), models[False].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    for pa, pb in zip(models[True].parameters(), models[False].parameters()):
        sa, sb = opts[True].state[pa], opts[False].state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# -- state bytes: the estimator's formula against the states torch allocated -------------------

OPTIMIZERS = ["adamw", "adafactor", "lion", "sm3", "came", "adam_mini", "adamw_bf16", "adamw_8bit", "mezo"]


def tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o) for o in obj.values())
    return 0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_bytes_equal_the_estimate(name):
    overrides = [*TINY, f"optimizer={name}"]
    if name == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
        overrides.append("optimizer.min_8bit_size=2048")  # the tiny model has tensors on both sides of it
    cfg = load_config(overrides)
    torch.manual_seed(0)
    model = get_spec("gpt").build_model(cfg.model)
    opt = build_optimizer(cfg.optimizer, model, "cpu")
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    if name == "mezo":
        opt.step(lambda: torch.zeros(()), seed=1)
    else:
        opt.step()
    measured = sum(tensor_bytes(s) for s in opt.state.values())
    predicted = optimizer_memory.state_bytes(cfg, flat(param_units(cfg)), 4)
    assert measured == predicted
    assert (measured == 0) == (name == "mezo")
    assert estimate(cfg).optimizer == predicted


# -- a small regression ------------------------------------------------------------------------

LRS = {"adamw": 1e-2, "adafactor": 1e-2, "lion": 1e-2, "sm3": 1e-1, "came": 1e-2, "adam_mini": 1e-2,
       "adamw_bf16": 1e-2, "adamw_8bit": 1e-2}


@pytest.mark.parametrize("name", list(LRS))
def test_reduces_regression_loss(name):
    if name == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = x @ torch.randn(16, 8, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8))
    cfg = load_config([*TINY, f"optimizer={name}", f"optimizer.lr={LRS[name]}", "optimizer.weight_decay=0.0",
                       *(["optimizer.min_8bit_size=512"] if name == "adamw_8bit" else [])])
    opt = build_optimizer(cfg.optimizer, model, "cpu")
    first = None
    for _ in range(100):
        loss = nn.functional.mse_loss(model(x), y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(loss.detach())
    assert last < 0.3 * first, (name, first, last)


# -- MeZO ------------------------------------------------------------------------------------------


def test_mezo_reduces_regression_loss_without_gradients():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = MeZO(model.parameters(), lr=2e-2, eps=1e-3)

    def closure():
        return nn.functional.mse_loss(model(x), y)

    with torch.no_grad():
        first = float(closure())
        for step in range(300):
            opt.step(closure, seed=step)
        last = float(closure())
    assert last < 0.2 * first, (first, last)
    assert all(p.grad is None for p in model.parameters())


def test_mezo_trainer_step_is_spsa_with_regenerated_z(tmp_path, make_trainer):
    eps, lr = 1e-3, 1e-3
    cfg = load_config([*TINY, "optimizer=mezo", f"optimizer.lr={lr}", f"optimizer.eps={eps}",
                       "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.grad_accum=2"])
    trainer = make_trainer(cfg, tmp_path)
    model = trainer.model
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]  # z's order
    theta = [p.detach().clone() for p in params]
    micro = trainer.micro_batches()
    seed = step_seed(cfg.trainer.seed, 0)

    def loss_at(sign):
        gen = torch.Generator().manual_seed(seed)
        shifted = [t + sign * eps * torch.randn(t.shape, generator=gen) for t in theta]
        total, count = 0.0, 0
        with torch.no_grad():
            for p, s in zip(params, shifted):
                p.copy_(s)
            for x, y in micro:
                loss, n = trainer.spec.loss_fn(model(x), y)
                total, count = total + float(loss), count + int(n)
            for p, t in zip(params, theta):
                p.copy_(t)
        return total / count

    g = (loss_at(1) - loss_at(-1)) / (2 * eps)
    result = trainer.train_step()
    gen = torch.Generator().manual_seed(seed)
    for p, t in zip(params, theta):
        # theta + eps z - 2 eps z + eps z leaves float32 round-off of eps z (~1e-3 * 2^-24 * |z|)
        torch.testing.assert_close(p.detach(), t - lr * g * torch.randn(t.shape, generator=gen), rtol=1e-5, atol=1e-6)
    # the losses come from the same float32 forward on a 2-micro-batch step, summed in float64: ~1e-6
    assert result.grad_norm == pytest.approx(abs(g), rel=1e-3)
    trainer.fit(until=3)
    assert all(p.grad is None for p in model.parameters())  # no gradient was ever allocated
    trainer.close()


@pytest.mark.parametrize("overrides,key", [
    (["optimizer=mezo", "parallel=fsdp"], "parallel"),
    (["optimizer=mezo", "precision=fp16"], "precision.loss_scaling"),
    (["optimizer=mezo", "parallel=zero2"], "parallel"),
    (["optimizer=sm3", "parallel=zero2"], "optimizer"),
    (["optimizer=adam_mini", "parallel=zero3"], "optimizer"),
    (["optimizer=adafactor", "parallel=zero1"], "optimizer"),
])
def test_incompatible_combinations_are_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config([*TINY, *overrides])
    assert err.value.key == key if hasattr(err.value, "key") else key in str(err.value)


