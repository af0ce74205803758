"""d4pg_continuous.py: the categorical projection and the N-step windows against hand-computed references, the losses,
the transitions main() stores across next-step autoresets, then the script as run (Pendulum, Hopper, bad input)."""

import signal
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import read_scalars, refused, run_script, start_script, train_evals

import d4pg_continuous as d4pg

SCRIPT = "d4pg_continuous.py"
SMALL = ["--batch-size", 64, "--buffer-size", 5000, "--hidden-sizes", 64, 64, "--no-progress-bar"]
SUPPORT = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])  # delta_z = 1
NEXT_PROBS = [0.1, 0.2, 0.3, 0.25, 0.15]  # of Z' on SUPPORT


def eq7_reference(next_probs, reward, discount, support):
    """Bellemare et al. 2017, eq. 7 written out atom by atom: sum_j [1 - |clip(r + d z_j) - z_i| / delta_z]_0^1 p_j."""
    support = np.asarray(support, dtype=np.float64)
    delta_z = support[1] - support[0]
    shifted = np.clip(reward + discount * support, support[0], support[-1])
    return np.array([sum(max(0.0, 1 - abs(t - z) / delta_z) * p for t, p in zip(shifted, next_probs)) for z in support])


@pytest.mark.parametrize(
    "reward, discount, expected",
    [
        (0.5, 0.5, [0.0, 0.05, 0.4, 0.475, 0.075]),  # every atom between two support points, or on one
        (1.0, 1.0, [0.0, 0.1, 0.2, 0.3, 0.4]),  # every atom exactly on a support point; the top one clipped to 2
        (0.25, 1.5, [0.15, 0.15, 0.225, 0.1375, 0.3375]),  # atoms beyond both ends clipped to them, the rest split
        (-3.0, 0.5, [1.0, 0.0, 0.0, 0.0, 0.0]),  # all atoms below v_min: all the mass at v_min
        (0.3, 0.0, [0.0, 0.0, 0.7, 0.3, 0.0]),  # terminal: all the mass at the reward, split between 0 and 1
        (1.0, 0.0, [0.0, 0.0, 0.0, 1.0, 0.0]),  # terminal, the reward on a support point
        (7.0, 0.0, [0.0, 0.0, 0.0, 0.0, 1.0]),  # terminal, the reward above v_max
    ],
)
def test_categorical_projection_matches_hand_computed_values(reward, discount, expected):
    projected = d4pg.categorical_projection(
        torch.tensor([NEXT_PROBS]), torch.tensor([reward]), torch.tensor([discount]), SUPPORT
    )
    np.testing.assert_allclose(projected[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(expected, eq7_reference(NEXT_PROBS, reward, discount, SUPPORT.numpy()), atol=1e-12)
    assert projected.sum().item() == pytest.approx(1.0, abs=1e-6)
    if reward + discount * -2 >= -2 and reward + discount * 2 <= 2:  # inside the support the mean is kept exactly
        mean = (projected[0] * SUPPORT).sum().item()
        assert mean == pytest.approx(reward + discount * float(np.dot(NEXT_PROBS, SUPPORT.numpy())), abs=1e-6)


def test_categorical_projection_on_the_default_support_matches_eq7():
    """A batch on the default 51-atom support [-300, 1500] (delta_z 36), against eq. 7 atom by atom; rewards and
    discounts that put atoms on the ends, on support points and outside; probabilities sum to 1."""
    support = torch.linspace(d4pg.Args.v_min, d4pg.Args.v_max, d4pg.Args.num_atoms)
    generator = torch.Generator().manual_seed(0)
    next_probs = torch.softmax(3 * torch.randn(8, 51, generator=generator), -1)
    rewards = torch.tensor([1500.0, -300.0, 36.0, 10.0, -250.0, 800.0, 0.0, 5.0])
    discounts = torch.tensor([0.0, 0.0, 1.0, 0.99**5, 0.99, 0.95, 0.0, 0.5])
    projected = d4pg.categorical_projection(next_probs, rewards, discounts, support)
    for row in range(8):
        reference = eq7_reference(next_probs[row].double().numpy(), rewards[row].item(), discounts[row].item(), support)
        np.testing.assert_allclose(projected[row].numpy(), reference, atol=2e-5)
    assert projected[0, -1].item() == pytest.approx(1.0) and projected[1, 0].item() == pytest.approx(1.0)
    torch.testing.assert_close(projected.sum(-1), torch.ones(8))
    assert (projected >= 0).all()


def test_critic_loss_is_the_cross_entropy_to_the_projected_target():
    torch.manual_seed(0)
    actor_target = d4pg.Actor(4, 2, [-1.0, -1.0], [1.0, 1.0], (8,))
    qf, qf_target = d4pg.Critic(4, 2, (16,), 5, -2.0, 2.0), d4pg.Critic(4, 2, (16,), 5, -2.0, 2.0)
    obs, actions, next_obs = torch.randn(6, 4), torch.rand(6, 2) * 2 - 1, torch.randn(6, 4)
    rewards, discounts = torch.tensor([0.5, -1.0, 3.0, 0.0, 1.0, -0.3]), torch.tensor([0.9, 0.0, 0.5, 1.0, 0.0, 0.25])
    loss, qf_mean = d4pg.critic_loss(actor_target, qf, qf_target, obs, actions, rewards, next_obs, discounts)
    with torch.no_grad():
        next_probs = torch.softmax(qf_target.net(torch.cat([next_obs, actor_target(next_obs)], -1)), -1)
        probs = torch.softmax(qf.net(torch.cat([obs, actions], -1)), -1)
    terms = []
    for i in range(6):
        target = eq7_reference(next_probs[i].numpy(), rewards[i].item(), discounts[i].item(), SUPPORT.numpy())
        terms.append(-(target * np.log(probs[i].numpy())).sum())
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)
    assert qf_mean.item() == pytest.approx((probs * SUPPORT).sum(-1).mean().item(), abs=1e-6)
    assert loss.requires_grad and not qf_mean.requires_grad
    loss.backward()
    assert all(p.grad is None for p in qf_target.parameters()) and all(
        p.grad is None for p in actor_target.parameters()
    )


def test_actor_update_raises_the_expected_return_and_leaves_the_critic_alone():
    torch.manual_seed(0)
    actor, qf = d4pg.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (32,)), d4pg.Critic(3, 2, (32,), 11, -5.0, 5.0)
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    obs = torch.randn(64, 3)

    def expected_return():
        return (torch.softmax(qf(obs, actor(obs)), -1) * qf.support).sum(-1).mean().item()

    before = expected_return()
    assert d4pg.actor_loss(actor, qf, obs).item() == pytest.approx(-before, abs=1e-6)
    for _ in range(50):
        policy_loss = d4pg.actor_loss(actor, qf, obs)
        optimizer.zero_grad()
        policy_loss.backward()
        optimizer.step()
    assert expected_return() > before + 0.02  # 0.05 with this seed; the sign of a bug would lower it
    assert all(p.grad is None for p in qf.parameters())


def as_rows(out):
    """NStepWindows.add's arrays as a set of (obs, action, n-step return, bootstrap obs, discount) rows."""
    return {(tuple(o), a[0], r, tuple(n), d) for o, a, r, n, d in zip(*(x.tolist() for x in out))}


def test_n_step_windows_by_hand():
    """Two envs, n = 3, gamma = 0.5, obs = [episode, t], reward = t, action = 10 * step + env. Env 0 is truncated at
    t = 4, env 1 terminates at t = 2; each then takes an autoreset step (real False, its action ignored)."""
    windows = d4pg.NStepWindows(num_envs=2, n=3, gamma=0.5)
    steps = [  # obs, rewards, next_obs, terminations, truncations, real
        ([[0, 0], [0, 0]], [1, 1], [[0, 1], [0, 1]], [0, 0], [0, 0], [1, 1]),
        ([[0, 1], [0, 1]], [2, 2], [[0, 2], [0, 2]], [0, 1], [0, 0], [1, 1]),  # env 1 terminates
        ([[0, 2], [0, 2]], [3, 0], [[0, 3], [1, 0]], [0, 0], [0, 0], [1, 0]),  # env 1 autoresets
        ([[0, 3], [1, 0]], [4, 1], [[0, 4], [1, 1]], [0, 0], [1, 0], [1, 1]),  # env 0 is truncated
        ([[0, 4], [1, 1]], [0, 2], [[1, 0], [1, 2]], [0, 0], [0, 0], [0, 1]),  # env 0 autoresets
        ([[1, 0], [1, 2]], [1, 3], [[1, 1], [1, 3]], [0, 0], [0, 0], [1, 1]),
    ]
    expected = [
        set(),
        {((0, 0), 1, 1 + 0.5 * 2, (0, 2), 0.0), ((0, 1), 11, 2.0, (0, 2), 0.0)},  # env 1 terminated: discount 0
        {((0, 0), 0, 1 + 0.5 * 2 + 0.25 * 3, (0, 3), 0.125)},  # env 0's first full window
        {
            ((0, 1), 10, 2 + 0.5 * 3 + 0.25 * 4, (0, 4), 0.125),  # env 0 truncated: a full window, gamma^3
            ((0, 2), 20, 3 + 0.5 * 4, (0, 4), 0.25),  # then the pending steps with k = 2 and 1 rewards
            ((0, 3), 30, 4.0, (0, 4), 0.5),
        },
        set(),  # env 1 has two steps pending; env 0's autoreset step enters no window
        {((1, 0), 31, 1 + 0.5 * 2 + 0.25 * 3, (1, 3), 0.125)},  # env 1's new episode, never env 0's steps
    ]
    for k, ((obs, rewards, next_obs, terminations, truncations, real), want) in enumerate(zip(steps, expected)):
        actions = np.array([[10.0 * k], [10.0 * k + 1]])
        obs, next_obs = np.array(obs, np.float32), np.array(next_obs, np.float32)
        out = windows.add(np.array(real, bool), obs, actions, np.array(rewards, np.float32), next_obs,
                          np.array(terminations, bool), np.array(truncations, bool))  # fmt: skip
        assert [x.shape for x in out] == [(len(want), 2), (len(want), 1), (len(want),), (len(want), 2), (len(want),)]
        assert as_rows(out) == want, k
        obs[:] = -1  # the caller's arrays change after the call (a vector env may reuse them): the windows kept copies
    assert [len(window) for window in windows.windows] == [1, 2]


class CountingEnv(gym.Env):
    """obs = [episode, t], reward = t; terminates at t = 3 when its first reset's seed is even (else a time limit)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, render_mode=None):
        self.terminate_at, self.episode, self.t = None, -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and self.episode < 0:
            self.terminate_at = 3 if seed % 2 == 0 else None
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, self.t], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.episode, self.t], dtype=np.float32)
        return obs, float(self.t), self.terminate_at is not None and self.t >= self.terminate_at, False, {}


def run_main(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["d4pg_continuous.py", *map(str, argv)])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        d4pg.main()
    finally:  # main() installs its own Ctrl-C handler
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def test_main_stores_n_step_transitions_across_next_step_autoreset(tmp_path, monkeypatch):
    """main() in-process on two counting envs with a 4-step time limit, --n-step 2, gamma 0.5, 10 vector steps: env 0
    (seed 1) is truncated at t = 4 twice, env 1 (seed 2) terminates at t = 3 twice and starts a third episode. The
    saved buffer holds exactly these n-step transitions; none reaches across an episode end or an autoreset step."""
    gym.register("test/D4PGCounting-v0", entry_point=CountingEnv, max_episode_steps=4)
    argv = ["--env-id", "test/D4PGCounting-v0", "--num-envs", 2, "--total-timesteps", 20, "--learning-starts", 16,
            "--n-step", 2, "--gamma", 0.5, "--batch-size", 2, "--hidden-sizes", 4, "--eval-episodes", 1,
            "--runs-dir", tmp_path, "--run-name", "c", "--no-progress-bar", "--no-cuda"]  # fmt: skip
    run_main(argv, monkeypatch)
    buffer = torch.load(tmp_path / "c" / "checkpoints" / "buffer_20.pt", weights_only=True)
    columns = [buffer[key].tolist() for key in ("obs", "rewards", "next_obs", "discounts")]
    stored = sorted((tuple(o), r, tuple(n), d) for o, r, n, d in zip(*columns))
    truncated = [  # (obs, 2-step return, bootstrap obs, discount), episodes 0 and 1
        t
        for e in (0, 1)
        for t in [
            ((e, 0), 1 + 0.5 * 2, (e, 2), 0.25),
            ((e, 1), 2 + 0.5 * 3, (e, 3), 0.25),
            ((e, 2), 3 + 0.5 * 4, (e, 4), 0.25),  # the window that fills at the truncation: gamma^2
            ((e, 3), 4.0, (e, 4), 0.5),  # the step left: one reward, bootstraps from the true last obs with gamma
        ]
    ]
    terminating = [
        t
        for e in (0, 1)
        for t in [
            ((e, 0), 1 + 0.5 * 2, (e, 2), 0.25),
            ((e, 1), 2 + 0.5 * 3, (e, 3), 0.0),  # reaches the terminal step: no bootstrap
            ((e, 2), 3.0, (e, 3), 0.0),
        ]
    ] + [((2, 0), 1 + 0.5 * 2, (2, 2), 0.25)]  # episode 2's first window; its step t = 1 is still pending
    as_float = lambda rows: [(tuple(map(float, o)), float(r), tuple(map(float, n)), float(d)) for o, r, n, d in rows]
    assert buffer["size"] == 15
    assert stored == sorted(as_float(truncated + terminating))
    assert all(n[0] == o[0] and n[1] - o[1] in (1, 2) for o, _, n, _ in stored)  # within one episode, k <= n


def test_learns_pendulum(tmp_path):
    """Pendulum-v1's returns lie in about [-1000, 0] at gamma 0.99 (rewards -16 to 0 per step): its own support.
    Seed 1 evaluated every 1000 steps (2026-12-08): -1466 at 1000, then -227, -217, -195, -189, -191 to 6000."""
    evals = train_evals(
        SCRIPT, tmp_path, "--env-id", "Pendulum-v1", "--v-min", -1000, "--v-max", 0, "--total-timesteps", 4000,
        "--learning-starts", 1000, "--eval-every", 2000, "--eval-episodes", 10, "--seed", 1, "--hidden-sizes", 64, 64,
    )  # fmt: skip
    assert evals[-1][0] == 4000
    assert evals[-1][1] >= -300, evals


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    """Hopper-v4 with real updates from step 200, stopped by SIGTERM just after step 300, resumed to step 800."""
    cwd = tmp_path_factory.mktemp("hopper")
    common = ["--env-id", "Hopper-v4", "--learning-starts", 200, "--log-every", 100, "--eval-every", 500,
              "--eval-episodes", 1, "--checkpoint-every", 10_000, "--run-name", "h", *SMALL[:-1]]  # fmt: skip
    proc = start_script(SCRIPT, *common, "--total-timesteps", 100_000, cwd=cwd)  # plain progress lines (no terminal)
    deadline, output = time.time() + 300, []
    while time.time() < deadline and not any(line.startswith("step 300/") for line in output[-1:]):
        output.append(proc.stdout.readline())
        if output[-1] == "" and proc.poll() is not None:
            break
    proc.send_signal(signal.SIGTERM)
    output.append(proc.communicate(timeout=120)[0])
    assert proc.returncode == 128 + signal.SIGTERM, "".join(output)[-3000:]
    latest = cwd / "runs" / "h" / "checkpoints" / "latest.pt"
    stopped_at = torch.load(latest, weights_only=True)["global_step"]
    assert 300 <= stopped_at < 800 and "--resume" in output[-1]
    resumed = run_script(SCRIPT, "--resume", latest, "--total-timesteps", 800, cwd=cwd)
    assert resumed.returncode == 0 and "replay buffer" not in resumed.stderr, resumed.stderr[-3000:]
    assert f"resuming h at step {stopped_at}" in resumed.stdout
    return cwd / "runs" / "h"


def test_hopper_smoke_stop_and_resume(hopper_run):
    final = torch.load(hopper_run / "checkpoints" / "final.pt", weights_only=True)
    assert final["algo"] == "d4pg_continuous" and final["global_step"] == 800
    assert final["resume_state"]["num_updates"] == 800 - 200 + 1  # one per step from learning_starts, across the stop
    assert {"qf", "qf_target", "q_optimizer", "actor_optimizer", "actor_target"} <= set(final["resume_state"])
    torch.testing.assert_close(final["resume_state"]["qf"]["support"], torch.linspace(-300, 1500, 51))
    scalars = read_scalars(str(hopper_run))
    for tag in ("losses/qf_loss", "losses/qf_values", "losses/actor_loss"):  # one curve, no step twice
        assert [step for step, _ in scalars[tag]] == list(range(200, 801, 100)), tag
        assert all(np.isfinite(value) for _, value in scalars[tag])
    assert all(0 < value < np.log(51) + 1 for _, value in scalars["losses/qf_loss"])  # a cross-entropy over 51 atoms
    assert all(-300 <= value <= 1500 for _, value in scalars["losses/qf_values"])  # an expectation over the support
    assert [step for step, _ in scalars["eval/return_mean"]] == [500, 800]
    steps = [step for step, _ in scalars["charts/episodic_return"]]
    assert steps == sorted(set(steps)) and steps[-1] > 300


def test_enjoy_replays_the_checkpoint(hopper_run, tmp_path):
    best = torch.load(hopper_run / "checkpoints" / "best.pt", weights_only=True)
    result = run_script("enjoy.py", hopper_run, "--episodes", 1, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "d4pg_continuous on Hopper-v4" in result.stdout and "best.pt" in result.stdout
    mean = float(result.stdout.split("mean return ")[1].split(" ")[0])
    assert mean == pytest.approx(best["resume_state"]["best_return"], abs=0.01)  # the evaluation's deterministic policy


def test_bad_input(capsys, monkeypatch):
    cases = [
        (["--v-min", 10, "--v-max", 10], "--v-min must be below --v-max"),
        (["--v-min", 100, "--v-max", -100], "--v-min must be below --v-max"),
        (["--v-max", "inf"], "--v-min must be below --v-max (both finite)"),
        (["--n-step", 0], "--n-step must be positive, got 0"),
        (["--num-atoms", 1], "--num-atoms must be at least 2"),
    ]
    for args, message in cases:
        code, stderr = refused(d4pg, args, capsys, monkeypatch)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), (args, stderr)
