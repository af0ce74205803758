"""Unit tests of sac_continuous's pieces, called directly."""

import math
import os
import pickle
import signal
import sys

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
            numerical_log_density(
                action[0, i].item(), mean[0, i].item(), log_std[0, i].exp().item(), scale[i].item(), bias[i].item()
            )
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
    for key in rb.data:
        torch.testing.assert_close(copy.data[key], rb.data[key])
    # only the filled part is saved, not the whole preallocated storage
    big = sac.ReplayBuffer(10_000, 2, 1, torch.device("cpu"))
    big.add(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(3), np.zeros((3, 2)), np.zeros(3))
    assert big.state_dict()["obs"].untyped_storage().nbytes() == 3 * 2 * 4


def test_critic_loss_bootstraps_through_truncations_and_not_terminations():
    """The soft target r + gamma (1 - terminated) (min_j Q'_j(s', a') - alpha log pi(a'|s')),
    through stand-in networks."""

    class Fixed(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, obs, actions, detach_params=False):
            return self.value

        def sample(self, obs):
            return torch.zeros(2, 1), torch.tensor([-2.0, -2.0])  # next actions and their log-probabilities

    qf_target = Fixed(torch.tensor([[10.0, 10.0], [12.0, 12.0]]))  # two critics: the minimum, 10, is used
    qf = Fixed(torch.zeros(2, 2, requires_grad=True))
    rewards, dones = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])  # a truncated step stores 0 here
    loss, _ = sac.critic_loss(Fixed(None), qf, qf_target, torch.tensor(0.5), 0.9, None, None, rewards, None, dones)
    targets = torch.tensor([1.0 + 0.9 * (10.0 + 1.0), 1.0])
    assert loss.item() == pytest.approx(2 * (targets**2).mean().item())  # the sum over both critics of each one's MSE


def make_update_setup(obs_dim=3, act_dim=2, batch=64, seed=0):
    torch.manual_seed(seed)
    actor = sac.Actor(obs_dim, act_dim, [-1.0] * act_dim, [1.0] * act_dim, (32, 32))
    qf, qf_target = sac.QEnsemble(obs_dim, act_dim, (32, 32)), sac.QEnsemble(obs_dim, act_dim, (32, 32))
    qf_target.load_state_dict(qf.state_dict())
    obs = torch.randn(batch, obs_dim)
    batch_data = (obs, torch.rand(batch, act_dim) * 2 - 1, obs.sum(-1), torch.randn(batch, obs_dim), torch.zeros(batch))
    return actor, qf, qf_target, batch_data


def test_critic_update_fits_its_target():
    actor, qf, qf_target, data = make_update_setup()
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        # gamma = 0: the target is the reward alone (a function of the observation), which the critics must fit
        qf_loss, _ = sac.critic_loss(actor, qf, qf_target, torch.tensor(0.2), 0.0, *data)
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()
        losses.append(qf_loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_actor_update_raises_q_and_leaves_the_critics_alone():
    actor, qf, _, data = make_update_setup()
    obs = data[0]
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    q_before = qf(obs, actor.act(obs, deterministic=True)).min(0).values.mean()
    for _ in range(100):
        policy_loss, log_pi = sac.actor_loss(actor, qf, torch.tensor(0.2), obs)
        actor_optimizer.zero_grad()
        policy_loss.backward()
        actor_optimizer.step()
    assert qf(obs, actor.act(obs, deterministic=True)).min(0).values.mean() > q_before
    assert all(p.grad is None for p in qf.parameters())  # no gradient reaches the critics' weights
    assert not log_pi.requires_grad  # what the temperature's loss uses: no path back into the actor


class CountingEnv(gym.Env):
    """obs = [episode, t]; reward = t; terminates when t reaches `terminate_at` (if set)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, terminate_at=None, render_mode=None):
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


class SeededCountingEnv(CountingEnv):
    """A CountingEnv that terminates at t = 2 when its first reset's seed is even (else only a time limit ends it)."""

    def reset(self, *, seed=None, options=None):
        if seed is not None and self.episode < 0:
            self.terminate_at = 2 if seed % 2 == 0 else None
        return super().reset(seed=seed, options=options)


def test_main_stores_real_transitions_across_next_step_autoreset(tmp_path, monkeypatch):
    """main() in-process on two counting envs with a 3-step time limit: env 0 (even seed) is truncated, env 1 (odd
    seed) terminates at t = 2. The saved replay buffer holds exactly the real transitions, truncations with
    termination 0 (bootstrapped from their true last observation), never the autoreset step."""
    gym.register("test/Counting-v0", entry_point=SeededCountingEnv, max_episode_steps=3)
    argv = [
        "sac",
        "--env-id",
        "test/Counting-v0",
        "--num-envs",
        2,
        "--total-timesteps",
        14,
        "--learning-starts",
        12,
        "--batch-size",
        2,
        "--hidden-sizes",
        4,
        "--eval-episodes",
        1,
        "--runs-dir",
        tmp_path,
        "--run-name",
        "c",
        "--no-progress-bar",
        "--no-cuda",
    ]
    monkeypatch.setattr(sys, "argv", [str(a) for a in argv])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        sac.main()
    finally:  # main() installs its own Ctrl-C handler
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    buffer = torch.load(tmp_path / "c" / "checkpoints" / "buffer_14.pt", weights_only=True)
    stored = {
        (tuple(o), tuple(n), r, d)
        for o, n, r, d in zip(
            buffer["obs"].tolist(),
            buffer["next_obs"].tolist(),
            buffer["rewards"].tolist(),
            buffer["terminations"].tolist(),
        )
    }
    truncated_env = {
        ((0, 0), (0, 1), 1, 0),
        ((0, 1), (0, 2), 2, 0),
        ((0, 2), (0, 3), 3, 0),  # truncated: bootstraps from (0, 3)
        ((1, 0), (1, 1), 1, 0),
        ((1, 1), (1, 2), 2, 0),
        ((1, 2), (1, 3), 3, 0),
    }
    terminating_env = {
        ((0, 0), (0, 1), 1, 0),
        ((0, 1), (0, 2), 2, 1),
        ((1, 0), (1, 1), 1, 0),
        ((1, 1), (1, 2), 2, 1),
        ((2, 0), (2, 1), 1, 0),
    }
    as_float = {
        (tuple(map(float, o)), tuple(map(float, n)), float(r), float(d))
        for o, n, r, d in truncated_env | terminating_env
    }
    assert buffer["size"] == 11  # 14 env steps, 3 of them autoresets
    assert stored == as_float
    assert all(n[0] == o[0] and n[1] == o[1] + 1 for o, n, _, _ in stored)  # never across an episode boundary


def test_crossed_handles_strides_that_do_not_divide():
    hits = [step for step in range(3, 31, 3) if sac.crossed(step, 10, 3)]
    assert hits == [12, 21, 30]
    assert not any(sac.crossed(step, 0, 1) for step in range(1, 5))


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = str(tmp_path / "latest.pt")
    sac.atomic_save({"step": 1}, path)
    # a local lambda does not pickle: AttributeError up to Python 3.13, pickle.PicklingError from 3.14
    with pytest.raises((AttributeError, pickle.PicklingError)):
        sac.atomic_save({"bad": lambda: None}, path)
    with pytest.raises(sac.CheckpointError, match="cannot write"):  # a full disk, a directory that is gone: one line
        sac.atomic_save({"step": 2}, str(tmp_path / "gone" / "latest.pt"))
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
    saved = {
        **vars(sac.Args(env_id="Pendulum-v1", total_timesteps=1000, batch_size=32, cuda=False)),
        "hidden_sizes": [64, 64],
    }
    args = sac.resume_args(sac.Args, saved, ["--resume", "x.pt"])
    assert (args.env_id, args.total_timesteps, args.batch_size, args.hidden_sizes, args.cuda) == (
        "Pendulum-v1",
        1000,
        32,
        (64, 64),
        False,
    )
    # the budget and the device may change, to the default value too
    args = sac.resume_args(sac.Args, saved, ["--resume", "x.pt", "--total-timesteps", "5000", "--cuda"])
    assert args.total_timesteps == 5000 and args.cuda and args.resume == "x.pt" and args.batch_size == 32
    with pytest.raises(sac.ArgError, match="--batch-size cannot change when resuming"):
        sac.resume_args(sac.Args, saved, ["--resume", "x.pt", "--batch-size", "512"])
    # options of earlier versions: the thread count changed nothing and is ignored; bfloat16 changed the arithmetic
    assert sac.resume_args(sac.Args, {**saved, "update_threads": 2}, ["--resume", "x.pt"]).batch_size == 32
    with pytest.raises(sac.ArgError, match="--precision bfloat16"):
        sac.resume_args(sac.Args, {**saved, "precision": "bfloat16"}, ["--resume", "x.pt"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 2_000_000}, "larger than --buffer-size"),
        ({"learning_starts": 2_000_000}, "--learning-starts"),
        ({"q_lr": 0.0}, "--q-lr must be positive"),
        ({"gamma": 1.5}, "--gamma"),
        ({"tau": 0.0}, "--tau must be positive"),
        ({"num_envs": 0}, "--num-envs must be positive"),
        ({"hidden_sizes": (64, 0)}, "--hidden-sizes must be positive"),
        ({"seed": -1}, "--seed must be >= 0"),
    ],
)
def test_check_args_rejects_nonsense(change, message):
    with pytest.raises(sac.ArgError, match=message):
        sac.check_args(sac.Args(**change))
    sac.check_args(sac.Args())  # the defaults are valid
