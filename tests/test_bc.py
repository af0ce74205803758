"""bc_continuous.py: a Minari dataset recorded by enjoy.py, cloning from it, DAgger's aggregation, bad input.

The expert is tests/data/sac_pendulum_expert.pt, a policy-only SAC checkpoint (tests/README.md gives its command)."""

import json
import math
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT, read_scalars, run_script, script_env

import bc_continuous as bc

EXPERT = os.path.join(ROOT, "tests", "data", "sac_pendulum_expert.pt")


def minari_env(datasets):
    return script_env(MINARI_DATASETS_PATH=str(datasets))


def record(datasets, name, episodes):
    """enjoy.py records the expert's episodes as a Minari dataset; its metadata."""
    argv = [EXPERT, "--episodes", episodes, "--record-dataset", name]
    result = run_script("enjoy.py", *argv, cwd=datasets.parent, env=minari_env(datasets))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(datasets / name / "data" / "metadata.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A datasets folder with pendulum-one-v0: one episode of the expert."""
    path = tmp_path_factory.mktemp("minari") / "datasets"
    record(path, "pendulum-one-v0", 1)
    return path


def test_bc_loss_is_the_gaussian_log_likelihood_or_the_squared_error():
    torch.manual_seed(0)
    actor = bc.Actor(3, 2, [-1.0, -2.0], [1.0, 2.0], hidden_sizes=(8,))
    obs, actions = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    mean, log_std = actor(obs)
    assert (mean.abs() < torch.tensor([1.0, 2.0])).all()  # inside the bounds
    nll, _ = bc.bc_loss(actor, obs, actions, "nll")
    reference = -torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1).mean()
    torch.testing.assert_close(nll, reference)
    mse, _ = bc.bc_loss(actor, obs, actions, "mse")
    torch.testing.assert_close(mse, ((mean - actions) ** 2).sum(-1).mean())
    assert (actor.act(obs, deterministic=True) == mean).all()
    sample = actor.act(obs * 100)  # clipped to the bounds
    assert (sample.abs() <= torch.tensor([1.0, 2.0])).all()


def test_dagger_labels_exactly_the_states_the_learner_visits():
    env = gym.make("Pendulum-v1")
    learner = lambda obs: np.clip(-2.0 * obs[2:3], -2, 2).astype(np.float32)  # a fixed policy that is not the expert
    expert = lambda obs: np.array([obs[0] + 10 * obs[1]])  # labels that name their state
    visited, labels = bc.dagger_rollout(learner, expert, env, episodes=2, seed=7)
    replay = []  # the learner's own trajectories, played again
    for episode in range(2):
        (obs, _), done = env.reset(seed=7 + episode), False
        while not done:
            replay.append(obs)
            obs, _, terminated, truncated, _ = env.step(learner(obs))
            done = terminated or truncated
    assert visited.shape == (400, 3) and labels.shape == (400, 1)
    np.testing.assert_array_equal(visited, np.asarray(replay))
    np.testing.assert_array_equal(labels[:, 0], visited[:, 0] + 10 * visited[:, 1])

    data = bc.Demonstrations(np.zeros((3, 3)), np.zeros((3, 1)), torch.device("cpu"))
    data.add(visited, labels)  # aggregation: the dataset's pairs, then exactly these
    assert len(data.obs) == 403 and data.state_dict()["obs"].shape == (400, 3)
    restored = bc.Demonstrations(np.zeros((3, 3)), np.zeros((3, 1)), torch.device("cpu"))
    restored.load_state_dict(data.state_dict())
    assert torch.equal(restored.obs, data.obs) and torch.equal(restored.actions, data.actions)


def test_bc_clones_a_pendulum_expert_from_its_recorded_episodes_and_enjoy_replays_it(tmp_path):
    meta = record(tmp_path / "datasets", "pendulum-expert-v0", 20)
    assert meta["total_episodes"] == 20 and meta["total_steps"] == 4000
    expert_return, random_return = meta["ref_max_score"], meta["ref_min_score"]  # the expert's own mean return
    assert expert_return > -250 and random_return < -900
    args = ["--dataset", "pendulum-expert-v0", "--total-timesteps", 3000, "--eval-every", 1000, "--eval-episodes", 10]
    result = run_script(
        "bc_continuous.py",
        *args,
        "--run-name",
        "bc",
        "--no-progress-bar",
        cwd=tmp_path,
        env=minari_env(tmp_path / "datasets"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    evals = read_scalars(str(tmp_path / "runs" / "bc"))["eval/return_mean"]
    normalized = (evals[-1][1] - random_return) / (expert_return - random_return)
    assert normalized >= 0.8, (evals, expert_return)  # at least 80% of the way from random to the expert

    replay = run_script("enjoy.py", tmp_path / "runs" / "bc", cwd=tmp_path)  # best.pt, on the run's eval seeds
    assert replay.returncode == 0, replay.stderr[-2000:]
    best = max(value for _, value in evals)
    assert f"mean return {best:.2f}" in replay.stdout


def test_a_dagger_run_adds_the_learners_states_with_the_experts_labels(tmp_path, datasets):
    args = ["--dataset", "pendulum-one-v0", "--dagger-expert", EXPERT, "--dagger-iterations", 2, "--dagger-episodes", 1]
    args += ["--total-timesteps", 300, "--eval-every", 0, "--eval-episodes", 1, "--run-name", "dagger"]
    result = run_script("bc_continuous.py", *args, "--no-progress-bar", cwd=tmp_path, env=minari_env(datasets))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DAgger iteration 2: the expert labelled 200 states, 600 in all" in result.stdout
    labels = read_scalars(str(tmp_path / "runs" / "dagger"))["dagger/expert_labels"]
    assert labels == [(100, 200.0), (200, 200.0)]  # iterations start at 1/3 and 2/3 of the gradient steps

    checkpoint = torch.load(tmp_path / "runs" / "dagger" / "checkpoints" / "latest.pt", weights_only=True)
    data = torch.load(tmp_path / "runs" / "dagger" / "checkpoints" / checkpoint["resume_state"]["buffer_file"])
    assert data["obs"].shape == (400, 3)  # DAgger's states only: the dataset's are read from the dataset
    stats = checkpoint["obs_rms"]
    states = data["obs"].double() * (stats["var"] + 1e-8).sqrt() + stats["mean"]  # undo the normalisation
    assert states[:, :2].norm(dim=1).sub(1).abs().max() < 1e-4  # (cos, sin) of a real pendulum angle
    expert = bc.load_expert(EXPERT, torch.device("cpu"))
    relabelled = np.stack([expert(state) for state in states.float().numpy()])
    np.testing.assert_allclose(data["actions"].numpy(), relabelled, atol=1e-4)
    assert not math.isnan(checkpoint["resume_state"]["best_return"])

    changed = run_script(
        "bc_continuous.py",
        "--resume",
        tmp_path / "runs" / "dagger" / "checkpoints" / "latest.pt",
        "--total-timesteps",
        600,
        cwd=tmp_path,
        env=minari_env(datasets),
    )
    assert changed.returncode == 2 and "cannot change when resuming a DAgger run" in changed.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--dataset is required"),
        (["--dataset", "missing-v0"], "not in"),
        (["--dataset", "pendulum-one-v0", "--env-id", "MountainCarContinuous-v0"], "has observations (3,)"),
        (["--dataset", "pendulum-one-v0", "--dagger-expert", "nothing.pt"], "nothing.pt: no such file"),
        (["--dataset", "pendulum-one-v0", "--dagger-iterations", 0], "--dagger-iterations must be positive"),
        (["--dataset", "pendulum-one-v0", "--dataset-episodes", 2], "--dataset-episodes 2: pendulum-one-v0 has 1"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, datasets, argv, message):
    result = run_script("bc_continuous.py", *argv, "--total-timesteps", 10, cwd=tmp_path, env=minari_env(datasets))
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_enjoy_refuses_a_dataset_id_that_exists_or_is_malformed(tmp_path, datasets):
    for name, message in (("pendulum-one-v0", "exists"), ("no version", "a Minari id is")):
        result = run_script("enjoy.py", EXPERT, "--record-dataset", name, cwd=tmp_path, env=minari_env(datasets))
        assert result.returncode == 2 and message in result.stderr, result.stderr
