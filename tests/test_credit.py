"""Dense per-row credit (`policy.credit: row`): the first-order credit against the actual change
of P after a small SGD step on one row and against GREATS's inner products; each row loss, the
row advantages and Spearman's rho against values worked out by hand; what the learner does with
the labels; and train-policy end to end with labels on a tiny Llama."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHOICE_DOCS, messages_pool, plus_rows, random_features, write_choice_items
from raise_select.data.pools import load_pool
from raise_select.errors import UserError
from raise_select.policy import PolicyConfig, RaisePolicy, RolloutBuffer, StaticState, class_kl
from raise_select.policy.credit import ranking_loss, regression_loss, row_advantages, spearman, standardise
from raise_select.training.credit import RowCredit, trainable_linears
from raise_select.training.loop import LMConfig, LMTrainer, collate
from raise_select.training.reward import Validator
from test_policy_state import synthetic_features

R = math.sqrt(1.5)  # the standardised values of (-0.1, 0.1, 0) are (-R, R, 0)


# ---------------------------------------------------------------- the losses, by hand


def test_standardise_by_hand():
    z = standardise(torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64))
    assert z.tolist() == pytest.approx([-R, R, 0.0])
    assert torch.equal(standardise(torch.tensor([2.0, 2.0])), torch.zeros(2))  # constant: no order to learn


def test_regression_loss_by_hand():
    scores = torch.tensor([1.0, 2.0, 4.0])  # centred: -4/3, -1/3, 5/3
    credit = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)  # standardised: -R, R, 0
    expected = ((-4 / 3 + R) ** 2 + (-1 / 3 - R) ** 2 + (5 / 3) ** 2) / 3
    assert float(regression_loss(scores, credit)) == pytest.approx(expected, rel=1e-6)
    # shifting every score changes nothing (the class softmax is shift-invariant), nor does scaling the credit
    assert float(regression_loss(scores + 7.0, 1e-4 * credit)) == pytest.approx(expected, rel=1e-5)


def test_ranking_loss_by_hand():
    scores = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    credit = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    # pairs with credit_i > credit_j: (1, 0) margin 1, (1, 2) margin -2, (2, 0) margin 3
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(2)) + math.log1p(math.exp(-3))) / 3
    loss = ranking_loss(scores, credit)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/ds of softplus(-(s_i - s_j)) is -sigmoid(-(s_i - s_j)) for s_i and the opposite for s_j
    sig = lambda m: 1 / (1 + math.exp(m))  # noqa: E731  sigmoid(-m)
    g1 = (-sig(1) - sig(-2)) / 3
    g0 = (sig(1) + sig(3)) / 3
    g2 = (sig(-2) - sig(3)) / 3
    assert scores.grad.tolist() == pytest.approx([g0, g1, g2], rel=1e-5)
    ties = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    assert ranking_loss(scores, ties).item() == 0.0


def test_row_advantages_standardise_over_the_round():
    adv = row_advantages([torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64)])
    assert [a.tolist() for a in adv] == [pytest.approx([-R, R]), pytest.approx([0.0], abs=1e-12)]


def test_top_share_by_hand():
    """Credit (1, 2, 3, 4, 10) is centred to (-3, -2, -1, 0, 6); the top fifth (one row) by score."""
    from raise_select.policy.credit import top_share

    credit = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert top_share([0, 0, 0, 0, 9], credit, frac=0.2) == pytest.approx(1.0)
    assert top_share([0, 0, 9, 0, 0], credit, frac=0.2) == pytest.approx(-1 / 6)
    # top two by score: rows 3 and 4 (0 + 6) against the best two (6 + 0)
    assert top_share([0, 0, 0, 5, 9], credit, frac=0.4) == pytest.approx(1.0)
    assert top_share([9, 0, 0, 0, 5], credit, frac=0.4) == pytest.approx((6 - 3) / 6)
    assert math.isnan(top_share([1, 2], [3.0, 3.0]))


def test_spearman_by_hand():
    # ranks (1, 2, 3, 4) against (1, 3, 2, 4): sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15)
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 30.0, 20.0, 40.0])) == pytest.approx(0.8)
    assert math.isnan(spearman(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])))


# ---------------------------------------------------------------- the credit of a row


def _trainer_and_validator(tiny_model_dir, lr: float):
    pool = messages_pool(10)
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64, lr=lr), total_steps=4)
    val = messages_pool(16).examples[11:]
    return trainer, Validator(val, trainer.tokenizer, "neg_loss", 64, "alpaca", batch_size=8)


def _assert_credit_is_the_sgd_change(trainer, validator, rows, credit, lr, floor):
    """The slow reference: for each row, one SGD step of `lr` on the row's own loss over the scored
    weights, then P measured by the validator; to first order the change of P is the credit (small
    lr: the ratio is close to 1). The weights are put back."""
    model = trainer.unwrapped
    params = [m.weight for m in trainable_linears(model)]
    p0 = validator(model)
    for k, i in enumerate(rows):
        model.eval()
        batch = collate([trainer.encode(i)], trainer.tokenizer.pad_token_id)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        grads = torch.autograd.grad(out.loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        change = validator(model) - p0
        with torch.no_grad():
            for p, g in zip(params, grads):
                p += lr * g
        assert abs(float(credit[k])) > floor
        assert change / float(credit[k]) == pytest.approx(1.0, abs=0.1)
    assert validator(model) == pytest.approx(p0, abs=1e-6)  # the weights are back


def test_row_credit_is_the_change_of_p_after_a_small_sgd_step_on_that_row(tiny_model_dir):
    """P = -(mean validation loss): the credit of each row against the slow reference."""
    trainer, validator = _trainer_and_validator(tiny_model_dir, lr=0.02)
    model = trainer.unwrapped
    rows = [0, 3, 5, 8]
    credit = RowCredit(trainer, validator, sample=0).credit(rows)
    params = [m.weight for m in trainable_linears(model)]
    assert len(params) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())  # every linear layer
    _assert_credit_is_the_sgd_change(trainer, validator, rows, credit, 0.02, 1e-4)


def _choice_validation(tmp_path, tokenizer, items=None) -> Validator:
    """A multiple-choice validation set (of `CHOICE_DOCS`, or those `items` of it) in the project's
    prompt format, scored by `choice_ce`."""
    docs = CHOICE_DOCS if items is None else [CHOICE_DOCS[i] for i in items]
    path = tmp_path / f"val{'' if items is None else '_'.join(map(str, items))}.jsonl"
    write_choice_items(path, docs)
    return Validator(load_pool(str(path)).examples, tokenizer, "choice_ce", 64, batch_size=3)


def test_choice_objective_is_the_validators_choice_ce_with_gradients(tmp_path, tiny_model_dir):
    """The differentiable choice cross-entropy the credit descends equals the validator's (lm-eval's
    no-grad scoring, P = -mean CE), and it reaches the trainable layers."""
    from raise_select.training.choices import ChoiceRequests, choice_ce_sum

    trainer, _ = _trainer_and_validator(tiny_model_dir, lr=0.02)
    validator = _choice_validation(tmp_path, trainer.tokenizer)
    model = trainer.unwrapped
    model.eval()
    requests = ChoiceRequests(validator.examples, trainer.tokenizer, max_length=64)
    total = choice_ce_sum(model, requests, [0, 1, 2, 3], batch_size=3)
    assert total.requires_grad
    assert float(total.detach()) / 4 == pytest.approx(-validator(model), rel=1e-5)
    with torch.no_grad():  # item sums add up, whatever the batching
        parts = float(choice_ce_sum(model, requests, [2], batch_size=1) + choice_ce_sum(model, requests, [0, 1, 3]))
    assert parts == pytest.approx(-4 * validator(model), rel=1e-5)


def test_choice_credit_is_the_change_of_the_choice_ce_after_a_small_sgd_step(tmp_path, tiny_model_dir):
    """With a multiple-choice validator (`metric: choice_ce`) the credit of a row is, to first order,
    the change of P = -mean gold-choice cross-entropy after one small SGD step on that row: the
    labels measure what the reward measures, not the loss over "The answer is X."."""
    trainer, _ = _trainer_and_validator(tiny_model_dir, lr=0.02)
    validator = _choice_validation(tmp_path, trainer.tokenizer)
    model = trainer.unwrapped
    rows = [0, 3, 5, 8]
    rc = RowCredit(trainer, validator, sample=0, chunk=3)
    assert rc.objective == "choice_ce"
    credit = rc.credit(rows)
    _assert_credit_is_the_sgd_change(trainer, validator, rows, credit, 0.02, 1e-5)
    # g_val over a subset of the items: the credit against a validator that holds only those items
    sub = rc.credit(rows, val=[1, 2])
    alone = RowCredit(trainer, _choice_validation(tmp_path, trainer.tokenizer, [1, 2]), sample=0).credit(rows)
    assert sub.tolist() == pytest.approx(alone.tolist(), rel=1e-4) and not torch.allclose(sub, credit)
    params = [m.weight for m in trainable_linears(model)]
    assert all(p.grad is None for p in params)


def test_credits_against_several_subsets_and_the_rows_gradient_norms_in_one_pass(tmp_path, tiny_model_dir):
    """`RowCredit.credits`: each column is `credit` against that subset of the validation items, and
    the norms are each row's gradient norm over the scored weights, from autograd row by row."""
    trainer, _ = _trainer_and_validator(tiny_model_dir, lr=0.02)
    validator = _choice_validation(tmp_path, trainer.tokenizer)
    model = trainer.unwrapped
    rows = [0, 3, 5, 8, 9]
    rc = RowCredit(trainer, validator, sample=0, chunk=2)
    many, size = rc.credits(rows, [[0, 1], None, [2, 3]], norms=True)
    assert many.shape == (5, 3)
    for k, val in enumerate([[0, 1], None, [2, 3]]):
        assert many[:, k].tolist() == pytest.approx(rc.credit(rows, val).tolist(), rel=1e-6, abs=1e-12)
    params = [m.weight for m in trainable_linears(model)]
    model.eval()
    for k, i in enumerate(rows):
        batch = collate([trainer.encode(i)], trainer.tokenizer.pad_token_id)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        grads = torch.autograd.grad(out.loss, params)
        assert float(size[k]) == pytest.approx(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))), rel=1e-4)
    assert rc.credits(rows, [None])[1] is None


def test_unit_row_credit_is_the_credit_over_the_rows_autograd_gradient_norm(tmp_path, tiny_model_dir):
    """`row_norm="unit"` (`policy.credit_row_norm`): each label is the plain credit divided by the
    row's gradient norm over the scored weights, the norm taken here by autograd row by row; the
    order of the labels changes where the rows' norms differ."""
    trainer, _ = _trainer_and_validator(tiny_model_dir, lr=0.02)
    validator = _choice_validation(tmp_path, trainer.tokenizer)
    model = trainer.unwrapped
    rows = [0, 3, 5, 8, 9]
    plain = RowCredit(trainer, validator, sample=0, chunk=2).credit(rows, lr=0.02)
    unit = RowCredit(trainer, validator, sample=0, chunk=2, row_norm="unit").credit(rows, lr=0.02)
    params = [m.weight for m in trainable_linears(model)]
    model.eval()
    norms = []
    for i in rows:
        batch = collate([trainer.encode(i)], trainer.tokenizer.pad_token_id)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        grads = torch.autograd.grad(out.loss, params)
        norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
    assert unit.tolist() == pytest.approx([c / n for c, n in zip(plain.tolist(), norms)], rel=1e-4, abs=1e-15)
    assert max(norms) > 1.05 * min(norms)
    with pytest.raises(ValueError, match="row_norm"):
        RowCredit(trainer, validator, sample=0, row_norm="cosine")
    with pytest.raises(UserError, match="credit_row_norm"):
        PolicyConfig(credit_row_norm="cosine")


def test_row_gradients_give_the_credit_and_the_norms(tmp_path, tiny_model_dir):
    """`RowCredit.row_gradients`: each row's flattened gradient; its inner product with the flattened
    g_val is the credit, and its norm the `credits` norm (chunks of 2 over rows of mixed length)."""
    trainer, _ = _trainer_and_validator(tiny_model_dir, lr=0.02)
    validator = _choice_validation(tmp_path, trainer.tokenizer)
    rc = RowCredit(trainer, validator, sample=0, chunk=2)
    rows = [0, 3, 5, 8, 9]
    grads = rc.row_gradients(rows).double()
    with rc.measuring():
        g_val = rc.flat_gradient(rc.validation_gradient([0, 2])).double()
    credit, size = rc.credits(rows, [[0, 2]], lr=0.3, norms=True)
    assert (0.3 * grads @ g_val).tolist() == pytest.approx(credit[:, 0].tolist(), rel=1e-4)
    assert grads.norm(dim=1).tolist() == pytest.approx(size.tolist(), rel=1e-4)


def test_unit_validation_gradient_is_the_mean_of_unit_item_gradients(tmp_path, tiny_model_dir):
    """`val_norm: unit`: g_val is the mean over items of each item's gradient over its norm, by hand
    from the items' gradients one at a time; the credit against it is lr <g_val, g_i>."""
    trainer, _ = _trainer_and_validator(tiny_model_dir, lr=0.02)
    validator = _choice_validation(tmp_path, trainer.tokenizer)
    rc = RowCredit(trainer, validator, sample=0, chunk=2)
    trainer.unwrapped.eval()  # as `credits` measures (no dropout)

    def flat(items, form):
        return torch.cat([t.flatten() for part in rc.validation_gradient(items, form) for t in part]).double()

    def close(a, b):  # float32 sums in another order: relative to the vector's largest entry
        return torch.allclose(a, b, rtol=0, atol=1e-4 * float(b.abs().max()))

    items = [0, 1, 3]
    each = [flat([j], "mean") for j in items]
    assert close(flat(items, "unit"), sum(g / g.norm() for g in each) / len(items))
    assert close(flat(items, "mean"), sum(each) / len(items))
    assert not close(flat(items, "unit") / flat(items, "unit").norm(), flat(items, "mean") / flat(items, "mean").norm())
    for form in ("mean", "unit"):  # two equal halves: the whole set's g_val is the mean of theirs
        halves = [flat([0, 1], form), flat([2, 3], form)]
        assert close(flat([0, 1, 2, 3], form), (halves[0] + halves[1]) / 2)
    rows = [2, 4, 7]
    unit_rc = RowCredit(trainer, validator, sample=0, val_norm="unit")
    with unit_rc.measuring():
        g_unit = unit_rc.validation_gradient(items)
    by_hand = 0.5 * unit_rc.row_gradients(rows).double() @ RowCredit.flat_gradient(g_unit).double()
    assert unit_rc.credit(rows, items, lr=0.5).tolist() == pytest.approx(by_hand.tolist(), rel=1e-4)
    with pytest.raises(ValueError, match="val_norm"):
        RowCredit(trainer, validator, sample=0, val_norm="max")


def test_row_credit_equals_greats_first_term(tiny_model_dir, monkeypatch):
    """GREATS scores its candidates with lr * <g_i, g_val> before the interaction term: on the same
    model, rows and validation set the credit is that vector."""
    import raise_select.baselines.greats as greats_module
    from raise_select.baselines import SelectionContext

    trainer, validator = _trainer_and_validator(tiny_model_dir, lr=0.05)
    rows = np.array([1, 2, 4, 6, 9])
    seen = {}

    def spy(scores, interaction, k):
        seen["scores"] = np.asarray(scores, dtype=np.float64)
        return [0], [float(scores[0])]

    monkeypatch.setattr(greats_module, "greedy_selection", spy)
    greats = greats_module.GREATS(val_batch=len(validator.examples), last_layers=0)
    ctx = SelectionContext(model="unused", validation=validator.examples, seed=0, max_length=64)
    greats.prepare(trainer.pool, trainer, ctx)
    greats.choose(trainer, rows, 1)
    credit = RowCredit(trainer, validator, sample=0).credit(rows.tolist())
    assert credit.numpy() == pytest.approx(seen["scores"], rel=1e-4, abs=1e-9)


def test_labels_are_the_chosen_rows_then_a_sample_of_the_others(tiny_model_dir):
    trainer, validator = _trainer_and_validator(tiny_model_dir, lr=0.05)
    credit = RowCredit(trainer, validator, sample=4)
    chosen = torch.tensor([7, 2])
    rows, values = credit.labels(chosen, torch.Generator().manual_seed(0))
    assert rows[:2].tolist() == [7, 2] and len(rows) == 6 and len(set(rows.tolist())) == 6
    assert values.dtype == torch.float64 and values.tolist() == pytest.approx(credit.credit(rows.tolist()).tolist())
    # the model, its gradients and its mode are left as they were
    assert trainer.unwrapped.training and all(p.grad is None for p in trainer.unwrapped.parameters())


# ---------------------------------------------------------------- the learner


def _labelled_rollout(policy, steps, seed, label_of, sample=16):
    """A round whose rewards are noise and whose labels are `label_of(rows)`: what PPO gets is no
    signal, what the labels carry is the order of a feature."""
    gen = torch.Generator().manual_seed(seed)
    n = len(policy.static)
    counts, buf = torch.zeros(n, dtype=torch.int64), RolloutBuffer()
    for t in range(steps):
        a = policy.act(-2.0, t / steps, counts, explore=True, generator=gen)
        buf.add(
            -2.0,
            t / steps,
            a.indices,
            a.log_prob,
            a.value,
            0.01 * float(torch.randn(1, generator=gen)),
            a.item_log_prob,
        )
        others = torch.randperm(n, generator=gen)[:sample]
        rows = torch.cat([a.indices, others])
        buf.add_labels(rows, label_of(rows))
        counts.index_add_(0, a.indices, torch.ones_like(a.indices))
    return buf


def test_credit_row_without_a_row_loss_updates_as_credit_batch():
    """The labels enter the update only through row_loss and row_advantage."""
    static = StaticState.from_features(synthetic_features(60, sem_dim=3, classes=2, seed=1))
    label = torch.from_numpy(synthetic_features(60, sem_dim=3, classes=2, seed=1).sem[:, 0]).double()
    base = PolicyConfig(per_class=2, seed=3)
    buf = _labelled_rollout(RaisePolicy(static, base), 4, seed=5, label_of=lambda r: label[r])
    plain, labelled = RaisePolicy(static, base), RaisePolicy(static, replace(base, credit="row", row_loss="none"))
    a, b = plain.update(buf), labelled.update(buf)
    for x, y in zip(plain.actor.state_dict().values(), labelled.actor.state_dict().values()):
        assert torch.equal(x, y)
    assert "credit_spearman" in b and "credit_spearman" not in a and "row_loss" not in a


@pytest.mark.parametrize("kind", ["ranking", "regression"])
def test_row_loss_teaches_the_labels_order_to_rows_it_never_saw_labelled(kind):
    """Labels = a feature of the rows (PPO's rewards are noise): after a few rounds F_theta ranks rows
    by it, on a third of the pool whose labels were never shown, while credit batch does not."""
    ft = synthetic_features(300, sem_dim=4, classes=2, seed=0)
    static = StaticState.from_features(ft)
    label = torch.from_numpy(ft.sem[:, 0]).double()
    shown = torch.arange(300) % 3 != 0
    held = torch.nonzero(~shown).flatten()

    def held_out_rho(policy):
        return spearman(policy.scores(-2.0, 0.5, torch.zeros(300, dtype=torch.int64))[held], label[held])

    def train(cfg):
        policy = RaisePolicy(static, cfg)
        for k in range(6):
            buf = _labelled_rollout(policy, 5, seed=k, label_of=lambda r: torch.where(shown[r], label[r], 0.0))
            policy.update(buf)
        return held_out_rho(policy)

    base = PolicyConfig(per_class=4, seed=1)
    assert train(replace(base, credit="row", row_loss=kind)) > 0.6
    assert abs(train(base)) < 0.3


def test_ppo_weight_zero_learns_from_the_labels_alone():
    """ppo_weight 0: the actor's update does not depend on the rewards (only on the labels' row loss),
    and it is the row-loss-only gradient step; at the default weight the rewards move it."""
    import copy

    static = StaticState.from_features(synthetic_features(60, sem_dim=3, classes=2, seed=1))
    label = torch.from_numpy(synthetic_features(60, sem_dim=3, classes=2, seed=1).sem[:, 0]).double()
    base = PolicyConfig(per_class=2, seed=3, credit="row", row_loss="ranking", ppo_epochs=1, minibatches=1)

    def actor_after(cfg, reward_scale):
        buf = _labelled_rollout(RaisePolicy(static, cfg), 4, seed=5, label_of=lambda r: label[r])
        buf = copy.deepcopy(buf)
        buf.reward = [reward_scale * (t + 1) for t in range(len(buf))]
        policy = RaisePolicy(static, cfg)
        policy.update(buf)
        return policy.actor.state_dict(), buf

    only_labels = replace(base, ppo_weight=0.0)
    a, buf = actor_after(only_labels, 1.0)
    b, _ = actor_after(only_labels, -5.0)
    assert all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))
    c, _ = actor_after(base, 1.0)
    d, _ = actor_after(base, -5.0)
    assert not all(torch.equal(x, y) for x, y in zip(c.values(), d.values()))
    # the one AdamW step by hand: the mean over the round's steps of each step's ranking loss
    ref = RaisePolicy(static, only_labels)
    opt = ref.actor_opt
    opt.zero_grad()
    counts = torch.zeros(60, dtype=torch.int64)
    total = 0.0
    for t in range(len(buf)):
        scores = ref.actor.score(
            ref.actor.static_projection(static.x), ref._stage(buf.perf_prev[t]), buf.progress[t], counts
        )
        rows, credit = buf.label_rows[t], buf.label_credit[t]
        total = total + ranking_loss(scores[rows], credit)
        counts = counts.clone()
        counts.index_add_(0, buf.chosen(t), torch.ones_like(buf.chosen(t)))
    (total / len(buf)).backward()
    opt.step()
    for (name, x), y in zip(a.items(), ref.actor.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name
    with pytest.raises(UserError, match="ppo_weight"):
        PolicyConfig(ppo_weight=0.0)  # credit batch: nothing left to learn from


def test_row_advantage_gives_each_chosen_row_its_own_credit():
    """row_advantage: a row with high credit gains probability and one with low credit loses it,
    within the same step (one step, so the step's advantage is the same for both)."""
    static = StaticState.from_features(synthetic_features(40, sem_dim=3, classes=1, seed=2))
    cfg = PolicyConfig(per_class=4, seed=0, credit="row", ratio="per_item", row_advantage=True, row_loss="none")
    policy = RaisePolicy(static, cfg)
    gen = torch.Generator().manual_seed(0)
    a = policy.act(-2.0, 0.0, torch.zeros(40, dtype=torch.int64), explore=True, generator=gen)
    buf = RolloutBuffer()
    buf.add(-2.0, 0.0, a.indices, a.log_prob, a.value, 0.0, a.item_log_prob)
    credit = torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    buf.add_labels(a.indices, credit)
    before = policy.scores(-2.0, 0.0, torch.zeros(40, dtype=torch.int64))[a.indices]
    policy.update(buf)
    after = policy.scores(-2.0, 0.0, torch.zeros(40, dtype=torch.int64))[a.indices]
    gain = after - before
    assert gain[0] > gain[3]


def test_credit_settings_are_refused_by_name():
    with pytest.raises(UserError, match="credit"):
        PolicyConfig(credit="rows")
    with pytest.raises(UserError, match="row_loss"):
        PolicyConfig(row_loss="mse")
    with pytest.raises(UserError, match="row_advantage"):
        PolicyConfig(credit="row", row_advantage=True)  # ratio product: one ratio per step
    with pytest.raises(UserError, match="credit_sample"):
        PolicyConfig(credit_sample=-1)
    with pytest.raises(UserError, match="credit_val_norm"):
        PolicyConfig(credit_val_norm="max")


def test_update_with_credit_row_refuses_a_buffer_without_labels():
    static = StaticState.from_features(synthetic_features(30, sem_dim=3, classes=1, seed=0))
    policy = RaisePolicy(static, PolicyConfig(per_class=2, credit="row"))
    a = policy.act(-2.0, 0.0, torch.zeros(30, dtype=torch.int64), explore=True)
    buf = RolloutBuffer()
    buf.add(-2.0, 0.0, a.indices, a.log_prob, a.value, 0.0, a.item_log_prob)
    with pytest.raises(ValueError, match="credit labels"):
        policy.update(buf)


# ---------------------------------------------------------------- end to end


def test_train_policy_with_row_credit_labels_every_policy_step(tmp_path, tiny_model_dir):
    from raise_select.training import TrainPolicyConfig, train_policy

    rows = plus_rows(12)
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    (tmp_path / "val.json").write_text(json.dumps(rows[:3]))
    pool = load_pool(tmp_path / "pool.json")
    random_features(pool.ids, 2).write(tmp_path / "features")
    cfg = TrainPolicyConfig(
        pool=str(tmp_path / "pool.json"),
        features=str(tmp_path / "features"),
        model=str(tiny_model_dir),
        val=str(tmp_path / "val.json"),
        out=str(tmp_path / "run"),
        rounds=2,
        steps=4,
        select_every=2,
        lr=1e-3,
        max_length=64,
        policy=PolicyConfig(per_class=1, credit="row", credit_sample=3, row_loss="ranking"),
    )
    train_policy(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rounds = [m for m in lines if m.get("kind") == "round"]
    assert len(rounds) == 2
    for m in rounds:
        assert -1.0 <= m["credit_spearman"] <= 1.0 and m["row_loss"] > 0.0
    saved = RaisePolicy.read_config(tmp_path / "run" / "policy")
    assert saved.credit == "row" and saved.credit_sample == 3


def test_the_credit_preset_is_one_set_of_settings():
    """`policy.config.CREDIT` (the study's raise_credit rows) and configs/policy_credit.yaml (the
    commands' preset) hold the same settings, and they make a valid policy config."""
    import yaml

    import raise_select
    from raise_select.config import from_dict
    from raise_select.experiments.methods import METHODS
    from raise_select.policy.config import CREDIT, PolicyConfig

    path = Path(raise_select.__file__).parent / "configs" / "policy_credit.yaml"
    shipped = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert shipped["train_policy"]["policy"] == CREDIT
    cfg = from_dict(PolicyConfig, dict(CREDIT), "CREDIT")
    assert cfg.credit == "row" and cfg.row_advantage
    assert {k: METHODS["raise_credit"].policy[k] for k in CREDIT} == CREDIT


# ---------------------------------------------------------------- labels before round 1 (label_budget)


@pytest.mark.parametrize("kind", ["ranking", "regression"])
def test_fit_labels_ranks_rows_it_never_saw_by_the_labels_order(kind):
    """`fit_labels`: labels = a feature of the rows on two thirds of the pool; afterwards F_theta ranks
    the other third by that feature, at the stage of any step (progress 0 and 0.9)."""
    ft = synthetic_features(300, sem_dim=4, classes=2, seed=0)
    static = StaticState.from_features(ft)
    label = torch.from_numpy(ft.sem[:, 1]).double()
    shown, held = torch.arange(300)[torch.arange(300) % 3 != 0], torch.arange(300)[torch.arange(300) % 3 == 0]
    policy = RaisePolicy(static, PolicyConfig(per_class=4, seed=1, row_loss=kind))
    zero = torch.zeros(300, dtype=torch.int64)
    before = spearman(policy.scores(-2.0, 0.0, zero)[held], label[held])
    losses = policy.fit_labels(shown, label[shown], -2.0, 60, torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0]
    assert spearman(policy.scores(-2.0, 0.0, zero)[held], label[held]) > max(0.9, before + 0.3)
    assert spearman(policy.scores(-2.0, 0.9, zero)[held], label[held]) > 0.8


def test_label_lr_fits_at_its_own_rate_then_the_rounds_train_at_actor_lr():
    """label_lr 0.1 with actor_lr 0.01: the fit's scores equal those of a fit at actor_lr 0.1 (same
    seeds), and afterwards every actor layer's AdamW rate is 0.01 / sqrt(fan_in) again."""
    import math

    ft = synthetic_features(120, sem_dim=4, classes=2, seed=0)
    static = StaticState.from_features(ft)
    label = torch.from_numpy(ft.sem[:, 1]).double()
    rows, zero = torch.arange(0, 120, 2), torch.zeros(120, dtype=torch.int64)

    def fitted(**settings):
        policy = RaisePolicy(static, PolicyConfig(per_class=4, seed=1, **settings))
        policy.fit_labels(rows, label[rows], -2.0, 5, torch.Generator().manual_seed(0))
        return policy

    split = fitted(actor_lr=0.01, label_lr=0.1)
    assert torch.equal(split.scores(-2.0, 0.0, zero), fitted(actor_lr=0.1).scores(-2.0, 0.0, zero))
    assert not torch.equal(split.scores(-2.0, 0.0, zero), fitted(actor_lr=0.01).scores(-2.0, 0.0, zero))
    layers = [m for m in split.actor.modules() if isinstance(m, torch.nn.Linear)]
    rates = [g["lr"] for g in split.actor_opt.param_groups]
    assert rates == pytest.approx([0.01 / math.sqrt(m.in_features) for m in layers])
    with pytest.raises(UserError, match="label_lr"):
        PolicyConfig(label_lr=-1.0)


def test_fit_groups_loss_is_the_mean_over_groups_and_it_learns_their_common_order():
    """`fit_groups`: each group's labels are a feature of its rows up to the group's own scale and offset
    (measured on its own model). A pass's loss is the mean of the groups' row losses (checked by hand at
    the first step), and afterwards F_theta ranks the rows no group holds by the feature."""
    ft = synthetic_features(300, sem_dim=4, classes=2, seed=0)
    static = StaticState.from_features(ft)
    feature = torch.from_numpy(ft.sem[:, 1]).double()
    gen = torch.Generator().manual_seed(3)
    shown = torch.arange(300)[torch.arange(300) % 3 != 0]
    held = torch.arange(300)[torch.arange(300) % 3 == 0]
    groups = []
    for g in range(40):
        rows = shown[torch.randperm(len(shown), generator=gen)[:8]]
        groups.append((rows, 0.1 * (g + 1) * feature[rows] + g))  # its own scale and offset: order only
    groups.append((shown[:1], torch.ones(1)))  # one row: no pair, skipped
    policy = RaisePolicy(static, PolicyConfig(per_class=4, seed=1, row_loss="ranking"))
    zero = torch.zeros(300, dtype=torch.int64)
    with torch.no_grad():
        scores = policy.scores(-2.0, 0.0, zero)
        by_hand = sum(float(ranking_loss(scores[r], c)) for r, c in groups[:40]) / 40
    losses = policy.fit_groups(groups, -2.0, 1, torch.Generator().manual_seed(0), per_step=100)
    assert losses == [pytest.approx(by_hand, rel=1e-5)]
    losses += policy.fit_groups(groups, -2.0, 40, torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0]
    assert spearman(policy.scores(-2.0, 0.0, zero)[held], feature[held]) > 0.9


def test_fit_groups_scores_a_group_with_a_state_at_that_state():
    """`refit_state: own`: a group (rows, credit, stage, progress, counts) is scored at its own state. One
    pass of one step: the loss equals the mean of the ranking losses at each group's state, by hand."""
    static = StaticState.from_features(synthetic_features(60, sem_dim=3, classes=1, seed=0))
    policy = RaisePolicy(static, PolicyConfig(per_class=2, seed=1, row_loss="ranking"))
    counts = torch.zeros(60, dtype=torch.int64)
    counts[:10] = 3
    credit = torch.tensor([3.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    groups = [
        (torch.tensor([0, 1, 2, 3]), credit),  # the first step's state
        (torch.tensor([0, 1, 2, 3]), credit, 0.7, 0.5, counts),  # its own
    ]
    with torch.no_grad():
        first = policy.scores(-2.0, 0.0, torch.zeros(60, dtype=torch.int64))[:4]
        own = policy.actor.score(policy.actor.static_projection(static.x), 0.7, 0.5, counts)[:4]
        by_hand = (float(ranking_loss(first, credit)) + float(ranking_loss(own, credit))) / 2
    assert not torch.allclose(first, own)  # the two states score the rows differently
    assert policy.fit_groups(groups, -2.0, 1, torch.Generator().manual_seed(0)) == [pytest.approx(by_hand, rel=1e-5)]


def test_refit_learns_from_the_sampled_rows_only_and_leaves_the_critic():
    """`round_update: refit`: after a round, the groups gain each step's labelled rows beyond its chosen
    ones (the chosen rows' credit is left out), the actor is fitted to them, the critic is untouched."""
    static = StaticState.from_features(synthetic_features(40, sem_dim=3, classes=1, seed=0))
    cfg = PolicyConfig(per_class=2, credit="row", row_loss="ranking", round_update="refit", refit_epochs=3)
    policy = RaisePolicy(static, cfg)
    critic = {k: v.clone() for k, v in policy.critic.state_dict().items()}
    actor = {k: v.clone() for k, v in policy.actor.state_dict().items()}
    buf = RolloutBuffer()
    counts = torch.zeros(40, dtype=torch.int64)
    for t in range(3):
        a = policy.act(-2.0, t / 3, counts, explore=True)
        buf.add(-2.0, t / 3, a.indices, a.log_prob, a.value, 0.01 * t, a.item_log_prob)
        sampled = torch.tensor([30 + t, 20 + t, 10 + t])
        buf.add_labels(torch.cat([a.indices, sampled]), torch.tensor([9.0, 9.0, 1.0, 2.0, 3.0], dtype=torch.float64))
        counts[a.indices] += 1
    groups = [(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))]
    stats = policy.refit(buf, groups, -2.0, torch.Generator().manual_seed(0))
    assert len(groups) == 4 and stats["refit_groups"] == 4
    for t in range(3):
        assert groups[t + 1][0].tolist() == [30 + t, 20 + t, 10 + t]
        assert groups[t + 1][1].tolist() == [1.0, 2.0, 3.0]
    assert -1.0 <= stats["credit_spearman"] <= 1.0 and policy.updates == 1
    assert all(torch.equal(critic[k], v) for k, v in policy.critic.state_dict().items())
    assert any(not torch.equal(actor[k], v) for k, v in policy.actor.state_dict().items())
    own = RaisePolicy(static, replace(cfg, refit_state="own"))
    kept = []
    own.refit(buf, kept, -2.0, torch.Generator().manual_seed(0))
    for t in range(3):
        rows, credit, stage, progress, counts_t = kept[t]
        assert rows.tolist() == [30 + t, 20 + t, 10 + t] and progress == t / 3
        assert torch.equal(counts_t, buf.counts_before(t, 40)) and stage == own._stage(-2.0)
    with pytest.raises(UserError, match="refit_state"):
        PolicyConfig(refit_state="last")
    with pytest.raises(UserError, match="round_update"):
        PolicyConfig(round_update="refit")  # credit batch: no labels to fit
    with pytest.raises(UserError, match="round_update"):
        PolicyConfig(round_update="sgd")


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_anchor_kl_holds_the_policy_near_the_actor_it_started_the_rounds_with(direction):
    """anchor_kl: the anchor is the actor before the first update; at one actor step (one epoch, one
    minibatch) the KL's gradient is zero there, so that update equals anchor_kl 0's; over several rounds
    a large weight keeps the scores' class softmax nearer the anchor than 0 does."""
    ft = synthetic_features(80, sem_dim=3, classes=2, seed=1)
    static = StaticState.from_features(ft)
    label = torch.from_numpy(ft.sem[:, 0]).double()
    base = PolicyConfig(per_class=2, seed=3, credit="row", row_loss="ranking", ppo_epochs=1, minibatches=1)
    start = RaisePolicy(static, base).actor.state_dict()
    buf = _labelled_rollout(RaisePolicy(static, base), 4, seed=5, label_of=lambda r: label[r])
    plain = RaisePolicy(static, base)
    anchored = RaisePolicy(static, replace(base, anchor_kl=5.0, anchor_direction=direction))
    plain.update(buf)
    stats = anchored.update(buf)
    assert stats["anchor_kl"] == pytest.approx(0.0, abs=1e-9)
    for key, value in start.items():
        assert torch.equal(anchored.anchor.state_dict()[key], value)
    for x, y in zip(plain.actor.state_dict().values(), anchored.actor.state_dict().values()):
        torch.testing.assert_close(x, y)
    zero = torch.zeros(80, dtype=torch.int64)

    def drift(weight):
        cfg = replace(base, ppo_epochs=4, anchor_kl=weight, anchor_direction=direction)
        policy = RaisePolicy(static, cfg)
        first = policy.scores(-2.0, 0.5, zero)
        for k in range(4):
            policy.update(_labelled_rollout(policy, 4, seed=k, label_of=lambda r: label[r]))
        pair = (first, policy.scores(-2.0, 0.5, zero))
        return class_kl(*(pair if direction == "forward" else pair[::-1]), static.classes, static.num_classes).item()

    assert drift(50.0) < 0.5 * drift(0.0)


def test_anchor_travels_in_the_training_state():
    static = StaticState.from_features(synthetic_features(40, sem_dim=3, classes=2, seed=1))
    cfg = PolicyConfig(per_class=2, seed=3, anchor_kl=1.0)
    policy = RaisePolicy(static, cfg)
    policy.update(_labelled_rollout(policy, 3, seed=1, label_of=lambda r: r.double()))
    state = policy.training_state()
    again = RaisePolicy(static, replace(cfg, seed=9))
    again.load_training_state(state)
    for key, value in policy.anchor.state_dict().items():
        assert torch.equal(again.anchor.state_dict()[key], value)
    assert "anchor" not in RaisePolicy(static, PolicyConfig(per_class=2)).training_state()
    with pytest.raises(UserError, match="anchor_kl"):
        PolicyConfig(anchor_kl=-0.1)
    with pytest.raises(UserError, match="anchor_kl"):
        PolicyConfig(anchor_kl=float("nan"))
    with pytest.raises(UserError, match="anchor_kl"):
        PolicyConfig(anchor_kl=1.0, credit="row", row_loss="ranking", round_update="refit")
    with pytest.raises(UserError, match="anchor_direction"):
        PolicyConfig(anchor_kl=1.0, anchor_direction="both")


def test_label_settings_are_refused_by_name():
    with pytest.raises(UserError, match="label_budget"):
        PolicyConfig(label_budget=-1)
    with pytest.raises(UserError, match="label_holdout"):
        PolicyConfig(label_holdout=1.0)
    with pytest.raises(UserError, match="row_loss"):
        PolicyConfig(label_budget=10, row_loss="none")


@pytest.mark.parametrize("val_norm,row_norm", [("mean", "none"), ("unit", "none"), ("mean", "unit")])
def test_train_policy_label_budget_labels_then_fits_before_round_one(tmp_path, tiny_model_dir, val_norm, row_norm):
    """rounds 0 with a label budget: the saved policy is the labels' fit. labels.json holds the
    sampled rows and their credit, which equal the credit recomputed on M_0 independently (with the
    run's `credit_val_norm`); the fitted scores order the fitted rows as their credit does."""
    from raise_select.training import TrainPolicyConfig, train_policy

    rows = plus_rows(24)
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    (tmp_path / "val.json").write_text(json.dumps(plus_rows(30)[26:]))
    pool = load_pool(tmp_path / "pool.json")
    random_features(pool.ids, 2).write(tmp_path / "features")
    cfg = TrainPolicyConfig(
        pool=str(tmp_path / "pool.json"),
        features=str(tmp_path / "features"),
        model=str(tiny_model_dir),
        val=str(tmp_path / "val.json"),
        out=str(tmp_path / "run"),
        rounds=0,
        steps=4,
        lr=1e-3,
        max_length=64,
        policy=PolicyConfig(
            per_class=1,
            label_budget=16,
            label_holdout=0.25,
            label_epochs=100,
            credit_val_norm=val_norm,
            credit_row_norm=row_norm,
        ),
    )
    train_policy(cfg)
    rec = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert len(rec["rows"]) == 16 == len(set(rec["rows"])) and rec["held_out"] == 4
    assert rec["objective"] == "response loss"
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64, lr=1e-3), total_steps=4)
    validator = Validator(load_pool(tmp_path / "val.json").examples, trainer.tokenizer, "neg_loss", 64)
    again = RowCredit(trainer, validator, sample=0, val_norm=val_norm, row_norm=row_norm).credit(rec["rows"], lr=1e-3)
    assert again.tolist() == pytest.approx(rec["credit"], rel=1e-4, abs=1e-12)
    other_val = {"mean": "unit", "unit": "mean"}[val_norm]
    other = RowCredit(trainer, validator, sample=0, val_norm=other_val, row_norm=row_norm)
    assert other.credit(rec["rows"], lr=1e-3).tolist() != pytest.approx(rec["credit"], rel=1e-3)
    other_row = {"none": "unit", "unit": "none"}[row_norm]
    plain = RowCredit(trainer, validator, sample=0, val_norm=val_norm, row_norm=other_row)
    assert plain.credit(rec["rows"], lr=1e-3).tolist() != pytest.approx(rec["credit"], rel=1e-3)
    assert rec["fit_spearman"] > 0.7 and rec["fit_losses"][1] < rec["fit_losses"][0]
    saved = RaisePolicy.read_config(tmp_path / "run" / "policy")
    assert saved.label_budget == 16


def _rounds_straight_and_resumed(tmp_path, tiny_model_dir, policy: PolicyConfig) -> list[dict]:
    """`train-policy` on a tiny Llama with `policy`: 2 rounds straight, and 1 round then a resume to 2; asserts
    both save the same actor and returns the straight run's round metrics."""
    from safetensors.torch import load_file

    from raise_select.training import TrainPolicyConfig, train_policy

    (tmp_path / "pool.json").write_text(json.dumps(plus_rows(24)))
    (tmp_path / "val.json").write_text(json.dumps(plus_rows(30)[26:]))
    random_features(load_pool(tmp_path / "pool.json").ids, 2).write(tmp_path / "features")
    base = TrainPolicyConfig(
        pool=str(tmp_path / "pool.json"),
        features=str(tmp_path / "features"),
        model=str(tiny_model_dir),
        val=str(tmp_path / "val.json"),
        out=str(tmp_path / "straight"),
        rounds=2,
        steps=4,
        select_every=2,
        lr=1e-3,
        max_length=64,
        policy=policy,
    )
    train_policy(base)
    train_policy(replace(base, out=str(tmp_path / "resumed"), rounds=1))
    train_policy(replace(base, out=str(tmp_path / "resumed"), rounds=2))
    a = load_file(tmp_path / "straight" / "policy" / "actor.safetensors")
    b = load_file(tmp_path / "resumed" / "policy" / "actor.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [m for m in lines if m.get("kind") == "round"]


@pytest.mark.parametrize("state", ["first", "own"])
def test_train_policy_refit_rounds_resume_to_the_uninterrupted_policy(tmp_path, tiny_model_dir, state):
    """`round_update: refit` end to end on a tiny Llama, after a label fit: each round's metrics carry the
    refit's groups (the label fit's + one per policy step); 1 round then a resume to 2 saves the same actor
    as 2 rounds straight (the groups travel in the checkpoint)."""
    policy = PolicyConfig(
        per_class=1,
        label_budget=8,
        label_holdout=0.25,
        label_epochs=5,
        credit="row",
        credit_sample=3,
        row_loss="ranking",
        round_update="refit",
        refit_epochs=4,
        refit_state=state,
    )
    rounds = _rounds_straight_and_resumed(tmp_path, tiny_model_dir, policy)
    assert [m["refit_groups"] for m in rounds] == [1 + 2, 1 + 2 + 2]  # the label fit's group, 2 steps a round
    assert all(m["refit_loss_last"] > 0 for m in rounds)


def test_train_policy_anchor_resumes_to_the_uninterrupted_policy(tmp_path, tiny_model_dir):
    """`anchor_kl` end to end on a tiny Llama after a label fit: 1 round then a resume to 2 saves the same
    actor as 2 rounds straight (the anchor, the actor that entered round 1, travels in the checkpoint; set
    again from the resumed actor, round 2's KL would start at 0), and round 2 records its KL to the anchor."""
    policy = PolicyConfig(
        per_class=1, label_budget=8, label_epochs=5, credit="row", credit_sample=3, row_loss="ranking", anchor_kl=1.0
    )
    rounds = _rounds_straight_and_resumed(tmp_path, tiny_model_dir, policy)
    assert rounds[1]["anchor_kl"] > 0


def test_state_val_size_keeps_p_on_the_first_items_and_the_labels_on_all(tmp_path, tiny_model_dir, monkeypatch):
    """`state_val_size`: P(M_0) (the reference episode's P0) is the validator's figure on the first
    2 of the 4 validation examples, while the label fit's credit equals the credit recomputed
    against all 4 (and differs from the credit against the first 2), and every labeller of the
    rounds reads all 4."""
    from raise_select.training import TrainPolicyConfig, train_policy
    from raise_select.training import credit as credit_module

    rows = plus_rows(24)
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    (tmp_path / "val.json").write_text(json.dumps(plus_rows(30)[26:]))
    pool = load_pool(tmp_path / "pool.json")
    random_features(pool.ids, 2).write(tmp_path / "features")
    read = []
    init = credit_module.RowCredit.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        read.append(self.n_val)

    monkeypatch.setattr(credit_module.RowCredit, "__init__", spy)
    cfg = TrainPolicyConfig(
        pool=str(tmp_path / "pool.json"),
        features=str(tmp_path / "features"),
        model=str(tiny_model_dir),
        val=str(tmp_path / "val.json"),
        state_val_size=2,
        out=str(tmp_path / "run"),
        rounds=1,
        steps=4,
        select_every=2,
        lr=1e-3,
        max_length=64,
        policy=PolicyConfig(per_class=1, label_budget=16, label_epochs=20, credit="row", credit_sample=3),
    )
    train_policy(cfg)
    assert read == [4, 4]  # the label fit's labeller, then round 0's
    monkeypatch.setattr(credit_module.RowCredit, "__init__", init)
    rec = json.loads((tmp_path / "run" / "labels.json").read_text())
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64, lr=1e-3), total_steps=4)
    examples = load_pool(tmp_path / "val.json").examples
    everything = Validator(examples, trainer.tokenizer, "neg_loss", 64)
    first = Validator(examples[:2], trainer.tokenizer, "neg_loss", 64)
    assert RowCredit(trainer, everything, sample=0).credit(rec["rows"], lr=1e-3).tolist() == pytest.approx(
        rec["credit"], rel=1e-4, abs=1e-12
    )
    assert RowCredit(trainer, first, sample=0).credit(rec["rows"], lr=1e-3).tolist() != pytest.approx(
        rec["credit"], rel=1e-3
    )
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    (reference,) = [m for m in lines if m.get("kind") == "reference"]
    assert reference["P0"] == pytest.approx(first(trainer.model), rel=1e-5)
    assert reference["P0"] != pytest.approx(everything(trainer.model), rel=1e-3)
    with pytest.raises(UserError, match="state_val_size"):
        replace(cfg, state_val_size=0).check()
