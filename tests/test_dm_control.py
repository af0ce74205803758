"""DeepMind Control Suite tasks through shimmy: dictionary observations are flattened, float64 actions work, and a
policy trained on one replays into a video."""

import os

import pytest
import torch
from conftest import read_scalars, run_script


@pytest.mark.parametrize(
    "script, args", [("sac_continuous.py", ["--learning-starts", 200, "--batch-size", 32, "--hidden-sizes", 32, 32])]
)
def test_a_dm_control_task_trains_and_replays(tmp_path, script, args):
    result = run_script(
        script,
        "--env-id",
        "dm_control/cartpole-balance-v0",
        "--total-timesteps",
        512,
        "--eval-episodes",
        1,
        "--log-every",
        128,
        "--run-name",
        "dmc",
        "--no-progress-bar",
        *args,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "dmc"
    scalars = read_scalars(str(run))
    loss = "losses/qf_loss" if script.startswith("sac") else "losses/value_loss"
    assert scalars[loss] and all(torch.isfinite(torch.tensor(v)) for _, v in scalars[loss])  # real updates ran
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert final["policy_kwargs"]["obs_dim"] == 5  # cartpole's position (3) and velocity (2), flattened
    if script.startswith("sac"):  # the replay is the run's own evaluation; the first 100 steps make a video
        replay = run_script("enjoy.py", run, cwd=tmp_path)
        assert replay.returncode == 0, replay.stderr[-3000:]
        mean = float(replay.stdout.split("mean return ")[1].split(" ")[0])
        assert mean == pytest.approx(scalars["eval/return_mean"][-1][1], abs=0.01)
        video = run_script(
            "enjoy.py", run, "--episodes", 1, "--max-steps", 100, "--video", tmp_path / "dmc.mp4", cwd=tmp_path
        )
        assert video.returncode == 0, video.stderr[-3000:]
        assert "(100 frames)" in video.stdout and os.path.getsize(tmp_path / "dmc.mp4") > 10_000
