"""RaisePolicy and RolloutBuffer: acting, counts rebuilt from indices, the PPO update
against a reference built on materialised fused states, save/load, resume, and a bandit."""

from __future__ import annotations

import copy

import pytest
import torch

from raise_select.errors import UserError
from raise_select.policy import (
    PolicyConfig,
    RaisePolicy,
    RolloutBuffer,
    StaticState,
    actor_loss,
    class_log_prob,
    class_log_softmax,
    critic_features,
    critic_loss,
    fuse_state,
    gae,
)
from test_policy_state import synthetic_features


def _static(n=120, sem_dim=3, classes=4, seed=0) -> StaticState:
    return StaticState.from_features(synthetic_features(n, sem_dim=sem_dim, classes=classes, seed=seed))


def _rollout(policy: RaisePolicy, steps: int, seed: int, reward_of=None) -> tuple[RolloutBuffer, list[torch.Tensor]]:
    """One round with exploration; P_t telescopes from P_0 = -2. Returns the buffer and the counts seen at each step."""
    gen = torch.Generator().manual_seed(seed)
    n = len(policy.static)
    counts = torch.zeros(n, dtype=torch.int64)
    seen, buf, perf = [], RolloutBuffer(), -2.0
    reward_of = reward_of or (lambda idx: float(torch.randn(1, generator=gen)) * 0.01)
    for t in range(steps):
        action = policy.act(perf, t / steps, counts, explore=True, generator=gen)
        reward = reward_of(action.indices)
        seen.append(counts.clone())
        buf.add(perf, t / steps, action.indices, action.log_prob, action.value, reward, action.item_log_prob)
        counts.index_add_(0, action.indices, torch.ones_like(action.indices))
        perf += reward
    return buf, seen


def test_buffer_rebuilds_counts_exactly():
    policy = RaisePolicy(_static(), PolicyConfig(per_class=2))
    buf, seen = _rollout(policy, 6, seed=0)
    for t, counts in enumerate(seen):
        assert torch.equal(buf.counts_before(t, len(policy.static)), counts)
    assert buf.nbytes() < 6 * (2 * 8 * 8 + 64)  # indices + per-row log-probs + scalars per step, nothing of size N


def test_buffer_counts_random_batches_of_select_every():
    buf = RolloutBuffer()
    buf.add(0.0, 0.0, torch.tensor([0, 1]), -1.0, 0.0, 0.5)
    buf.add_counted(torch.tensor([1, 2]))  # a random step between two policy steps
    buf.add_reward(0.25)
    buf.add(0.0, 0.5, torch.tensor([3, 1]), -1.0, 0.0, 0.1)
    assert len(buf) == 2 and buf.reward == [0.75, 0.1]
    assert buf.counts_before(0, 5).tolist() == [0, 0, 0, 0, 0]
    assert buf.counts_before(1, 5).tolist() == [1, 2, 1, 0, 0]
    assert buf.counts_before(2, 5).tolist() == [1, 3, 1, 1, 0]
    assert buf.chosen(1).tolist() == [3, 1]


def test_act_top_b_and_log_prob():
    static = _static()
    policy = RaisePolicy(static, PolicyConfig(per_class=2))
    counts = torch.zeros(len(static), dtype=torch.int64)
    greedy = policy.act(-2.0, 0.0, counts, explore=False)
    scores = policy.actor(fuse_state(static, 0.0, 0.0, counts)).detach()  # stage is relative to P(M_0) = -2
    assert greedy.indices.numel() == 8
    torch.testing.assert_close(greedy.scores, scores[greedy.indices])
    assert greedy.log_prob == pytest.approx(class_log_prob(scores, static.classes, 4, greedy.indices).item(), abs=1e-5)
    for c in range(4):  # top-2 of every class
        members = (static.classes == c).nonzero().squeeze(1)
        best = set(members[scores[members].argsort(descending=True)[:2]].tolist())
        assert best <= set(greedy.indices.tolist())
    assert greedy.value == pytest.approx(policy.critic(critic_features(0.0, 0.0, counts)).item())


def test_use_max_repeats_leaves_out_rows_chosen_that_often():
    """use_max_repeats 3: a greedy policy whose top rows never change takes each of them 3 times, then
    the next ones; no row beyond 3; with 0 (the paper's form) the same 8 rows every step."""
    from dataclasses import replace

    static = _static(n=40)
    for cap, distinct in ((0, 8), (3, 32)):
        policy = RaisePolicy(static, PolicyConfig(per_class=2, use_rule="topk", use_max_repeats=cap))
        counts = torch.zeros(40, dtype=torch.int64)
        for t in range(12):
            a = policy.use(-2.0, t / 12, counts)
            assert len(set(a.indices.tolist())) == 8
            counts += torch.bincount(a.indices, minlength=40)
        assert int((counts > 0).sum()) == distinct and int(counts.max()) == (12 if cap == 0 else 3)
    # fewer than a batch of rows left under the cap: the cap is lifted rather than the batch cut
    policy = RaisePolicy(static, replace(PolicyConfig(per_class=2), use_max_repeats=1))
    spent = torch.ones(40, dtype=torch.int64)
    spent[:5] = 0
    assert len(set(policy.use(-2.0, 0.5, spent).indices.tolist())) == 8


def test_rollout_max_repeats_caps_the_sampled_rollouts_only():
    """rollout_max_repeats 2: sampled rollout batches never take a row a third time, the use-time rule is
    not touched by it, and the recorded log-probabilities are the uncapped softmax's; 0 samples freely."""
    static = _static(n=40)
    gen = torch.Generator().manual_seed(0)
    for cap in (0, 2):
        policy = RaisePolicy(static, PolicyConfig(per_class=2, rollout_max_repeats=cap))
        with torch.no_grad():  # a sharp policy: its few best rows dominate, so sampling repeats them
            policy.actor.out.weight.mul_(50.0)
        policy._actor_changed()
        counts = torch.zeros(40, dtype=torch.int64)
        for t in range(10):
            a = policy.rollout(-2.0, t / 10, counts, generator=gen)
            assert len(set(a.indices.tolist())) == 8
            full = class_log_softmax(policy.scores(-2.0, t / 10, counts), static.classes, static.num_classes)
            assert torch.allclose(a.item_log_prob, full[a.indices].double())
            counts += torch.bincount(a.indices, minlength=40)
        assert int(counts.sum()) == 80
        assert int(counts.max()) <= 2 if cap else int(counts.max()) > 2
    assert RaisePolicy(static, PolicyConfig(per_class=2, rollout_max_repeats=2)).use(-2.0, 0.0, counts) is not None
    with pytest.raises(UserError, match="rollout_max_repeats"):
        PolicyConfig(rollout_max_repeats=-1)


def test_pool_smaller_than_a_batch_is_refused():
    with pytest.raises(UserError, match="fewer than one batch"):
        RaisePolicy(_static(n=10, classes=4), PolicyConfig(per_class=3))
    with pytest.raises(UserError, match="ppo_epochs"):
        RaisePolicy(_static(), PolicyConfig(ppo_epochs=0))


def test_nan_reward_is_refused():
    policy = RaisePolicy(_static(), PolicyConfig())
    buf, _ = _rollout(policy, 3, seed=0)
    buf.reward[1] = float("nan")
    with pytest.raises(UserError, match="step 1"):
        policy.update(buf)


def test_update_matches_reference_on_fused_states():
    """One epoch, one minibatch: the split/accumulated update equals plain autograd on fuse_state."""
    static = _static(n=60)
    cfg = PolicyConfig(
        per_class=2, ppo_epochs=1, normalize_advantages=False, seed=3, ratio="product", advantage="gae", gamma=0.99
    )  # the paper's form
    policy = RaisePolicy(static, cfg)
    buf, seen = _rollout(policy, 5, seed=1)
    reference = copy.deepcopy(policy)
    stats = policy.update(buf)

    data = buf.tensors()
    adv, returns = gae(data["reward"], data["value"], 0.0, cfg.gamma, cfg.lam)
    new_lp = torch.stack(
        [
            class_log_prob(
                reference.actor(fuse_state(static, buf.perf_prev[t] + 2.0, buf.progress[t], seen[t])),
                static.classes,
                static.num_classes,
                buf.chosen(t),
            )
            for t in range(len(buf))
        ]
    )
    a_loss = actor_loss(new_lp.double() - data["old_log_prob"], adv, cfg.clip)
    reference.actor_opt.zero_grad()
    a_loss.backward()
    reference.actor_opt.step()
    feats = torch.stack([critic_features(buf.perf_prev[t] + 2.0, buf.progress[t], seen[t]) for t in range(len(buf))])
    c_loss = critic_loss(reference.critic(feats), returns.float())
    reference.critic_opt.zero_grad()
    c_loss.backward()
    reference.critic_opt.step()

    assert stats["actor_loss"] == pytest.approx(a_loss.item(), abs=1e-6)
    assert stats["critic_loss"] == pytest.approx(c_loss.item(), rel=1e-5)
    # approx_kl: E[(r - 1) - log r] per chosen row between the acting actor and the updated one
    log_r = torch.cat(
        [
            class_log_softmax(
                reference.actor(fuse_state(static, buf.perf_prev[t] + 2.0, buf.progress[t], seen[t])),
                static.classes,
                static.num_classes,
            )[buf.chosen(t)].double()
            - buf.item_log_prob[t]
            for t in range(len(buf))
        ]
    ).detach()
    assert stats["approx_kl"] == pytest.approx(float(((log_r.exp() - 1) - log_r).mean()), rel=1e-4, abs=1e-9)
    assert stats["approx_kl"] > 0
    for mine, ref in zip(
        [*policy.actor.parameters(), *policy.critic.parameters()],
        [*reference.actor.parameters(), *reference.critic.parameters()],
    ):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    static = _static()
    policy = RaisePolicy(static, PolicyConfig(per_class=2, hidden=8))
    buf, _ = _rollout(policy, 4, seed=0)
    policy.update(buf)
    policy.save(tmp_path / "policy")
    assert {p.name for p in (tmp_path / "policy").iterdir()} == {
        "actor.safetensors",
        "critic.safetensors",
        "policy.json",
    }
    restored_static = StaticState.from_features(
        synthetic_features(120, sem_dim=3, classes=4), RaisePolicy.read_normalizer(tmp_path / "policy")
    )
    loaded = RaisePolicy.load(tmp_path / "policy", restored_static)
    counts = torch.randint(0, 3, (120,))
    assert torch.equal(loaded.scores(-1.9, 0.4, counts), policy.scores(-1.9, 0.4, counts))
    assert loaded.value(-1.9, 0.4, counts) == policy.value(-1.9, 0.4, counts)
    assert loaded.cfg == policy.cfg
    with pytest.raises(UserError, match="num_classes"):
        RaisePolicy.load(tmp_path / "policy", _static(classes=5))


def test_resume_reproduces_uninterrupted_training(tmp_path):
    cfg = PolicyConfig(per_class=2, minibatches=2, ppo_epochs=2)
    straight = RaisePolicy(_static(), cfg)
    for k in range(2):
        straight.update(_rollout(straight, 4, seed=k)[0])

    first = RaisePolicy(_static(), cfg)
    first.update(_rollout(first, 4, seed=0)[0])
    first.save(tmp_path / "p")
    torch.save(first.training_state(), tmp_path / "opt.pt")
    resumed = RaisePolicy.load(tmp_path / "p", _static())
    resumed.load_training_state(torch.load(tmp_path / "opt.pt"))
    resumed.update(_rollout(resumed, 4, seed=1)[0])
    for a, b in zip(straight.actor.state_dict().values(), resumed.actor.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.critic.state_dict().values(), resumed.critic.state_dict().values()):
        assert torch.equal(a, b)


def test_ppo_learns_to_prefer_rewarding_items():
    """Bandit: reward = mean of sem feature 0 of the chosen batch. After some rounds the
    greedy policy picks items with a high feature 0 far more often than chance."""
    ft = synthetic_features(300, sem_dim=4, classes=4, seed=0)
    static = StaticState.from_features(ft)
    feature = torch.from_numpy(ft.sem[:, 0])
    good = feature > 1.0
    chance = good.float().mean().item()
    # gamma = 0: a step's reward depends on its own batch only, as in a bandit.
    policy = RaisePolicy(static, PolicyConfig(per_class=2, gamma=0.0, seed=0))
    steps = 10

    def greedy_good_share() -> float:
        counts = torch.zeros(len(static), dtype=torch.int64)
        hits = 0.0
        for t in range(steps):
            idx = policy.act(-2.0, t / steps, counts, explore=False).indices
            hits += good[idx].float().mean().item()
            counts.index_add_(0, idx, torch.ones_like(idx))
        return hits / steps

    before = greedy_good_share()
    for k in range(15):
        policy.update(_rollout(policy, steps, seed=k, reward_of=lambda idx: 0.05 * feature[idx].mean().item())[0])
    after = greedy_good_share()
    assert chance < 0.2 and before < 0.3
    assert after > 3 * chance and after > 0.6


def test_per_item_update_with_step_baseline_matches_reference_on_fused_states():
    """ratio = per_item, advantage = step_baseline: one clipped ratio per chosen row with the
    step's advantage R_t - b_t (gamma 0), against plain autograd on fuse_state."""
    static = _static(n=60)
    cfg = PolicyConfig(
        per_class=2,
        ppo_epochs=1,
        normalize_advantages=False,
        seed=3,
        gamma=0.0,
        ratio="per_item",
        advantage="step_baseline",
    )
    policy = RaisePolicy(static, cfg)
    policy.observe_episode([0.5, 0.2, 0.1, 0.0, -0.1])  # a reference episode of 5 steps
    buf, seen = _rollout(policy, 5, seed=1)
    reference = copy.deepcopy(policy)
    stats = policy.update(buf)

    adv = torch.tensor(buf.reward, dtype=torch.float64) - torch.tensor([0.5, 0.2, 0.1, 0.0, -0.1], dtype=torch.float64)
    losses = []
    for t in range(len(buf)):
        log_p = class_log_softmax(
            reference.actor(fuse_state(static, buf.perf_prev[t] + 2.0, buf.progress[t], seen[t])),
            static.classes,
            static.num_classes,
        )[buf.chosen(t)].double()
        ratio = (log_p - buf.item_log_prob[t]).exp()
        # eq. 12 per row, written out: -min(r A, clip(r) A), averaged over the rows of the step
        surrogate = torch.minimum(ratio * adv[t], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv[t])
        losses.append(-surrogate.mean())
    a_loss = torch.stack(losses).mean()
    reference.actor_opt.zero_grad()
    a_loss.backward()
    reference.actor_opt.step()
    assert stats["actor_loss"] == pytest.approx(a_loss.item(), abs=1e-6)
    for mine, ref in zip(policy.actor.parameters(), reference.actor.parameters()):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
    # the round was folded into the running mean per step (two episodes now)
    expected = [(b + r) / 2 for b, r in zip([0.5, 0.2, 0.1, 0.0, -0.1], buf.reward)]
    assert policy.step_baseline == pytest.approx(expected) and policy.baseline_episodes == 2


def test_step_baseline_advantage_by_hand():
    """A_t = sum_l gamma^l (R_{t+l} - b_{t+l}) with b the running mean per step."""
    policy = RaisePolicy(_static(), PolicyConfig(per_class=1, gamma=0.5, advantage="step_baseline"))
    policy.observe_episode([1.0, 0.0, 2.0])
    policy.observe_episode([3.0, 2.0, 0.0])
    assert policy.step_baseline == [2.0, 1.0, 1.0]
    buf = RolloutBuffer()
    for reward in (4.0, 1.0, 0.0):
        buf.add(0.0, 0.0, torch.tensor([0, 1, 2, 3]), 0.0, 0.0, reward)
    adv, _ = policy.advantages(buf)
    # centred rewards 2, 0, -1: A_2 = -1, A_1 = 0 + 0.5 (-1) = -0.5, A_0 = 2 + 0.5 (-0.5) = 1.75
    assert adv.tolist() == pytest.approx([1.75, -0.5, -1.0])
    with pytest.raises(ValueError, match="policy steps"):
        policy.observe_episode([1.0, 2.0])


def test_use_rule_sample_draws_and_topk_is_greedy():
    static = _static()
    counts = torch.zeros(len(static), dtype=torch.int64)
    greedy = RaisePolicy(static, PolicyConfig(per_class=2, use_rule="topk"))
    sampled = RaisePolicy(static, PolicyConfig(per_class=2, use_rule="sample"))
    sampled.actor.load_state_dict(greedy.actor.state_dict())
    top = greedy.use(-2.0, 0.5, counts).indices
    assert torch.equal(top, greedy.act(-2.0, 0.5, counts, explore=False).indices)
    draws = {
        tuple(sampled.use(-2.0, 0.5, counts, generator=torch.Generator().manual_seed(s)).indices.tolist())
        for s in range(5)
    }
    assert len(draws) > 1


def test_default_policy_learns_a_rare_good_family_despite_a_time_trend():
    """A bandit with the shape of a training run: R_t = a decaying trend (early steps gain
    more, whatever the batch) + 0.02 x the share of the batch from a 15% 'good' set + noise.
    With the defaults the rollouts' share of good rows rises far above its base rate within
    10 rounds, on every seed; the paper's form stays near the base rate."""
    ft = synthetic_features(400, sem_dim=4, classes=1, seed=0)
    static = StaticState.from_features(ft)
    feature = torch.from_numpy(ft.sem[:, 0])
    good = feature > torch.quantile(feature, 0.85)
    steps, rounds = 30, 10

    def run(cfg: PolicyConfig, seed: int) -> float:
        policy = RaisePolicy(static, cfg)
        noise = torch.Generator().manual_seed(100 + seed)
        trend = [0.3 * 0.9**t for t in range(steps)]
        reward = lambda t, idx: (
            trend[t] + 0.02 * good[idx].float().mean().item() + 0.003 * torch.randn(1, generator=noise).item()
        )
        policy.observe_episode([trend[t] + 0.02 * 0.15 for t in range(steps)])  # what a random episode gives
        share = 0.0
        for k in range(rounds):
            gen = torch.Generator().manual_seed(1000 * seed + k)
            buf, counts, hits = RolloutBuffer(), torch.zeros(len(static), dtype=torch.int64), 0.0
            for t in range(steps):
                a = policy.act(-2.0, t / steps, counts, explore=True, generator=gen)
                buf.add(-2.0, t / steps, a.indices, a.log_prob, a.value, reward(t, a.indices), a.item_log_prob)
                counts.index_add_(0, a.indices, torch.ones_like(a.indices))
                hits += good[a.indices].float().mean().item()
            policy.update(buf)
            share = hits / steps
        return share

    for seed in range(3):
        assert run(PolicyConfig(per_class=8, seed=seed), seed) > 0.5
    assert run(PolicyConfig(per_class=8, seed=0, gamma=0.99, ratio="product", advantage="gae"), 0) < 0.3


def test_target_kl_stops_after_the_epoch_that_crosses_it():
    """target_kl: the update stops after the first epoch whose approximate KL exceeds it, and
    then equals an update of just that many epochs (weights and KL)."""
    from dataclasses import replace

    static = _static(n=60)
    base = PolicyConfig(per_class=2, ppo_epochs=6, minibatches=2, ratio="per_item", seed=2)
    buf, _ = _rollout(RaisePolicy(static, base), 5, seed=3)
    kl_after = []  # the approximate KL after an update of E epochs, E = 1..6
    fixed = {}
    for epochs in range(1, 7):
        policy = RaisePolicy(static, replace(base, ppo_epochs=epochs))
        stats = policy.update(buf)
        assert stats["ppo_epochs_done"] == epochs
        kl_after.append(stats["approx_kl"])
        fixed[epochs] = policy
    target = (kl_after[1] + kl_after[2]) / 2
    expected = next((e + 1 for e, kl in enumerate(kl_after) if kl > target), 6)
    assert 1 < expected < 6  # the threshold falls inside the run, not at either end
    policy = RaisePolicy(static, replace(base, target_kl=target))
    stats = policy.update(buf)
    assert stats["ppo_epochs_done"] == expected
    assert stats["approx_kl"] == kl_after[expected - 1]
    for a, b in zip(policy.actor.state_dict().values(), fixed[expected].actor.state_dict().values()):
        assert torch.equal(a, b)


def test_clip_fraction_and_entropy_by_hand():
    """clip_fraction: share of per-row ratios outside [1 - eps, 1 + eps] in the last epoch, here
    the second, whose ratios are those of the actor after one epoch; entropy: the mean class
    entropy under the acting actor. Both recomputed on fuse_state."""
    from dataclasses import replace

    from raise_select.policy import class_entropy

    static = _static(n=60)
    cfg = PolicyConfig(per_class=2, ppo_epochs=2, ratio="per_item", actor_lr=1.0, seed=1)
    policy = RaisePolicy(static, cfg)
    buf, seen = _rollout(policy, 5, seed=4)
    acting = copy.deepcopy(policy.actor)
    one_epoch = RaisePolicy(static, replace(cfg, ppo_epochs=1))
    one_epoch.update(buf)
    stats = policy.update(buf)

    def fused(t):
        return fuse_state(static, buf.perf_prev[t] + 2.0, buf.progress[t], seen[t])

    with torch.no_grad():
        shares = []
        for t in range(len(buf)):
            log_p = class_log_softmax(one_epoch.actor(fused(t)), static.classes, static.num_classes)[buf.chosen(t)]
            ratio = (log_p.double() - buf.item_log_prob[t]).exp()
            shares.append(((ratio - 1).abs() > cfg.clip).double().mean().item())
        entropy = sum(
            class_entropy(acting(fused(t)), static.classes, static.num_classes).item() for t in range(len(buf))
        ) / len(buf)
    clip_fraction = sum(shares) / len(shares)
    assert 0 < clip_fraction < 1
    assert stats["clip_fraction"] == pytest.approx(clip_fraction, abs=1e-12)
    assert stats["entropy"] == pytest.approx(entropy, rel=1e-5)


def test_cached_projection_follows_every_weight_change():
    """The static projection is cached between calls; after an update and after load_state_dict
    (also into a copy) the scores are those of the actor's current weights."""
    static = _static()
    policy = RaisePolicy(static, PolicyConfig(per_class=2))
    counts = torch.randint(0, 3, (len(static),))

    def fresh(p):
        with torch.no_grad():
            return p.actor(fuse_state(static, 0.1, 0.4, counts))

    policy.scores(-2.0, 0.0, counts)  # P(M_0) = -2; fills the cache
    torch.testing.assert_close(policy.scores(-1.9, 0.4, counts), fresh(policy))
    policy.update(_rollout(policy, 4, seed=0)[0])
    torch.testing.assert_close(policy.scores(-1.9, 0.4, counts), fresh(policy))
    other = RaisePolicy(static, PolicyConfig(per_class=2, seed=7))
    copied = copy.deepcopy(policy)
    copied.actor.load_state_dict(other.actor.state_dict())
    torch.testing.assert_close(copied.scores(-1.9, 0.4, counts), fresh(other))
    torch.testing.assert_close(policy.scores(-1.9, 0.4, counts), fresh(policy))  # the original keeps its own
    assert not torch.allclose(fresh(policy), fresh(other))
