"""sac_continuous.py and enjoy.py run as a user runs them: subprocesses in a temporary directory, tiny budgets that
still update."""

import os
import pickle
import signal
import time

import numpy as np
import pytest
import torch
from conftest import read_scalars, run_script, script_env, start_script, train_evals

SCRIPT = "sac_continuous.py"
SMALL = ["--batch-size", 64, "--buffer-size", 5000, "--hidden-sizes", 64, 64, "--no-progress-bar"]
EXPECTED_TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "losses/qf_loss",
    "losses/actor_loss",
    "losses/alpha",
    "losses/alpha_loss",
    "eval/return_mean",
    "eval/return_std",
}


def checkpoint_step(path):
    return torch.load(path, weights_only=True)["global_step"] if os.path.exists(path) else -1


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    """One short Pendulum run shared by the tests that only read what it wrote."""
    cwd = tmp_path_factory.mktemp("pendulum")
    result = run_script(
        SCRIPT,
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        1200,
        "--learning-starts",
        300,
        "--eval-every",
        600,
        "--eval-episodes",
        2,
        "--checkpoint-every",
        600,
        "--log-every",
        200,
        "--run-name",
        "smoke",
        *SMALL,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "runs" / "smoke"


def test_smoke_pendulum_logs_and_checkpoints(pendulum_run):
    scalars = read_scalars(str(pendulum_run))
    assert EXPECTED_TAGS <= set(scalars)
    # updates ran (learning_starts 300 < 1200): losses are logged from step 400 on, every 200 steps
    assert [step for step, _ in scalars["losses/qf_loss"]] == [400, 600, 800, 1000, 1200]
    assert [step for step, _ in scalars["eval/return_mean"]] == [600, 1200]
    ckpt_dir = pendulum_run / "checkpoints"
    assert {"latest.pt", "final.pt", "best.pt", "buffer_1200.pt"} <= set(os.listdir(ckpt_dir))
    final = torch.load(ckpt_dir / "final.pt", weights_only=True)
    assert final["format_version"] == 1 and final["algo"] == "sac_continuous" and final["env_id"] == "Pendulum-v1"
    assert final["global_step"] == 1200 and final["obs_rms"] is None
    assert final["args"]["total_timesteps"] == 1200 and final["args"]["hidden_sizes"] == [64, 64]
    assert set(final["policy"]) >= {"action_scale", "action_bias", "fc_mean.weight"}
    torch.testing.assert_close(final["policy"]["action_scale"], torch.tensor([2.0]))
    best = torch.load(ckpt_dir / "best.pt", weights_only=True)
    best_eval = max(value for _, value in scalars["eval/return_mean"])
    assert best["resume_state"]["best_return"] == pytest.approx(best_eval, rel=1e-5)
    buffer = torch.load(ckpt_dir / "buffer_1200.pt", weights_only=True)
    assert buffer["size"] == 1200 - 1200 // 201  # one autoreset step after every 200-step episode is not stored
    assert not [f for f in os.listdir(ckpt_dir) if ".tmp" in f]


def test_smoke_mujoco_v5_two_envs_with_video(tmp_path):
    result = run_script(
        SCRIPT,
        "--env-id",
        "InvertedPendulum-v5",
        "--num-envs",
        2,
        "--total-timesteps",
        500,
        "--learning-starts",
        200,
        "--eval-every",
        500,
        "--eval-episodes",
        2,
        "--log-every",
        100,
        "--capture-video",
        "--run-name",
        "pole",
        *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "pole"
    scalars = read_scalars(str(run))
    assert EXPECTED_TAGS <= set(scalars)
    assert [step for step, _ in scalars["losses/qf_loss"]] == [200, 300, 400, 500]
    assert os.path.getsize(run / "videos" / "eval_500.mp4") > 1_000
    assert checkpoint_step(run / "checkpoints" / "final.pt") == 500


def test_smoke_mujoco_v4(tmp_path):
    result = run_script(
        SCRIPT,
        "--env-id",
        "Hopper-v4",
        "--total-timesteps",
        400,
        "--learning-starts",
        200,
        "--eval-episodes",
        1,
        "--log-every",
        100,
        "--run-name",
        "hopper",
        *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = read_scalars(str(tmp_path / "runs" / "hopper"))
    assert [step for step, _ in scalars["losses/actor_loss"]] == [200, 300, 400]
    assert [step for step, _ in scalars["eval/return_mean"]] == [400]


def test_sac_learns_pendulum_within_6k_steps(tmp_path):
    """Seed 1 evaluated every 1000 steps (2026-12-08): -932 at 3000, -228 at 4000, -200 to -212 from 5000 to 8000."""
    evals = train_evals(
        SCRIPT,
        tmp_path,
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        6000,
        "--learning-starts",
        1000,
        "--eval-every",
        3000,
        "--eval-episodes",
        10,
        "--seed",
        1,
        "--hidden-sizes",
        64,
        64,
    )  # 256-wide (the default) learns it too, at twice the suite time
    assert evals[-1][0] == 6000
    assert evals[-1][1] >= -250, evals


def test_resume_after_sigkill_continues_without_gaps_or_repeats(tmp_path):
    common = [
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        2400,
        "--learning-starts",
        200,
        "--checkpoint-every",
        800,
        "--log-every",
        100,
        "--eval-every",
        800,
        "--eval-episodes",
        1,
        "--run-name",
        "killed",
        *SMALL,
    ]
    proc = start_script(SCRIPT, *common, cwd=tmp_path)
    latest = tmp_path / "runs" / "killed" / "checkpoints" / "latest.pt"
    run_dir = str(tmp_path / "runs" / "killed")
    deadline = time.time() + 300

    # the killed run has logged steps after its checkpoint: the resumed run must drop them
    def logged_past_checkpoint():
        step = checkpoint_step(latest)
        return step >= 800 and any(s > step for s, _ in read_scalars(run_dir).get("losses/qf_loss", []))

    while not logged_past_checkpoint() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_step(latest)
    assert 800 <= killed_at < 2400, proc.stdout.read()[-2000:]

    result = run_script(SCRIPT, "--resume", latest, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming killed at step {killed_at}" in result.stdout
    assert checkpoint_step(tmp_path / "runs" / "killed" / "checkpoints" / "final.pt") == 2400
    scalars = read_scalars(str(tmp_path / "runs" / "killed"))
    assert [step for step, _ in scalars["charts/SPS"]] == list(range(100, 2401, 100))
    assert [step for step, _ in scalars["losses/qf_loss"]] == list(range(200, 2401, 100))
    assert [step for step, _ in scalars["eval/return_mean"]] == [800, 1600, 2400]
    steps = [step for step, _ in scalars["charts/episodic_return"]]
    assert steps == sorted(set(steps))
    # the replay buffer came back: the resumed run wrote a full one at the end
    buffer = torch.load(tmp_path / "runs" / "killed" / "checkpoints" / "buffer_2400.pt", weights_only=True)
    assert buffer["size"] > 2000


def test_sigterm_saves_latest_and_exits_cleanly(tmp_path):
    proc = start_script(
        SCRIPT,
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        100_000,
        "--learning-starts",
        100,
        "--checkpoint-every",
        50_000,
        "--log-every",
        100,
        "--run-name",
        "term",
        *SMALL,
        cwd=tmp_path,
    )
    events = tmp_path / "runs" / "term"
    deadline = time.time() + 120
    while (
        proc.poll() is None
        and time.time() < deadline
        and not (events.exists() and read_scalars(str(events)).get("losses/qf_loss"))
    ):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "Traceback" not in output and "--resume" in output
    step = checkpoint_step(events / "checkpoints" / "latest.pt")
    assert 100 < step < 100_000
    assert os.path.exists(events / "checkpoints" / f"buffer_{step}.pt")


def test_same_seed_gives_identical_runs(tmp_path):
    def run(name, seed=3):
        result = run_script(
            SCRIPT,
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            700,
            "--learning-starts",
            200,
            "--log-every",
            100,
            "--eval-every",
            700,
            "--eval-episodes",
            1,
            "--seed",
            seed,
            "--run-name",
            name,
            *SMALL,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        scalars = read_scalars(str(tmp_path / "runs" / name))
        return {tag: values for tag, values in scalars.items() if tag != "charts/SPS"}

    first, second = run("a"), run("b")
    assert "losses/qf_loss" in first and "eval/return_mean" in first
    assert first == second
    assert run("c", seed=4)["losses/qf_loss"] != first["losses/qf_loss"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env-id", "HalfCheetah-v9"], "unknown env id 'HalfCheetah-v9'; did you mean"),
        (["--env-id", "CartPole-v1"], "needs flat Box observations and bounded Box actions"),
        (["--batch-size", 512, "--buffer-size", 256], "--batch-size 512 is larger than --buffer-size 256"),
        (
            ["--total-timesteps", 1000, "--learning-starts", 5000],
            "--learning-starts must be in [0, --total-timesteps), got 5000",
        ),
        (["--policy-lr", -0.001], "--policy-lr must be positive"),
        (["--total-timesteps", 0], "--total-timesteps must be positive"),
        (["--seed", -1], "--seed must be >= 0, got -1"),
        (["--hidden-sizes", 64, 0], "--hidden-sizes must be positive"),
        (["--precision", "bfloat16"], "Unrecognized option"),  # removed with the two-thread update: tyro's own message
        (["--resume", "missing.pt"], "missing.pt: no such file"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(tmp_path, args, message):
    result = run_script(SCRIPT, *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_resume_refuses_a_malicious_checkpoint(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format_version": 1, "x": Evil()}))
    result = run_script(SCRIPT, "--resume", "evil.pt", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "would run code" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_resume_refuses_a_checkpoint_of_another_version_with_one_line(pendulum_run, tmp_path):
    checkpoint = torch.load(pendulum_run / "checkpoints" / "latest.pt", weights_only=True)
    del checkpoint["resume_state"]["temperature"]  # as an older sac_continuous.py wrote it
    torch.save(checkpoint, tmp_path / "old.pt")
    result = run_script(SCRIPT, "--resume", tmp_path / "old.pt", cwd=tmp_path, timeout=120)
    assert (
        result.returncode == 2
        and "has no resume state for temperature" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_track_with_wandb_offline(tmp_path):
    result = run_script(
        SCRIPT,
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        300,
        "--learning-starts",
        100,
        "--eval-episodes",
        1,
        "--log-every",
        100,
        "--track",
        "--run-name",
        "tracked",
        *SMALL,
        cwd=tmp_path,
        env=script_env(WANDB_MODE="offline"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wandb_dir = tmp_path / "runs" / "tracked" / "wandb"
    runs = [d for d in os.listdir(wandb_dir) if d.startswith("offline-run-")]
    assert len(runs) == 1 and any(f.endswith(".wandb") for f in os.listdir(wandb_dir / runs[0]))


# enjoy.py
@pytest.mark.parametrize("env_id, camera", [("HalfCheetah-v4", 0), ("Walker2d-v5", 0), ("InvertedPendulum-v4", -1)])
def test_videos_of_mujoco_tasks_follow_the_agent(env_id, camera):
    """gymnasium 1.4 renders from a fixed free camera (-1) unless asked for the model's "track" camera: without it a
    HalfCheetah runs out of the picture within a second. Tasks without one (InvertedPendulum) keep the free camera."""
    import sac_continuous

    env = sac_continuous.make_env(env_id, 0, "rgb_array")()
    assert env.unwrapped.mujoco_renderer.camera_id == camera
    env.close()


def test_enjoy_replays_a_checkpoint_to_video_headless(pendulum_run, tmp_path):
    result = run_script(
        "enjoy.py",
        pendulum_run / "checkpoints" / "final.pt",
        "--episodes",
        2,
        "--video",
        tmp_path / "out.mp4",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    returns = [
        float(line.split("return ")[1].split(",")[0])
        for line in result.stdout.splitlines()
        if line.startswith("episode")
    ]
    assert len(returns) == 2
    mean = float(result.stdout.split("mean return ")[1].split(" ")[0])
    assert mean == pytest.approx(np.mean(returns), abs=0.011)  # each printed figure is rounded to 0.01
    assert os.path.getsize(tmp_path / "out.mp4") > 10_000
    # a run directory resolves to best.pt, whose evaluation the replay reproduces (same seeds, deterministic policy)
    best = torch.load(pendulum_run / "checkpoints" / "best.pt", weights_only=True)
    gif = run_script(
        "enjoy.py", pendulum_run, "--video", tmp_path / "out.gif", cwd=tmp_path, timeout=300
    )  # default seeds
    assert gif.returncode == 0, gif.stderr[-3000:]
    assert "best.pt" in gif.stdout and (tmp_path / "out.gif").read_bytes()[:3] == b"GIF"
    mean = float(gif.stdout.split("mean return ")[1].split(" ")[0])
    assert mean == pytest.approx(best["resume_state"]["best_return"], abs=0.01)


def test_enjoy_refuses_bad_checkpoints(pendulum_run, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Evil()}))
    (tmp_path / "truncated.pt").write_bytes((pendulum_run / "checkpoints" / "final.pt").read_bytes()[:5000])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    (tmp_path / "empty").mkdir()
    for name, message in [
        ("evil.pt", "would run code"),
        ("truncated.pt", "not a loadable checkpoint"),
        ("foreign.pt", "not a checkpoint of this project"),
        ("empty", "no best.pt"),
        ("nothing.pt", "no such file"),
    ]:
        result = run_script("enjoy.py", tmp_path / name, cwd=tmp_path, timeout=120)
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
    assert not (tmp_path / "pwned").exists()
    both = run_script(
        "enjoy.py", pendulum_run, "--render", "human", "--video", tmp_path / "x.mp4", cwd=tmp_path, timeout=120
    )
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_enjoy_env_override_checks_shapes(pendulum_run, tmp_path):
    result = run_script(
        "enjoy.py", pendulum_run, "--env-id", "HalfCheetah-v5", "--episodes", 1, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2 and "the policy was trained for (3,) and (1,)" in result.stderr
