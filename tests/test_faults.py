"""Faults and bad input a new user hits: nothing lost, nothing silent. The plumbing is shared by every script (a test
keeps it identical), so most cases run through sac_continuous.py; divergence runs through PPO as well."""

import os
import resource
import signal
import time

import pytest
import torch
from conftest import read_scalars, run_script, script_env, start_script

import sac_continuous as sac

PENDULUM = ["--env-id", "Pendulum-v1", "--batch-size", 16, "--buffer-size", 5000, "--hidden-sizes", 16, 16]
QUICK = [
    *PENDULUM,
    "--total-timesteps",
    600,
    "--learning-starts",
    200,
    "--eval-every",
    600,
    "--eval-episodes",
    1,
    "--checkpoint-every",
    600,
    "--log-every",
    200,
    "--no-progress-bar",
]


def one_clear_line(result, message, code=2):
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


# run directories
def claimer(tmp_path, run_name=None):
    run = sac.Run.__new__(sac.Run)  # only the directory logic, without envs or writers
    run.args = sac.Args(env_id="Pendulum-v1", runs_dir=str(tmp_path), run_name=run_name)
    return run


def test_two_new_runs_in_the_same_second_get_directories_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1234.0)
    first, second = claimer(tmp_path).claim_run_dir(None), claimer(tmp_path).claim_run_dir(None)
    assert first.endswith("Pendulum-v1__sac_continuous__1__1234") and second == first + "-1"
    with pytest.raises(sac.ArgError, match="holds another run.*--resume .*latest.pt"):
        claimer(tmp_path, run_name=os.path.basename(first)).claim_run_dir(None)


def test_a_new_run_never_writes_into_an_existing_runs_directory(tmp_path):
    assert run_script("sac_continuous.py", *QUICK, "--run-name", "mine", cwd=tmp_path).returncode == 0
    before = {f: os.path.getmtime(tmp_path / "runs" / "mine" / "checkpoints" / f) for f in ("latest.pt", "final.pt")}
    events = sorted(os.listdir(tmp_path / "runs" / "mine"))
    again = run_script("sac_continuous.py", *QUICK, "--run-name", "mine", cwd=tmp_path)
    one_clear_line(again, "runs/mine holds another run")
    assert "--resume" in again.stderr
    assert sorted(os.listdir(tmp_path / "runs" / "mine")) == events  # no second event file
    assert before == {f: os.path.getmtime(tmp_path / "runs" / "mine" / "checkpoints" / f) for f in before}


# divergence
@pytest.mark.parametrize(
    "script, args",
    [
        ("sac_continuous.py", [*PENDULUM, "--q-lr", "1e9", "--learning-starts", 100, "--log-every", 100]),
        (
            "ppo_continuous.py",
            [
                "--env-id",
                "Pendulum-v1",
                "--learning-rate",
                "1e6",
                "--num-envs",
                2,
                "--num-steps",
                256,
                "--log-every",
                512,
                "--hidden-sizes",
                16,
                16,
            ],
        ),
    ],
)
def test_divergence_stops_the_run_without_saving_nan_weights(tmp_path, script, args):
    result = run_script(
        script,
        *args,
        "--total-timesteps",
        20_000,
        "--checkpoint-every",
        10_000,
        "--eval-every",
        10_000,
        "--eval-episodes",
        1,
        "--run-name",
        "nan",
        "--no-progress-bar",
        cwd=tmp_path,
    )
    one_clear_line(result, "diverged", code=3)
    assert "losses/" in result.stderr and "at step" in result.stderr
    checkpoints = tmp_path / "runs" / "nan" / "checkpoints"
    assert not (checkpoints / "final.pt").exists()
    for name in os.listdir(checkpoints) if checkpoints.exists() else []:
        if name in ("latest.pt", "best.pt"):
            policy = torch.load(checkpoints / name, weights_only=True)["policy"]
            assert all(torch.isfinite(t).all() for t in policy.values()), name


def test_enjoy_refuses_a_policy_with_weights_that_are_not_finite(tmp_path):
    assert run_script("sac_continuous.py", *QUICK, "--run-name", "ok", cwd=tmp_path).returncode == 0
    checkpoint = torch.load(tmp_path / "runs" / "ok" / "checkpoints" / "final.pt", weights_only=True)
    checkpoint["policy"]["fc_mean.weight"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    one_clear_line(run_script("enjoy.py", tmp_path / "nan.pt", "--episodes", 1, cwd=tmp_path), "not finite")


# resume with damaged side files
def test_resume_goes_on_past_a_corrupt_best_pt_and_replay_buffer_and_removes_stale_temporary_files(tmp_path):
    args = [
        *PENDULUM,
        "--total-timesteps",
        600,
        "--learning-starts",
        200,
        "--eval-every",
        300,
        "--eval-episodes",
        1,
        "--checkpoint-every",
        300,
        "--log-every",
        100,
        "--no-progress-bar",
        "--run-name",
        "r",
    ]
    assert run_script("sac_continuous.py", *args, cwd=tmp_path).returncode == 0
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    for name in ("best.pt", "buffer_600.pt"):
        (checkpoints / name).write_bytes((checkpoints / name).read_bytes()[:300])  # truncated, as by a full disk
    (checkpoints / "latest.pt.tmp.12345").write_bytes(b"half a save killed by SIGKILL")
    result = run_script(
        "sac_continuous.py", "--resume", checkpoints / "latest.pt", "--total-timesteps", 900, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best.pt is unreadable" in result.stderr and "replay buffer is unreadable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not [f for f in os.listdir(checkpoints) if ".tmp." in f]
    assert torch.load(checkpoints / "final.pt", weights_only=True)["global_step"] == 900
    torch.load(checkpoints / "best.pt", weights_only=True)  # replaced by the next evaluation


# stopping
def test_ctrl_c_abandons_an_evaluation_and_saves_within_seconds(tmp_path):
    proc = start_script(
        "sac_continuous.py",
        *PENDULUM,
        "--total-timesteps",
        10_000,
        "--learning-starts",
        100,
        "--eval-every",
        300,
        "--eval-episodes",
        100_000,
        "--log-every",
        100,
        "--run-name",
        "c",
        cwd=tmp_path,
    )
    output = ""
    deadline = time.time() + 120
    while "evaluating" not in output and time.time() < deadline:  # plain progress lines: the output is not a terminal
        output += proc.stdout.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    start = time.time()
    output += proc.communicate(timeout=60)[0]
    assert time.time() - start < 10, "the evaluation of 100,000 episodes was not abandoned"
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in output, output[-2000:]
    assert torch.load(tmp_path / "runs" / "c" / "checkpoints" / "latest.pt", weights_only=True)["global_step"] == 300
    assert "eval/return_mean" not in read_scalars(str(tmp_path / "runs" / "c"))  # an abandoned evaluation logs nothing


def test_a_second_signal_exits_at_once():
    run = sac.Run.__new__(sac.Run)
    run.stop_signal = []
    run.on_signal(signal.SIGINT, None)
    assert run.stop_signal == [signal.SIGINT]
    with pytest.raises(SystemExit) as exit_info:
        run.on_signal(signal.SIGINT, None)
    assert exit_info.value.code == 128 + signal.SIGINT


# one line and exit status 2
def test_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_clear_line(
        run_script("sac_continuous.py", *QUICK, "--runs-dir", tmp_path / "afile", cwd=tmp_path),
        "cannot create a run directory in --runs-dir",
    )


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing_half_written(tmp_path):
    """A file-size limit stands in for a full disk: the first checkpoint (about 50 KB) cannot be written."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sac_continuous.py"), *map(str, QUICK), "--run-name", "full"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=script_env(),
        preexec_fn=limit_file_size,
    )
    one_clear_line(result, "cannot write")
    assert "best.pt" in result.stderr and "File too large" in result.stderr
    checkpoints = tmp_path / "runs" / "full" / "checkpoints"
    assert not [f for f in os.listdir(checkpoints) if ".tmp." in f]
    for name in os.listdir(checkpoints):  # what was written is whole
        torch.load(checkpoints / name, weights_only=True)


def test_integer_options_accept_integral_floats(tmp_path):
    result = run_script(
        "sac_continuous.py",
        *PENDULUM,
        "--total-timesteps",
        "6e2",
        "--learning-starts",
        "2e2",
        "--eval-episodes",
        1,
        "--no-progress-bar",
        "--run-name",
        "f",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(tmp_path / "runs" / "f" / "checkpoints" / "final.pt", weights_only=True)["global_step"] == 600


def test_track_without_a_wandb_login(tmp_path):
    env = script_env(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        env.pop(name, None)
    result = run_script("sac_continuous.py", *QUICK, "--track", cwd=tmp_path, env=env)
    one_clear_line(result, "wandb login")
    assert "WANDB_MODE=offline" in result.stderr and not (tmp_path / "runs").exists()


def test_enjoy_video_path_that_cannot_be_written_is_refused_before_rendering(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run_script(
        "enjoy.py",
        os.path.join(os.path.dirname(__file__), "data", "sac_v1"),
        "--video",
        tmp_path / "afile" / "out.mp4",
        cwd=tmp_path,
    )
    one_clear_line(result, "cannot write")
    assert "episode" not in result.stdout


# noise
def test_a_v4_task_starts_without_dependency_warnings_or_log_files(tmp_path):
    result = run_script(
        "sac_continuous.py",
        "--env-id",
        "HalfCheetah-v4",
        "--total-timesteps",
        300,
        "--learning-starts",
        200,
        "--batch-size",
        16,
        "--hidden-sizes",
        16,
        16,
        "--eval-episodes",
        1,
        "--log-every",
        100,
        "--no-progress-bar",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip() == "" and "WARN" not in result.stdout, result.stderr[-2000:]
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_progress_lines_show_the_last_evaluation_when_not_a_terminal(tmp_path):
    result = run_script(
        "sac_continuous.py",
        *PENDULUM,
        "--total-timesteps",
        1000,
        "--learning-starts",
        200,
        "--eval-every",
        400,
        "--eval-episodes",
        1,
        "--log-every",
        200,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "nan" not in result.stderr
    assert any(line.startswith("step 400/1000: evaluating, last evaluation -") for line in lines), lines
    evaluated = read_scalars(str(next((tmp_path / "runs").iterdir())))["eval/return_mean"][0][1]
    assert any(line.endswith(f"last evaluation {evaluated:.1f}") for line in lines), lines
