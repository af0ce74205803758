"""Unit tests of sac_continuous's pieces, called directly."""
import contextlib
import copy
import math
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import sac_continuous as sac


def normal_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def numerical_log_density(a, mean, std, scale, bias, h=1e-6):
    """log p(a) for a = bias + scale * tanh(u), u ~ N(mean, std), from a finite difference of the CDF (float64)."""

    def cdf(x):
        return normal_cdf((math.atanh((x - bias) / scale) - mean) / std)

    return math.log((cdf(a + h) - cdf(a - h)) / (2 * h))


def test_tanh_gaussian_log_prob_matches_numerical_density():
    mean = torch.tensor([[0.3, -0.7]])
    log_std = torch.tensor([[math.log(0.5), math.log(1.2)]])
    scale, bias = torch.tensor([2.0, 0.5]), torch.tensor([1.0, -0.25])
    for noise_values in ([0.0, 0.0], [1.3, -0.4], [-2.0, 1.7]):
        noise = torch.tensor([noise_values])
        action, log_prob = sac.tanh_gaussian(mean, log_std, noise, scale, bias)
        expected = sum(
            numerical_log_density(action[0, i].item(), mean[0, i].item(), log_std[0, i].exp().item(), scale[i].item(), bias[i].item())
            for i in range(2)
        )
        assert log_prob.shape == (1,)
        assert log_prob.item() == pytest.approx(expected, abs=2e-3)


def test_tanh_gaussian_log_prob_stays_exact_when_saturated():
    # u = 6: 1 - tanh(u)^2 = 2.5e-5, where the usual float32 `log(1 - tanh^2 + 1e-6)` is off by about 0.04
    mean, log_std, noise = torch.tensor([[6.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]])
    _, log_prob = sac.tanh_gaussian(mean, log_std, noise, torch.tensor([1.0]), torch.tensor([0.0]))
    u = 6.0
    expected = -0.5 * math.log(2 * math.pi) - math.log(1 - math.tanh(u) ** 2)
    assert log_prob.item() == pytest.approx(expected, abs=1e-3)


def test_actor_respects_asymmetric_bounds():
    low, high = [-1.0, 0.0, 2.0], [3.0, 1.0, 5.0]
    actor = sac.Actor(4, 3, low, high, hidden_sizes=(16,))
    torch.testing.assert_close(actor.action_scale, torch.tensor([2.0, 0.5, 1.5]))
    torch.testing.assert_close(actor.action_bias, torch.tensor([1.0, 0.5, 3.5]))
    obs = torch.randn(2000, 4) * 10
    actions = actor.act(obs)
    assert (actions >= torch.tensor(low)).all() and (actions <= torch.tensor(high)).all()
    # the spread covers most of each dimension's own range, not the first dimension's
    assert (actions.max(0).values - actions.min(0).values > 0.3 * (torch.tensor(high) - torch.tensor(low))).all()
    with torch.no_grad():
        for p in actor.fc_mean.parameters():
            p.zero_()
    torch.testing.assert_close(actor.act(obs[:1], deterministic=True)[0], torch.tensor([1.0, 0.5, 3.5]))
    with torch.no_grad():
        actor.fc_mean.bias.fill_(20.0)
    torch.testing.assert_close(actor.act(obs[:1], deterministic=True)[0], torch.tensor(high))


def test_deterministic_action_is_tanh_of_mean_and_repeatable():
    actor = sac.Actor(3, 2, [-2.0, -2.0], [2.0, 2.0], hidden_sizes=(8,))
    obs = torch.randn(5, 3)
    mean, _ = actor(obs)
    torch.testing.assert_close(actor.act(obs, deterministic=True), 2.0 * torch.tanh(mean))
    torch.testing.assert_close(actor.act(obs, deterministic=True), actor.act(obs, deterministic=True))
    assert not torch.allclose(actor.act(obs), actor.act(obs))


def test_stochastic_act_is_the_action_sample_draws_for_the_same_noise():
    """act() skips the log-probability but must draw exactly the training-time action: same noise, same action."""
    actor = sac.Actor(3, 2, [-2.0, -1.0], [2.0, 3.0], hidden_sizes=(8,))
    obs = torch.randn(5, 3)
    torch.manual_seed(7)
    acted = actor.act(obs)
    torch.manual_seed(7)
    sampled, _ = actor.sample(obs)
    torch.testing.assert_close(acted, sampled.detach(), rtol=0, atol=0)
    assert not torch.allclose(acted, actor.act(obs, deterministic=True))


def test_polyak_update_is_exact_and_leaves_source_alone():
    source, target = sac.QEnsemble(3, 1, (4,)), sac.QEnsemble(3, 1, (4,))
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
    sac.polyak_update(list(target.parameters()), list(source.parameters()), 0.1)
    sac.polyak_update(list(target.parameters()), list(source.parameters()), 0.1)
    for p, q in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(p, torch.full_like(p, 0.19))
        torch.testing.assert_close(q, torch.ones_like(q))


def test_q_ensemble_equals_independent_mlps_and_detach_params():
    qf = sac.QEnsemble(5, 2, (8, 6), num_q=2)
    obs, actions = torch.randn(7, 5), torch.randn(7, 2, requires_grad=True)
    out = qf(obs, actions)
    assert out.shape == (2, 7)
    x0 = torch.cat([obs, actions], -1)
    for j in range(2):
        x = x0
        for i, (w, b) in enumerate(zip(qf.weights, qf.biases)):
            x = x @ w[j] + b[j]
            if i < 2:
                x = torch.relu(x)
        torch.testing.assert_close(out[j], x.squeeze(-1))
    assert not torch.allclose(out[0], out[1])  # the members are initialised independently
    qf(obs, actions, detach_params=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in qf.parameters())


def test_replay_buffer_wraps_samples_and_roundtrips():
    rb = sac.ReplayBuffer(4, obs_dim=2, act_dim=1, device=torch.device("cpu"))
    for start in (0, 3):
        n = 3
        values = np.arange(start, start + n, dtype=np.float32)
        rb.add(np.stack([values, values], 1), values[:, None], values, np.stack([values + 100, values], 1), values % 2)
    assert rb.size == 4 and rb.pos == 2
    assert sorted(rb.data["rewards"].tolist()) == [2.0, 3.0, 4.0, 5.0]  # 0 and 1 were overwritten
    obs, actions, rewards, next_obs, terminations = rb.sample(500)
    assert set(rewards.tolist()) == {2.0, 3.0, 4.0, 5.0}
    torch.testing.assert_close(next_obs[:, 0], obs[:, 0] + 100)
    torch.testing.assert_close(terminations, rewards % 2)
    state = rb.state_dict()
    copy = sac.ReplayBuffer(4, 2, 1, torch.device("cpu"))
    copy.load_state_dict(state)
    assert (copy.pos, copy.size) == (2, 4)
    for key in rb.keys:
        torch.testing.assert_close(copy.data[key], rb.data[key])
    # only the filled part is saved, not the whole preallocated storage
    big = sac.ReplayBuffer(10_000, 2, 1, torch.device("cpu"))
    big.add(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(3), np.zeros((3, 2)), np.zeros(3))
    assert big.state_dict()["obs"].untyped_storage().nbytes() == 3 * 2 * 4


def test_soft_q_target_bootstraps_only_when_not_terminated():
    rewards = torch.tensor([1.0, 1.0])
    terminations = torch.tensor([0.0, 1.0])
    next_q, next_log_pi = torch.tensor([10.0, 10.0]), torch.tensor([-2.0, -2.0])
    target = sac.soft_q_target(rewards, terminations, next_q, next_log_pi, torch.tensor(0.5), 0.9)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * (10.0 + 1.0), 1.0]))


class CountingEnv(gym.Env):
    """obs = [episode, t]; reward = t; terminates when t reaches `terminate_at` (if set)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, terminate_at=None):
        self.terminate_at, self.episode, self.t = terminate_at, -1, 0

    def _obs(self):
        return np.array([self.episode, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.terminate_at is not None and self.t >= self.terminate_at, False, {}


def test_env_step_stores_real_transitions_across_next_step_autoreset():
    """Env 0 is truncated by a 3-step time limit, env 1 terminates at t = 2."""
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.TimeLimit(CountingEnv(), 3), lambda: gym.wrappers.TimeLimit(CountingEnv(terminate_at=2), 3)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    rb = sac.ReplayBuffer(100, 2, 1, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    autoreset = np.zeros(2, dtype=bool)
    for _ in range(7):
        obs, _, autoreset = sac.env_step(envs, rb, obs, np.zeros((2, 1), np.float32), autoreset)
    stored = {
        (tuple(o), tuple(n), r, d)
        for o, n, r, d in zip(rb.data["obs"][: rb.size].tolist(), rb.data["next_obs"][: rb.size].tolist(),
                              rb.data["rewards"][: rb.size].tolist(), rb.data["terminations"][: rb.size].tolist())
    }
    truncated_env = {((0, 0), (0, 1), 1, 0), ((0, 1), (0, 2), 2, 0), ((0, 2), (0, 3), 3, 0),  # truncated: bootstraps from (0, 3)
                     ((1, 0), (1, 1), 1, 0), ((1, 1), (1, 2), 2, 0), ((1, 2), (1, 3), 3, 0)}
    terminating_env = {((0, 0), (0, 1), 1, 0), ((0, 1), (0, 2), 2, 1),
                       ((1, 0), (1, 1), 1, 0), ((1, 1), (1, 2), 2, 1), ((2, 0), (2, 1), 1, 0)}
    as_float = {(tuple(map(float, o)), tuple(map(float, n)), float(r), float(d)) for o, n, r, d in truncated_env | terminating_env}
    assert rb.size == 11  # 14 env steps, 3 of them autoresets
    assert stored == as_float
    # never a transition from a final observation into the next episode's first one
    assert all(n[0] == o[0] and n[1] == o[1] + 1 for o, n, _, _ in stored)


def make_update_setup(obs_dim=3, act_dim=2, batch=64, seed=0):
    torch.manual_seed(seed)
    actor = sac.Actor(obs_dim, act_dim, [-1.0] * act_dim, [1.0] * act_dim, (32, 32))
    qf, qf_target = sac.QEnsemble(obs_dim, act_dim, (32, 32)), sac.QEnsemble(obs_dim, act_dim, (32, 32))
    qf_target.load_state_dict(qf.state_dict())
    obs = torch.randn(batch, obs_dim)
    batch_data = (obs, torch.rand(batch, act_dim) * 2 - 1, obs.sum(-1), torch.randn(batch, obs_dim), torch.zeros(batch))
    return actor, qf, qf_target, batch_data


def one_thread():
    return sac.Updater(1, contextlib.nullcontext)


def critic_half(data, nets, optimizers, gamma=0.99):
    """The critics' half of an Updater call as the script passes it, the next actions' noise drawn here."""
    next_noise = torch.randn(len(data[0]), nets[0].action_scale.shape[-1])
    return (lambda batch, nets: sac.critic_loss(*batch, *nets, gamma), (*data, next_noise), nets, optimizers)


def test_critic_update_fits_its_target():
    actor, qf, qf_target, data = make_update_setup()
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=1e-3)
    log_alpha = torch.tensor(math.log(0.2))
    updater = one_thread()
    losses = [updater(critic_half(data, (actor, qf, qf_target, log_alpha), [q_optimizer], gamma=0.0))[0][0].item() for _ in range(200)]
    # gamma = 0: the target is the reward alone (a function of the observation), which the critics must fit
    assert losses[-1] < 0.05 * losses[0]


def test_actor_and_alpha_updates_move_the_right_way():
    actor, qf, _, data = make_update_setup()
    obs = data[0]
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    log_alpha = torch.tensor(0.0, requires_grad=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=1e-2)
    q_before = qf(obs, actor.act(obs, deterministic=True)).min(0).values.mean()
    updater = one_thread()
    for _ in range(100):
        # a freshly initialised policy has entropy far above the target -|A| = -2: alpha must fall
        loss_fn = lambda: sac.actor_loss(obs, torch.randn(len(obs), 2), actor, qf, log_alpha, -2.0)  # noqa: E731
        updater((lambda batch, nets: loss_fn(), (obs,), (), [actor_optimizer, alpha_optimizer]))
    assert log_alpha.item() < -0.5
    assert qf(obs, actor.act(obs, deterministic=True)).min(0).values.mean() > q_before
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in qf.parameters())  # the critics are left alone
    # fixed temperature: no alpha loss
    fixed = torch.tensor(math.log(0.2))
    _, (_, alpha_loss, _) = sac.actor_loss(obs, torch.randn(len(obs), 2), actor, qf, fixed, -2.0)
    assert alpha_loss.item() == 0.0


def test_one_backward_gives_each_loss_its_own_gradient():
    """actor_loss returns the actor's and the temperature's losses summed for one backward pass: the actor's gradient
    must not include the alpha loss's, nor log_alpha's the actor loss's, as when each loss is differentiated alone
    (SGD with lr 1: the step is minus the gradient)."""
    actor, qf, _, data = make_update_setup()
    obs, target_entropy, noise = data[0], -2.0, torch.randn(len(data[0]), 2)
    reference_actor, log_alpha = copy.deepcopy(actor), torch.tensor(0.3, requires_grad=True)
    actions, log_pi = reference_actor.sample(obs, noise)
    actor_loss = (log_alpha.exp().detach() * log_pi - qf(obs, actions).min(0).values).mean()
    actor_grads = torch.autograd.grad(actor_loss, list(reference_actor.parameters()))
    alpha_grad, = torch.autograd.grad(-(log_alpha.exp() * (log_pi.detach() + target_entropy)).mean(), [log_alpha])
    one_thread()((lambda batch, nets: sac.actor_loss(*batch, *nets, target_entropy), (obs, noise), (actor, qf, log_alpha),
                  [torch.optim.SGD(actor.parameters(), lr=1.0), torch.optim.SGD([log_alpha], lr=1.0)]))
    for after, before, grad in zip(actor.parameters(), reference_actor.parameters(), actor_grads):
        torch.testing.assert_close(after - before, -grad)
    assert log_alpha.item() == pytest.approx(0.3 - alpha_grad.item(), rel=1e-6)


def sac_updates(threads, steps=20, seed=0):
    """`steps` full SAC updates through an Updater with `threads` threads; returns every parameter afterwards and
    the metrics of the last update."""
    actor, qf, qf_target, data = make_update_setup(seed=seed)
    log_alpha = torch.nn.Parameter(torch.tensor(0.0))
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=1e-2)
    actor_optimizers = [torch.optim.Adam(actor.parameters(), lr=1e-2), torch.optim.Adam([log_alpha], lr=1e-2)]
    updater = sac.Updater(threads, contextlib.nullcontext)
    actor_frozen, qf_frozen, log_alpha_frozen = sac.frozen(actor), sac.frozen(qf), log_alpha.detach()
    try:
        for _ in range(steps):
            noise = torch.randn(len(data[0]), 2)
            metrics = updater(critic_half(data, (actor_frozen, qf, qf_target, log_alpha_frozen), [q_optimizer]),
                              (lambda: sac.actor_loss(data[0], noise, actor, qf_frozen, log_alpha, -2.0), actor_optimizers))
            sac.polyak_update(list(qf_target.parameters()), list(qf.parameters()), 0.1)
    finally:
        updater.close()
    return [p.detach().clone() for m in (actor, qf, qf_target) for p in m.parameters()] + [log_alpha.detach().clone()], metrics


def test_two_threads_give_the_one_thread_result_bit_for_bit():
    """The actor's half on a second thread must read the critics before their step and the critic's half the actor
    and temperature before theirs: any race changes the parameters."""
    one, metrics_one = sac_updates(1)
    for _ in range(3):
        two, metrics_two = sac_updates(2)
        assert all(torch.equal(a, b) for a, b in zip(one, two))
        assert all(torch.equal(a, b) for a, b in zip(metrics_one[0] + metrics_one[1], metrics_two[0] + metrics_two[1]))
    other, _ = sac_updates(1, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(one, other))


def test_both_halves_use_the_parameters_from_before_the_update():
    """A simultaneous update: the actor's gradient through the critics as they were before this update's critic step,
    the critics' target through the actor and temperature from before theirs (SGD, lr 1: the step is minus the
    gradient, computed here by hand from copies)."""
    actor, qf, qf_target, data = make_update_setup()
    obs, noise = data[0], torch.randn(len(data[0]), 2)
    log_alpha = torch.nn.Parameter(torch.tensor(0.1))
    ref_actor, ref_qf, ref_log_alpha = copy.deepcopy(actor), copy.deepcopy(qf), log_alpha.detach().clone().requires_grad_()
    torch.manual_seed(123)  # critic_half draws the next actions' noise
    q_loss, _ = sac.critic_loss(*data, torch.randn(len(obs), 2), ref_actor, ref_qf, qf_target, ref_log_alpha.detach(), 0.99)
    q_grads = torch.autograd.grad(q_loss, list(ref_qf.parameters()))
    a_loss, _ = sac.actor_loss(obs, noise, ref_actor, ref_qf, ref_log_alpha, -2.0)
    a_grads = torch.autograd.grad(a_loss, list(ref_actor.parameters()) + [ref_log_alpha])
    for threads in (1, 2):
        a, q, la = copy.deepcopy(actor), copy.deepcopy(qf), torch.nn.Parameter(log_alpha.detach().clone())
        updater = sac.Updater(threads, contextlib.nullcontext)
        torch.manual_seed(123)
        a_frozen, q_frozen, la_frozen = sac.frozen(a), sac.frozen(q), la.detach()
        updater(critic_half(data, (a_frozen, q, qf_target, la_frozen), [torch.optim.SGD(q.parameters(), lr=1.0)]),
                (lambda: sac.actor_loss(obs, noise, a, q_frozen, la, -2.0), [torch.optim.SGD(list(a.parameters()) + [la], lr=1.0)]))
        updater.close()
        for after, before, grad in zip(list(q.parameters()), list(ref_qf.parameters()), q_grads):
            torch.testing.assert_close(after - before, -grad)
        for after, before, grad in zip(list(a.parameters()) + [la], list(ref_actor.parameters()) + [ref_log_alpha], a_grads):
            torch.testing.assert_close(after - before, -grad)


def test_frozen_view_follows_the_module_and_takes_no_gradient():
    actor = sac.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (8, 8))
    view = sac.frozen(actor)
    assert [name for name, _ in view.named_parameters()] == [name for name, _ in actor.named_parameters()]
    assert not any(p.requires_grad for p in view.parameters())
    optimizer = torch.optim.Adam(actor.parameters(), lr=0.1, fused=True)
    actor(torch.randn(4, 3))[0].sum().backward()
    optimizer.step()
    actor.load_state_dict({k: v + 1 for k, v in actor.state_dict().items()})  # as --resume does
    assert all(torch.equal(a, b) for a, b in zip(view.state_dict().values(), actor.state_dict().values()))
    assert all(a is not b for a, b in zip(view.parameters(), actor.parameters()))


def test_an_error_in_the_actor_half_is_raised_not_hung():
    actor, qf, qf_target, data = make_update_setup()
    log_alpha = torch.tensor(0.0)
    updater = sac.Updater(2, contextlib.nullcontext)

    def broken():
        raise RuntimeError("actor half failed")

    with pytest.raises(RuntimeError, match="actor half failed"):
        updater(critic_half(data, (actor, qf, qf_target, log_alpha), [torch.optim.SGD(qf.parameters(), lr=0.1)]),
                (broken, [torch.optim.SGD(actor.parameters(), lr=0.1)]))
    updater.close()


def test_crossed_handles_strides_that_do_not_divide():
    hits = [step for step in range(3, 31, 3) if sac.crossed(step, 10, 3)]
    assert hits == [12, 21, 30]
    assert not any(sac.crossed(step, 0, 1) for step in range(1, 5))


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = str(tmp_path / "latest.pt")
    sac.atomic_save({"step": 1}, path)
    with pytest.raises(Exception):
        sac.atomic_save({"bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["latest.pt"]


def test_load_checkpoint_refuses_bad_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(sac.CheckpointError, match="run code"):
        sac.load_checkpoint(str(evil))
    assert not (tmp_path / "pwned").exists()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(sac.CheckpointError, match="not a checkpoint of this project"):
        sac.load_checkpoint(str(tmp_path / "other.pt"))
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:100])
    with pytest.raises(sac.CheckpointError, match="not a loadable checkpoint"):
        sac.load_checkpoint(str(tmp_path / "trunc.pt"))
    with pytest.raises(sac.CheckpointError, match="no such file"):
        sac.load_checkpoint(str(tmp_path / "missing.pt"))


def test_resume_args_keep_saved_hyperparameters_and_refuse_changes():
    saved = {**vars(sac.Args(env_id="Pendulum-v1", total_timesteps=1000, batch_size=32, cuda=False)), "hidden_sizes": [64, 64]}
    args = sac.resume_args(saved, ["--resume", "x.pt"])
    assert (args.env_id, args.total_timesteps, args.batch_size, args.hidden_sizes, args.cuda) == ("Pendulum-v1", 1000, 32, (64, 64), False)
    # the budget and the device may change, to the default value too
    args = sac.resume_args(saved, ["--resume", "x.pt", "--total-timesteps", "5000", "--cuda", "--update-threads", "1"])
    assert args.total_timesteps == 5000 and args.cuda and args.resume == "x.pt" and args.batch_size == 32
    assert args.update_threads == 1  # the same result on one thread or two
    with pytest.raises(sac.ArgError, match="--batch-size cannot change when resuming"):
        sac.resume_args(saved, ["--resume", "x.pt", "--batch-size", "512"])


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 2_000_000}, "larger than --buffer-size"),
    ({"learning_starts": 2_000_000}, "--learning-starts"),
    ({"q_lr": 0.0}, "--q-lr must be positive"),
    ({"gamma": 1.5}, "--gamma"),
    ({"tau": 0.0}, "--tau must be positive"),
    ({"num_envs": 0}, "--num-envs must be positive"),
    ({"env_id": "HalfCheetah-v9"}, "did you mean HalfCheetah-v"),
])
def test_check_args_rejects_nonsense(change, message):
    with pytest.raises(sac.ArgError, match=message):
        sac.check_args(sac.Args(**change))
    sac.check_args(sac.Args())  # the defaults are valid


def test_check_spaces_rejects_discrete_and_unbounded_actions():
    box = gym.spaces.Box(-1, 1, (3,))
    with pytest.raises(sac.ArgError, match="not a Box"):
        sac.check_spaces("X", box, gym.spaces.Discrete(2))
    with pytest.raises(sac.ArgError, match="unbounded"):
        sac.check_spaces("X", box, gym.spaces.Box(-np.inf, np.inf, (2,)))
    sac.check_spaces("X", box, gym.spaces.Box(np.array([-1.0, 0.0]), np.array([3.0, 1.0])))
