"""ppo_continuous.py and a2c_continuous.py: GAE, normalisation and losses against plain references, then the scripts as
a user runs them."""

import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import read_scalars, refused, run_script, start_script, train_evals

import a2c_continuous as a2c
import ppo_continuous as ppo

SCRIPTS = ["ppo_continuous.py", "a2c_continuous.py"]


def reference_gae(rewards, values, next_value, terminations, truncations, real, gamma, lam):
    """Plain per-episode GAE: split each env's real transitions into episodes, bootstrap a truncated episode from the
    value of its final observation (the value computed on the following, autoreset, step), never a terminated one."""
    T, N = rewards.shape
    advantages = np.full((T, N), np.nan)
    for n in range(N):
        steps = [t for t in range(T) if real[t, n]]
        episodes, current = [], []
        for t in steps:
            current.append(t)
            if terminations[t, n] or truncations[t, n]:
                episodes.append(current)
                current = []
        if current:
            episodes.append(current)
        for episode in episodes:
            gae = 0.0
            for t in reversed(episode):
                v_next = values[t + 1, n] if t + 1 < T else next_value[n]
                delta = rewards[t, n] + gamma * (0.0 if terminations[t, n] else v_next) - values[t, n]
                ended = terminations[t, n] or truncations[t, n]
                gae = delta + (0.0 if ended else gamma * lam * gae)
                advantages[t, n] = gae
    return advantages


@pytest.mark.parametrize("module", [ppo, a2c])
def test_initial_policy_spread_follows_log_std_init(module):
    torch.manual_seed(0)
    for log_std_init in (0.0, -1.0):
        agent = module.Agent(4, 2, [-1.0, -1.0], [1.0, 1.0], (8, 8), log_std_init=log_std_init)
        obs = torch.zeros(20_000, 4)
        actions = agent.get_action_and_value(obs)[0]  # unclipped samples around the (shared) mean
        torch.testing.assert_close(actions.std(0), torch.full((2,), float(np.exp(log_std_init))), rtol=0.03, atol=0)


@pytest.mark.parametrize("lam", [0.95, 1.0])
def test_gae_matches_per_episode_reference_with_truncation_and_termination(lam):
    rng = np.random.default_rng(0)
    T, N = 9, 3
    rewards, values, next_value = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=N)
    terminations, truncations = np.zeros((T, N), bool), np.zeros((T, N), bool)
    truncations[2, 0] = True  # env 0: time limit at t=2, autoreset at t=3, then a new episode
    terminations[5, 1] = True  # env 1: terminates at t=5, autoreset at t=6
    truncations[8, 1] = True  # ... and truncated on the rollout's last step: bootstraps from next_value
    terminations[0, 2] = True  # env 2: terminates at once, autoreset at t=1, terminates again at t=4
    terminations[4, 2] = True
    dones = terminations | truncations
    real = np.ones((T, N), bool)
    real[1:] = ~dones[:-1]
    rewards[~real] = 0.0  # what an autoreset step returns
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)
    for module in (ppo, a2c):
        advantages, returns = module.compute_gae(
            t(rewards), t(values), t(terminations), t(dones), t(next_value), 0.99, lam
        )
        expected = reference_gae(rewards, values, next_value, terminations, truncations, real, 0.99, lam)
        np.testing.assert_allclose(advantages.numpy()[real], expected[real], rtol=1e-10)
        np.testing.assert_allclose(returns.numpy()[real], (expected + values)[real], rtol=1e-10)
    # the truncated step bootstraps from the final observation's value, the terminated one does not
    assert expected[2, 0] == pytest.approx(rewards[2, 0] + 0.99 * values[3, 0] - values[2, 0])
    assert expected[5, 1] == pytest.approx(rewards[5, 1] - values[5, 1])


def test_running_mean_std_matches_numpy_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = ppo.RunningMeanStd((4,), epsilon=0.0)
    for chunk in np.array_split(data, 7):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-10)
    copy = ppo.RunningMeanStd((4,))
    torch.save(rms.state_dict(), tmp_path / "rms.pt")
    copy.load_state_dict(torch.load(tmp_path / "rms.pt", weights_only=True))
    np.testing.assert_allclose(copy.mean, rms.mean)
    np.testing.assert_allclose(copy.var, rms.var)
    normalised = ppo.normalize_obs(data, rms.stats())
    np.testing.assert_allclose(normalised.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(normalised.std(0), 1, atol=1e-3)


def test_reward_scaler_uses_the_discounted_return():
    scaler = ppo.RewardScaler(num_envs=1, gamma=0.5)
    real, not_done = np.array([True]), np.array([False])
    for _ in range(200):
        scaler(np.array([1.0]), not_done, real)
    # returns converge to 1 / (1 - 0.5) = 2: their variance shrinks, so a reward of 1 is scaled up
    assert scaler.returns[0] == pytest.approx(2.0)
    assert scaler(np.array([1.0]), np.array([True]), real)[0] > 1.0
    assert scaler.returns[0] == 0.0  # reset at the episode's end


@pytest.mark.parametrize("module", [ppo, a2c])
def test_a_resumed_reward_scaler_keeps_its_statistics_not_the_episodes_returns(module, tmp_path):
    """--resume resets the envs: a killed episode's discounted return must not carry into the new episode's."""
    scaler = module.RewardScaler(num_envs=2, gamma=0.9)
    for reward in np.linspace(1.0, 5.0, 50):
        scaler(np.array([reward, -reward]), np.array([False, False]), np.array([True, True]))
    torch.save(scaler.state_dict(), tmp_path / "scaler.pt")
    state = torch.load(tmp_path / "scaler.pt", weights_only=True)
    resumed = module.RewardScaler(num_envs=2, gamma=0.9)
    resumed.load_state_dict(
        {**state, "returns": torch.tensor([7.0, 7.0], dtype=torch.float64)}
    )  # an earlier version's checkpoint
    assert resumed.rms.var == pytest.approx(scaler.rms.var) and resumed.rms.count == scaler.rms.count
    np.testing.assert_array_equal(resumed.returns, [0.0, 0.0])
    first = resumed(np.array([2.0, 2.0]), np.array([False, False]), np.array([True, True]))
    np.testing.assert_array_equal(resumed.returns, [2.0, 2.0])  # the new episodes' returns: their first reward alone
    np.testing.assert_allclose(first, np.clip(2.0 / np.sqrt(resumed.rms.var + 1e-8), -10, 10))


def test_ppo_loss_clips_the_ratio_pessimistically_and_reports_kl_and_clipfrac():
    """Schulman et al. 2017, eq. 7: past the clip range, the ratio gets no gradient where the advantage would push it
    further out, and keeps it where the unclipped term is the smaller (pessimistic) one."""
    torch.manual_seed(0)
    agent = ppo.Agent(3, 2, [-1.0, -1.0], [1.0, 1.0], (8,))
    obs, actions = torch.randn(2, 3), torch.randn(2, 2)
    with torch.no_grad():
        _, logprob, _, value = agent.get_action_and_value(obs, actions)
    log_ratio = torch.tensor([0.5, 0.1])  # ratios 1.65 (past 1 + clip_coef) and 1.105 (inside)
    args = ppo.Args(norm_adv=False, clip_coef=0.2, ent_coef=0.0, vf_coef=0.0)

    def loss_and_grad(advantages):
        agent.zero_grad()
        loss, metrics = ppo.ppo_loss(agent, obs, actions, logprob - log_ratio, advantages, value, value, args)
        loss.backward()
        return loss.item(), agent.actor_logstd.grad.abs().sum().item(), metrics

    loss, grad, metrics = loss_and_grad(torch.tensor([1.0, 0.0]))
    assert loss == pytest.approx(-1.2 / 2) and grad == 0.0
    loss, grad, _ = loss_and_grad(torch.tensor([-1.0, 0.0]))
    assert loss == pytest.approx(np.exp(0.5) / 2) and grad > 0.0
    ratio = log_ratio.exp()
    assert metrics["clipfrac"].item() == 0.5
    assert metrics["approx_kl"].item() == pytest.approx(((ratio - 1) - log_ratio).mean().item(), rel=1e-5)
    # the value moved 1.0 from the rollout's (past the clip), towards the return: the larger, clipped error counts
    returns, old_values = value + 1.0, value - 1.0
    for clip_vloss, expected in ((True, 0.5 * 1.8**2), (False, 0.5 * 1.0**2)):
        args = ppo.Args(norm_adv=False, clip_coef=0.2, clip_vloss=clip_vloss)
        _, metrics = ppo.ppo_loss(agent, obs, actions, logprob, torch.zeros(2), returns, old_values, args)
        assert metrics["value_loss"].item() == pytest.approx(expected, rel=1e-5)


def test_a2c_loss_ascends_the_advantage_weighted_log_probability():
    torch.manual_seed(0)
    agent = a2c.Agent(3, 2, [-1.0, -1.0], [1.0, 1.0], (8,))
    obs, actions = torch.randn(4, 3), torch.randn(4, 2)
    advantages, returns = torch.tensor([1.0, -1.0, 2.0, -0.5]), torch.randn(4)
    before, value = (x.detach() for x in agent.get_action_and_value(obs, actions)[1::2])
    loss, metrics = a2c.a2c_loss(agent, obs, actions, advantages, returns, a2c.Args(norm_adv=False, vf_coef=0.5))
    assert metrics["value_loss"].item() == pytest.approx(((returns - value) ** 2).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(-(advantages * before).mean().item() + 0.5 * metrics["value_loss"].item())
    optimizer = torch.optim.SGD(agent.parameters(), lr=1e-3)
    loss.backward()
    optimizer.step()
    after = agent.get_action_and_value(obs, actions)[1].detach()
    assert (advantages * (after - before)).sum() > 0


def test_agent_actions_respect_bounds_and_deterministic_is_the_mean():
    agent = ppo.Agent(3, 2, [-1.0, 0.0], [1.0, 5.0], (16,))
    obs = torch.randn(1000, 3)
    actions = agent.act(obs)
    assert (actions >= torch.tensor([-1.0, 0.0])).all() and (actions <= torch.tensor([1.0, 5.0])).all()
    torch.testing.assert_close(
        agent.act(obs, deterministic=True), torch.clamp(agent.actor_mean(obs), agent.action_low, agent.action_high)
    )
    action, logprob, entropy, value = agent.get_action_and_value(obs[:4])
    expected = torch.distributions.Normal(agent.actor_mean(obs[:4]), agent.actor_logstd.exp()).log_prob(action).sum(-1)
    torch.testing.assert_close(logprob, expected)
    assert value.shape == (4,) and entropy.shape == (4,)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(
    "env_id, mode", [("Pendulum-v1", "sync"), ("Hopper-v4", "async"), ("InvertedPendulum-v5", "sync")]
)
def test_smoke(script, env_id, mode, tmp_path):
    steps = (
        ["--num-steps", 64, "--num-envs", 2, "--total-timesteps", 384]
        if script.startswith("ppo")
        else ["--num-steps", 8, "--num-envs", 4, "--total-timesteps", 384]
    )
    result = run_script(
        script,
        "--env-id",
        env_id,
        "--vector-mode",
        mode,
        *steps,
        "--eval-every",
        128,
        "--eval-episodes",
        1,
        "--log-every",
        1,
        "--run-name",
        "smoke",
        "--no-progress-bar",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = read_scalars(str(tmp_path / "runs" / "smoke"))
    tags = {
        "charts/SPS",
        "charts/learning_rate",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/explained_variance",
        "eval/return_mean",
        "eval/return_std",
    }
    if script.startswith("ppo"):
        tags |= {"losses/approx_kl", "losses/clipfrac"}
    assert tags <= set(scalars)
    assert len(scalars["losses/policy_loss"]) >= 2 and len(scalars["eval/return_mean"]) >= 2
    lrs = [value for _, value in scalars["charts/learning_rate"]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]  # annealed
    ckpt = torch.load(tmp_path / "runs" / "smoke" / "checkpoints" / "final.pt", weights_only=True)
    assert ckpt["algo"] == script[:-3] and ckpt["global_step"] == 384
    assert ckpt["obs_rms"]["mean"].shape == (ckpt["policy_kwargs"]["obs_dim"],) and ckpt["obs_rms"]["count"] > 384


@pytest.mark.parametrize(
    "script, steps, minibatches",
    [("a2c_continuous.py", 1, []), ("ppo_continuous.py", 1, [1]), ("ppo_continuous.py", 4, [4])],
)
def test_rollouts_short_of_real_transitions_update_nothing_and_log_no_nan(script, steps, minibatches, tmp_path):
    """One env, tiny rollouts on Pendulum (200-step episodes): a rollout that is only the autoreset step has no
    transition to learn from, and one whose autoreset step leaves fewer transitions than minibatches has none empty."""
    extra = ["--num-minibatches", *minibatches, "--update-epochs", 1] if minibatches else []
    result = run_script(
        script,
        "--env-id",
        "Pendulum-v1",
        "--num-envs",
        1,
        "--num-steps",
        steps,
        *extra,
        "--total-timesteps",
        412,
        "--log-every",
        1,
        "--eval-every",
        0,
        "--eval-episodes",
        1,
        "--run-name",
        "short",
        "--no-progress-bar",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = read_scalars(str(tmp_path / "runs" / "short"))
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/explained_variance"):
        assert len(scalars[tag]) == 412 // steps and np.isfinite([v for _, v in scalars[tag]]).all(), tag
    if steps == 1:  # step 201 (counted from 1) is the autoreset alone: no update, so the last update's losses again
        values = dict(scalars["losses/value_loss"])
        assert values[201] == values[200] and values[202] != values[201]


@pytest.mark.parametrize(
    "script, budget, extra", [("ppo_continuous.py", 50_000, []), ("a2c_continuous.py", 100_000, [])]
)  # seed 1 at these budgets: 1000 for both (2026-12-08); PPO's learning rate anneals over the budget
def test_learns_inverted_pendulum_and_enjoy_reproduces_it(script, budget, extra, tmp_path):
    evals = train_evals(
        script,
        tmp_path,
        "--env-id",
        "InvertedPendulum-v4",
        "--total-timesteps",
        budget,
        "--eval-every",
        0,
        "--seed",
        1,
        *extra,
    )
    assert evals[-1][1] >= 950, evals
    # the saved policy replays with its frozen normalisation: within 10% of the run's own last evaluation
    replay = run_script(
        "enjoy.py", tmp_path / "runs" / "learn" / "checkpoints" / "final.pt", "--episodes", 5, cwd=tmp_path, timeout=300
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    mean = float(replay.stdout.split("mean return ")[1].split(" ")[0])
    assert mean >= 0.9 * evals[-1][1]

    # without its statistics the policy does much worse: they matter (seed 1: 1000 with them, PPO 74 and A2C 17 without)
    checkpoint = torch.load(tmp_path / "runs" / "learn" / "checkpoints" / "final.pt", weights_only=True)
    module, stats = (ppo if script.startswith("ppo") else a2c), checkpoint["obs_rms"]
    blank = {"mean": torch.zeros_like(stats["mean"]), "var": torch.ones_like(stats["var"]), "count": 1.0}
    env = gym.make("InvertedPendulum-v4")
    score = lambda obs_rms: module.evaluate(module.load_policy(dict(checkpoint, obs_rms=obs_rms)), env, 3, 0).mean()
    assert score(blank) < 0.5 * score(stats)


def test_ppo_resume_after_sigkill_restores_normalisation(tmp_path):
    common = [
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        6144,
        "--num-envs",
        2,
        "--num-steps",
        256,
        "--checkpoint-every",
        1024,
        "--log-every",
        1,
        "--eval-every",
        2048,
        "--eval-episodes",
        1,
        "--run-name",
        "killed",
        "--no-progress-bar",
    ]
    proc = start_script("ppo_continuous.py", *common, cwd=tmp_path)
    latest = tmp_path / "runs" / "killed" / "checkpoints" / "latest.pt"
    deadline = time.time() + 300
    while (
        not (latest.exists() and torch.load(latest, weights_only=True)["global_step"] >= 2048)
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(latest, weights_only=True)
    assert 2048 <= saved["global_step"] < 6144
    result = run_script("ppo_continuous.py", "--resume", latest, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = torch.load(tmp_path / "runs" / "killed" / "checkpoints" / "final.pt", weights_only=True)
    assert final["global_step"] == 6144
    assert final["obs_rms"]["count"] > saved["obs_rms"]["count"] > 2048  # the statistics went on from the saved ones
    steps = [step for step, _ in read_scalars(str(tmp_path / "runs" / "killed"))["losses/value_loss"]]
    assert steps == list(range(512, 6145, 512))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input(script, capsys, monkeypatch):
    cases = [
        (["--num-steps", 0], "--num-steps must be positive"),
        (["--gae-lambda", 1.5], "--gae-lambda must be in [0, 1]"),
        (["--vf-coef", -1], "--vf-coef must be >= 0"),
        (["--hidden-sizes", 64, 0], "--hidden-sizes must be positive"),
        (["--total-timesteps", 10], "is more than --total-timesteps 10"),
        (["--env-id", "CartPole-v1"], "needs flat Box observations"),
        (["--compile"], "Unrecognized options: --compile"),
    ]  # an off-policy option: not offered
    if script.startswith("ppo"):
        cases += [
            (["--num-minibatches", 4096], "--num-minibatches 4096 is more than the 2048 samples"),
            (["--target-kl", 0], "--target-kl must be positive"),
            (["--clip-coef", -0.1], "--clip-coef must be >= 0"),
        ]
    for args, message in cases:
        code, stderr = refused(ppo if script.startswith("ppo") else a2c, args, capsys, monkeypatch)
        assert code == 2 and message in stderr and "Traceback" not in stderr, (args, stderr)


def test_ctrl_c_with_async_workers_saves_latest(tmp_path):
    """Ctrl-C reaches the whole process group, workers included: the workers ignore it and the main process saves."""
    import subprocess
    import sys

    from conftest import ROOT, script_env

    cmd = [
        sys.executable,
        os.path.join(ROOT, "ppo_continuous.py"),
        "--env-id",
        "Pendulum-v1",
        "--vector-mode",
        "async",
        "--num-envs",
        2,
        "--num-steps",
        128,
        "--total-timesteps",
        1_000_000,
        "--log-every",
        1,
        "--run-name",
        "ctrlc",
        "--no-progress-bar",
    ]
    proc = subprocess.Popen(
        list(map(str, cmd)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=script_env(),
        start_new_session=True,
    )
    run = tmp_path / "runs" / "ctrlc"
    deadline = time.time() + 120
    while (
        proc.poll() is None
        and time.time() < deadline
        and not (run.exists() and read_scalars(str(run)).get("losses/value_loss"))
    ):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGINT, output[-2000:]
    assert "Traceback" not in output
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["global_step"] >= 256
