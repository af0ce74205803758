"""Checkpoints written before the one-file layout (format_version 1, by the scripts of commit 7834e44: two-thread
update, their own plumbing) still replay with enjoy.py and still resume. tests/data holds three tiny ones (Pendulum-v1,
16-wide networks): SAC and TD3 at step 600 with their replay buffers, PPO at step 4096 with its observation
statistics."""

import os
import shutil

import pytest
import torch
from conftest import run_script

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("algo", ["sac", "td3", "ppo"])
def test_a_format_1_checkpoint_replays_its_own_evaluation(tmp_path, algo):
    path = os.path.join(DATA, f"{algo}_v1", "checkpoints", "latest.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format_version"] == 1 and checkpoint["algo"] == f"{algo}_continuous"
    result = run_script("enjoy.py", path, cwd=tmp_path)  # the run's own evaluation seeds and count by default
    assert result.returncode == 0, result.stderr[-2000:]
    mean = float(result.stdout.split("mean return ")[1].split(" ")[0])
    # the checkpoint's step was an evaluation step and its best: the replay is that evaluation
    assert mean == pytest.approx(checkpoint["resume_state"]["best_return"], abs=0.01)


@pytest.mark.parametrize("algo, budget", [("sac", 800), ("td3", 800), ("ppo", 5120)])
def test_a_format_1_checkpoint_resumes(tmp_path, algo, budget):
    run = tmp_path / "runs" / "old"
    shutil.copytree(os.path.join(DATA, f"{algo}_v1"), run)
    result = run_script(
        f"{algo}_continuous.py",
        "--resume",
        run / "checkpoints" / "latest.pt",
        "--total-timesteps",
        budget,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout and "warning" not in result.stderr  # the replay buffer came back too
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert final["global_step"] == budget and final["format_version"] == 1
