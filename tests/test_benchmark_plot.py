"""benchmark.py (local and Ray backends) and plot.py."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, read_scalars, run_script, script_env

import benchmark
import plot

PPO_TINY = [
    "--total-timesteps",
    "1024",
    "--num-envs",
    "2",
    "--num-steps",
    "256",
    "--eval-every",
    "512",
    "--eval-episodes",
    "1",
]


def summary_states(stdout):
    """{run name: state} from benchmark.py's summary table."""
    text = stdout.split("\nsummary (")[1]
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^  (\S+)\s+(done|failed|stopped|busy|skipped \(finished before\))", text, re.M)
    }


# ---- benchmark.py ----


def test_option_spellings_are_normalised_before_the_checks():
    args, extra = benchmark.parse(
        ["--scripts", "ppo_continuous.py", "--env-ids", "Pendulum-v1", "--", "--total_timesteps", "500", "--num_envs=2"]
    )
    assert extra == ["--total-timesteps", "500", "--num-envs=2"]
    assert benchmark.Run("/x/ppo_continuous.py", "Pendulum-v1", 1, extra, "/runs").total_timesteps == 500
    with pytest.raises(SystemExit):
        benchmark.parse(["--scripts", "ppo_continuous.py", "--env-ids", "Pendulum-v1", "--", "--env_id", "Hopper-v4"])


def test_two_scripts_that_would_share_run_directories_are_refused(tmp_path):
    shutil.copy(os.path.join(ROOT, "sac_continuous.py"), tmp_path / "sac.py")
    result = run_script(
        "benchmark.py",
        "--scripts",
        "sac_continuous.py",
        str(tmp_path / "sac.py"),
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "both give run Pendulum-v1__sac__1" in result.stderr


def test_a_run_is_checked_again_once_its_lock_is_held(tmp_path):
    run = benchmark.Run(
        os.path.join(ROOT, "ppo_continuous.py"), "Pendulum-v1", 1, ["--total-timesteps", "1000"], str(tmp_path)
    )
    ckpt = tmp_path / run.name / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"args": {"total_timesteps": 1000}}, ckpt / "final.pt")  # another process finished it meanwhile
    assert benchmark.execute(run) == benchmark.FINISHED_ELSEWHERE and (ckpt / "final.pt").exists()
    bigger = benchmark.Run(run.script, run.env_id, 1, ["--total-timesteps", "2000"], str(tmp_path))
    assert (
        benchmark.execute(bigger) == 1 and (ckpt / "final.pt").exists()
    )  # no latest.pt to extend it from: kept, reported
    assert "no latest.pt to extend it from" in (tmp_path / "logs" / f"{run.name}.log").read_text()


def test_a_stop_file_stops_a_run_as_a_cancellation_does(tmp_path):
    """Ray can lose the cancellation of a running task (seen once in CI; another CI run's benchmark.py did not stop
    within a minute, cause unrecorded): the task also stops its run, which saves, when benchmark.py's stop file
    appears on the shared storage; a task started after it runs nothing."""
    import threading

    stop_file = tmp_path / "logs" / ".stop-test"
    run = benchmark.Run(
        os.path.join(ROOT, "sac_continuous.py"),
        "Pendulum-v1",
        1,
        [
            "--total-timesteps",
            "100000",
            "--learning-starts",
            "300",
            "--eval-every",
            "500",
            "--eval-episodes",
            "1",
            "--batch-size",
            "32",
            "--hidden-sizes",
            "32",
            "32",
        ],
        str(tmp_path),
    )
    result = []
    thread = threading.Thread(
        target=lambda: result.append(benchmark.execute(run, stop_file=str(stop_file))), daemon=True
    )
    thread.start()
    ckpt = tmp_path / run.name / "checkpoints"
    deadline = time.time() + 120
    while not (ckpt / "best.pt").exists():
        assert thread.is_alive() and time.time() < deadline, result
        time.sleep(0.2)
    stop_file.touch()
    thread.join(timeout=60)
    assert result == [128 + signal.SIGTERM], result
    assert "stopped by signal 15" in (tmp_path / "logs" / f"{run.name}.log").read_text()
    assert torch.load(ckpt / "latest.pt", weights_only=True)["global_step"] >= 500
    other = benchmark.Run(run.script, run.env_id, 2, run.extra, str(tmp_path))
    assert benchmark.execute(other, stop_file=str(stop_file)) == -signal.SIGTERM and not os.path.exists(other.run_dir)


def test_run_names_are_canonical_and_leave_out_the_budget():
    a = benchmark.experiment_slug(
        ["--no-autotune", "--alpha", "0.2", "--total-timesteps", "300000", "--no-progress-bar"]
    )
    b = benchmark.experiment_slug(["--alpha=0.2", "--eval-every", "5000", "--no-autotune"])
    assert a == b == "alpha=0.2_no-autotune"
    assert benchmark.experiment_slug(["--hidden-sizes", "64", "64"]) == "hidden-sizes=64,64"
    run = benchmark.Run("/x/sac_continuous.py", "Hopper-v4", 3, ["--batch-size", "512"], "/runs")
    assert run.name == "Hopper-v4__sac__batch-size=512__3"
    assert benchmark.Run("/x/ppo_continuous.py", "Hopper-v4", 1, [], "/runs").name == "Hopper-v4__ppo__1"
    assert len(benchmark.experiment_slug([f"--arg{i}={'x' * 20}" for i in range(5)])) <= 60


def test_the_arguments_after_the_double_dash_reach_every_run_unchanged(tmp_path):
    """Whatever the runs at once leave each run (many workers, one CPU per Ray task), a run's command line ends with
    the user's arguments as given, and nothing is added to them."""
    extra = ["--total-timesteps", "5000", "--eval-every", "1000", "--hidden-sizes", "64", "64"]

    def dry_run(*argv):
        result = run_script(
            "benchmark.py",
            "--scripts",
            "td3_continuous.py",
            "ppo_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "--runs-dir",
            str(tmp_path),
            *argv,
            "--dry-run",
            "--",
            *extra,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith("new")]

    for argv in (["--workers", "100000"], ["--ray-address", "auto"]):
        commands = dry_run(*argv)
        assert len(commands) == 2 and all(c.endswith("--no-progress-bar " + " ".join(extra)) for c in commands), (
            commands
        )
    run = benchmark.Run(os.path.join(ROOT, "td3_continuous.py"), "Pendulum-v1", 1, extra, str(tmp_path))
    assert run.command("resume")[-len(extra) :] == run.command("new")[-len(extra) :] == extra


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--no-such-option", "3"], "Unrecognized options: --no-such-option, 3"),
        (["--total-timesteps", "abc"], "Error parsing --total-timesteps"),
        (["--total-timestep", "5000"], "perhaps you meant --total-timesteps"),
        (
            ["--batch-size", "64"],
            "not valid for ppo_continuous.py: Unrecognized options: --batch-size, 64",
        ),  # td3 has it, ppo does not
    ],
)
def test_bad_arguments_after_the_double_dash_are_refused_before_any_run(tmp_path, extra, problem):
    """Checked once against each script's Args, in --dry-run too, rather than by every run failing: one line
    naming the script and the problem, exit status 2, and no run directory or log."""
    for dry_run in ("--dry-run",) if extra[0] != "--no-such-option" else ("--dry-run", None):
        result = run_script(
            "benchmark.py",
            "--scripts",
            "td3_continuous.py",
            "ppo_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "2",
            *([dry_run] if dry_run else []),
            "--",
            *extra,
            cwd=tmp_path,
            timeout=300,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(
            "error: the arguments after -- are not valid for "
        ), result.stderr
        assert problem in result.stderr and result.stdout == ""
        assert not (tmp_path / "runs").exists()


def test_the_check_of_the_arguments_follows_each_scripts_own_args(tmp_path):
    """No list of options in benchmark.py: the check reads the Args of the script as it is now."""
    script = tmp_path / "toy_continuous.py"
    script.write_text('''from dataclasses import dataclass

import tyro


@dataclass
class Args:
    env_id: str = "Pendulum-v1"
    seed: int = 1
    runs_dir: str = "runs"
    run_name: str = ""
    progress_bar: bool = True
    width: int = 8
    """an option only this script has"""


if __name__ == "__main__":
    raise SystemExit("imported for the check, never run")
''')
    check = lambda *extra: benchmark.check_arguments([str(script)], "Pendulum-v1", 1, str(tmp_path), list(extra))
    assert check() is None and check("--width", "16") is None and check("--width=16") is None
    expected = (
        f"the arguments after -- are not valid for {script}: "
        "Error parsing --width: invalid literal for int() with base 10: 'wide'"
    )
    assert check("--width", "wide") == expected
    assert check("--depth", "2").endswith("Unrecognized options: --depth, 2")
    assert "-h/--help" in check("--help")
    script.write_text(
        script.read_text().replace('    run_name: str = ""\n', "")
    )  # a script that benchmark.py cannot run
    assert check("--width", "16").startswith(f"{script} does not take the arguments benchmark.py gives every run")
    script.write_text("import no_such_module_anywhere\n")
    assert check() == f"cannot import {script}: ModuleNotFoundError: No module named 'no_such_module_anywhere'"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scripts", "nope.py", "--env-ids", "Pendulum-v1"], "no such script"),
        (
            ["--scripts", "ppo_continuous.py", "--env-ids", "Pendulum-v1", "--", "--seed", "3"],
            "--seed is set by benchmark.py",
        ),
        (
            ["--scripts", "ppo_continuous.py", "--env-ids", "Pendulum-v1", "--workers", "0"],
            "--workers must be at least 1",
        ),
        (["--scripts", "ppo_continuous.py", "--env-ids", "Pendulum-v1", "--gpus-per-run", "1"], "needs --ray-address"),
    ],
)
def test_bad_benchmark_arguments_exit_2(tmp_path, argv, message):
    result = run_script("benchmark.py", *argv, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_grid_reports_failures_skips_finished_runs_and_extends_the_budget(tmp_path):
    argv = [
        "--scripts",
        "ppo_continuous.py",
        "--env-ids",
        "Pendulum-v1",
        "NoSuchEnv-v0",
        "--seeds",
        "1",
        "2",
        "--workers",
        "2",
        "--",
    ]
    result = run_script("benchmark.py", *argv, *PPO_TINY, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    states = summary_states(result.stdout)
    assert states == {
        "Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__1": "done",
        "Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__2": "done",
        "NoSuchEnv-v0__ppo__eval-episodes=1_num-envs=2_num-steps=256__1": "failed",
        "NoSuchEnv-v0__ppo__eval-episodes=1_num-envs=2_num-steps=256__2": "failed",
    }
    assert "unknown env id 'NoSuchEnv-v0'" in result.stdout  # the tail of the failed run's log
    runs = tmp_path / "runs"
    for seed in (1, 2):
        ckpt = torch.load(
            runs / f"Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__{seed}" / "checkpoints" / "final.pt",
            weights_only=True,
        )
        assert ckpt["global_step"] == 1024 and ckpt["args"]["seed"] == seed
    # the two seeds are different runs
    curves = [
        read_scalars(str(runs / f"Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__{seed}"))[
            "eval/return_mean"
        ]
        for seed in (1, 2)
    ]
    assert [s for s, _ in curves[0]] == [512, 1024] and curves[0] != curves[1]

    again = run_script("benchmark.py", *argv, *PPO_TINY, cwd=tmp_path)
    states = summary_states(again.stdout)
    assert states["Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__1"] == "skipped (finished before)"
    assert (
        states["NoSuchEnv-v0__ppo__eval-episodes=1_num-envs=2_num-steps=256__1"] == "failed"
    )  # retried, and it fails again
    assert "2 finished already" in again.stdout

    longer = [*PPO_TINY[:1], "2048", *PPO_TINY[2:]]
    extended = run_script(
        "benchmark.py",
        "--scripts",
        "ppo_continuous.py",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "--",
        *longer,
        cwd=tmp_path,
    )
    assert extended.returncode == 0, extended.stdout + extended.stderr
    assert "1 to resume" in extended.stdout
    run_dir = runs / "Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__1"
    assert [s for s, _ in read_scalars(str(run_dir))["eval/return_mean"]] == [512, 1024, 1536, 2048]
    assert (
        "resuming" in (runs / "logs" / "Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__1.log").read_text()
    )


def test_a_benchmark_killed_midway_resumes_its_runs(tmp_path):
    argv = [
        os.path.join(ROOT, "benchmark.py"),
        "--scripts",
        "sac_continuous.py",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "--refresh",
        "0.5",
        "--",
        "--total-timesteps",
        "2500",
        "--learning-starts",
        "300",
        "--eval-every",
        "500",
        "--eval-episodes",
        "1",
        "--checkpoint-every",
        "250",
        "--hidden-sizes",
        "64",
        "64",
    ]
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=script_env(),
    )
    run_dir = tmp_path / "runs" / "Pendulum-v1__sac__eval-episodes=1_hidden-sizes=64,64_learning-starts=300__1"
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "best.pt").exists():  # the first evaluation, at step 500, is done
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert summary_states(out) == {run_dir.name: "stopped"}
    assert re.search(rf"{run_dir.name}\s+running\s+[\d,]+/2,500", out)  # live progress: step of total
    stopped_at = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"]
    assert 500 <= stopped_at < 2500

    result = run_script("benchmark.py", *argv[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_states(result.stdout) == {run_dir.name: "done"}
    assert (
        f"resuming {run_dir.name} at step {stopped_at}"
        in (tmp_path / "runs" / "logs" / f"{run_dir.name}.log").read_text()
    )
    evals = read_scalars(str(run_dir))["eval/return_mean"]
    assert [s for s, _ in evals] == [500, 1000, 1500, 2000, 2500]  # each once, across the two processes
    assert torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["global_step"] == 2500


def test_a_run_without_a_checkpoint_restarts_clean(tmp_path):
    stale = tmp_path / "runs" / "Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__1"
    stale.mkdir(parents=True)
    (stale / "events.out.tfevents.1.host.1.0").write_bytes(b"")  # a first attempt killed before its first checkpoint
    result = run_script(
        "benchmark.py",
        "--scripts",
        "ppo_continuous.py",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "--",
        *PPO_TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (stale / "events.out.tfevents.1.host.1.0").exists()
    assert (stale / "checkpoints" / "final.pt").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_backend_on_a_local_cluster(tmp_path):
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    port = free_port()
    env = script_env(
        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled"
    )  # the same (no) authentication for the head and the driver
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    start = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            temp_dir,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        result = run_script(
            "benchmark.py",
            "--scripts",
            "ppo_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "2",
            "--ray-address",
            f"127.0.0.1:{port}",
            "--runs-dir",
            str(tmp_path / "shared"),
            "--",
            *PPO_TINY,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        names = [f"Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__{seed}" for seed in (1, 2)]
        assert summary_states(result.stdout) == {name: "done" for name in names}
        for name in names:
            assert (
                torch.load(tmp_path / "shared" / name / "checkpoints" / "final.pt", weights_only=True)["global_step"]
                == 1024
            )
        again = run_script(
            "benchmark.py",
            "--scripts",
            "ppo_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "2",
            "--ray-address",
            f"127.0.0.1:{port}",
            "--runs-dir",
            str(tmp_path / "shared"),
            "--",
            *PPO_TINY,
            cwd=tmp_path,
            env=env,
        )
        assert "2 finished already" in again.stdout and again.returncode == 0

        # Ctrl-C or SIGTERM cancels the tasks, and each run saves its checkpoint before it stops
        long = [
            sys.executable,
            os.path.join(ROOT, "benchmark.py"),
            "--scripts",
            "sac_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "--ray-address",
            f"127.0.0.1:{port}",
            "--runs-dir",
            str(tmp_path / "shared"),
            "--",
            "--total-timesteps",
            "100000",
            "--learning-starts",
            "300",
            "--eval-every",
            "500",
            "--eval-episodes",
            "1",
        ]
        proc = subprocess.Popen(
            long, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        run_dir = tmp_path / "shared" / "Pendulum-v1__sac__eval-episodes=1_learning-starts=300__1"
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "best.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:  # say where it hung (a CI run once timed out here without a trace)
            proc.kill()
            log = tmp_path / "shared" / "logs" / f"{run_dir.name}.log"
            pytest.fail(
                f"benchmark.py did not stop within 120 s:\n{proc.communicate()[0][-3000:]}\n"
                f"the run's log:\n{log.read_text()[-3000:] if log.exists() else '(none)'}"
            )
        assert proc.returncode == 130 and summary_states(out) == {run_dir.name: "stopped"}, out
        assert "stopped by signal 15" in (tmp_path / "shared" / "logs" / f"{run_dir.name}.log").read_text()
        assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"] >= 500
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


# ---- plot.py ----


def write_run(runs, name, hparams, evals, purge=None):
    """A run directory as the scripts write it: the hyperparameters text and eval/return_mean."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(runs / name), purge_step=purge)
    if purge is None:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
        )
    for step, value in evals:
        writer.add_scalar("eval/return_mean", value, step)
    writer.close()


def fake_grid(runs):
    """Two envs; SAC with autotune True and False, 3 seeds each; TD3 with 2 seeds.
    Returns {(env, label): [final...]}."""
    rng = np.random.default_rng(0)
    expected = {}
    for env_id in ("Hopper-v4", "Walker2d-v4"):
        for exp, autotune, seeds in (
            ("sac_continuous", True, (1, 2, 3)),
            ("sac_continuous", False, (1, 2, 3)),
            ("td3_continuous", None, (1, 2)),
        ):
            for seed in seeds:
                values = (
                    rng.normal(1000, 300, size=5).astype(np.float32).astype(np.float64)
                )  # as TensorBoard stores them
                hp = {"exp_name": exp, "seed": seed, "env_id": env_id, "total_timesteps": 5000}
                if autotune is not None:
                    hp["autotune"] = autotune
                write_run(runs, f"{env_id}__{exp}__{autotune}__{seed}", hp, list(zip(range(1000, 6000, 1000), values)))
                label = exp if autotune is None else f"{exp} autotune={autotune}"
                expected.setdefault((env_id, label), []).append(values)
    return expected


def test_plot_draws_one_panel_per_env_and_tabulates_the_logged_numbers(tmp_path):
    runs = tmp_path / "runs"
    expected = fake_grid(runs)
    (runs / "logs").mkdir()  # benchmark.py's logs are not runs
    result = run_script(
        "plot.py", str(runs), "--out", str(tmp_path / "plots"), "--group-by", "autotune", "--svg", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    png = tmp_path / "plots" / "eval_return_mean.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "plots" / "eval_return_mean.svg").exists()
    table = (tmp_path / "plots" / "eval_return_mean.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    assert len(rows) == len(expected)
    for env_id, label, seeds, final, best, steps, _ in (map(str.strip, r) for r in rows):
        values = np.array(expected[(env_id, label)])
        assert int(seeds) == len(values) and steps == "5,000"
        assert final == f"{values[:, -1].mean():.1f} ± {values[:, -1].std(ddof=1):.1f}"
        assert best == f"{values.max(axis=1).mean():.1f} ± {values.max(axis=1).std(ddof=1):.1f}"

    # the figure: one panel per env, one line (and band) per group, labelled with its number of seeds
    logs = [plot.EventLog(r).reload() for r in plot.find_runs([str(runs)])]
    fig = plot.make_figure(plot.group_runs(logs, ["autotune"]), "eval/return_mean")
    assert [ax.get_title() for ax in fig.axes] == ["Hopper-v4", "Walker2d-v4"]
    for ax in fig.axes:
        assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
            "sac_continuous autotune=False (3 seeds)",
            "sac_continuous autotune=True (3 seeds)",
            "td3_continuous (2 seeds)",
        ]
        mean_line = next(line for line in ax.get_lines() if line.get_label().startswith("td3"))
        values = np.array(expected[(ax.get_title(), "td3_continuous")])
        np.testing.assert_allclose(mean_line.get_ydata(), values.mean(axis=0), rtol=1e-6)


def test_plot_warns_when_a_group_mixes_hyperparameters(tmp_path):
    runs = tmp_path / "runs"
    fake_grid(runs)
    result = run_script("plot.py", str(runs), "--out", str(tmp_path / "plots"), "--env-ids", "Hopper-v4", cwd=tmp_path)
    assert result.returncode == 0
    assert "runs differ in autotune; pass --group-by autotune" in result.stderr
    bad = run_script("plot.py", str(runs), "--out", str(tmp_path / "plots"), "--group-by", "batch_size", cwd=tmp_path)
    assert bad.returncode == 2 and "no run has an argument batch_size" in bad.stderr


def test_runs_of_an_older_script_without_the_argument_get_their_own_group(tmp_path):
    """Grouping by an argument the script gained later: its older runs form a group labelled (not logged), not
    merged into another; a script that never had the argument (td3 has no alpha) is not split on it."""
    runs = tmp_path / "runs"
    for seed, std in ((1, None), (2, None), (1, -1.0), (2, -1.0)):
        hp = {"exp_name": "ppo_continuous", "seed": seed, "env_id": "Hopper-v4"} | (
            {} if std is None else {"log_std_init": std}
        )
        write_run(runs, f"ppo__{std}__{seed}", hp, [(1000, 10.0 * seed), (2000, 20.0 * seed)])
    write_run(
        runs, "td3__1", {"exp_name": "td3_continuous", "seed": 1, "env_id": "Hopper-v4"}, [(1000, 1.0), (2000, 2.0)]
    )
    logs = [plot.EventLog(r).reload() for r in plot.find_runs([str(runs)])]
    groups = {g.label: len(g.runs) for g in plot.group_runs(logs, ["log_std_init"])}
    assert groups == {
        "ppo_continuous log_std_init=(not logged)": 2,
        "ppo_continuous log_std_init=-1.0": 2,
        "td3_continuous": 1,
    }
    # --assume: what the older runs ran with, so they join the runs that log it
    write_run(
        runs,
        "ppo__0.0__3",
        {"exp_name": "ppo_continuous", "seed": 3, "env_id": "Hopper-v4", "log_std_init": 0.0},
        [(1000, 30.0), (2000, 60.0)],
    )
    result = run_script(
        "plot.py",
        str(runs),
        "--out",
        str(tmp_path / "plots"),
        "--group-by",
        "log-std-init",
        "--assume",
        "log-std-init=0.0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "ppo_continuous log_std_init=0.0 | 3 | 40.0 ± 20.0 |" in result.stdout and "(not logged)" not in result.stdout
    )
    assert "ppo_continuous log_std_init=-1.0 | 2 |" in result.stdout and "td3_continuous | 1 |" in result.stdout
    bad = run_script("plot.py", str(runs), "--assume", "log_std_init", cwd=tmp_path)
    assert bad.returncode == 2 and "ARG=VALUE" in bad.stderr


def test_plot_reference_lines_and_bootstrap_band(tmp_path):
    runs = tmp_path / "runs"
    expected = fake_grid(runs)
    ref = tmp_path / "ref.csv"
    ref.write_text(
        "algo,env_id,steps,return,source,url\n"
        'td3,Hopper-v4,2000,555,"Paper A (v3, other table)",http://a\n'  # an earlier budget, same source: not drawn
        "ppo,Hopper-v4,5000,999,Lib B,http://b\n"  # no ppo run in the plot: not drawn
        "td3,Hopper-v4,5000,1234.5,Paper A (v3),http://a\n"
        "td3,Hopper-v4,1000000,3000,Paper A (v3),http://a\n"  # beyond this budget: not drawn
        "sac,Walker2d-v4,4000,777,Lib B,http://b\n"
    )
    result = run_script(
        "plot.py",
        str(runs),
        "--out",
        str(tmp_path / "plots"),
        "--group-by",
        "autotune",
        "--reference",
        str(ref),
        "--ci",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    logs = [plot.EventLog(r).reload() for r in plot.find_runs([str(runs)])]
    fig = plot.make_figure(
        plot.group_runs(logs, ["autotune"]), "eval/return_mean", ci=True, references=plot.load_references(str(ref))
    )
    refs = {
        ax.get_title(): [
            (line.get_label(), line.get_ydata()[0]) for line in ax.get_lines() if line.get_gid() == "reference"
        ]
        for ax in fig.axes
    }
    assert refs == {"Hopper-v4": [("td3, Paper A @ 5k: 1234", 1234.5)], "Walker2d-v4": [("sac, Lib B @ 4k: 777", 777)]}
    # a bootstrap interval of the mean lies inside the range of the seeds and around their mean
    values = np.array(expected[("Hopper-v4", "sac_continuous autotune=True")])
    steps, mean, low, high = plot.aggregate([(np.arange(1000, 6000, 1000), v) for v in values], ci=True)
    assert (
        np.all(values.min(axis=0) <= low)
        and np.all(low <= mean)
        and np.all(mean <= high)
        and np.all(high <= values.max(axis=0))
    )


def test_aggregate_aligns_seeds_on_the_steps_all_of_them_cover():
    a = (np.array([0, 10, 20, 30]), np.array([0.0, 10.0, 20.0, 30.0]))
    b = (np.array([5, 15, 20]), np.array([50.0, 30.0, 40.0]))  # started later, stopped earlier, other steps
    steps, mean, low, high = plot.aggregate([a, b])
    assert steps.tolist() == [5, 10, 15, 20]  # nothing before b's first point or after its last
    np.testing.assert_allclose(mean, [(5 + 50) / 2, (10 + 40) / 2, (15 + 30) / 2, (20 + 40) / 2])
    np.testing.assert_allclose(
        high - mean, np.abs(np.array([5 - 50, 10 - 40, 15 - 30, 20 - 40])) / np.sqrt(2)
    )  # sample std


def test_seeds_without_common_steps_are_not_averaged(tmp_path):
    early = (np.array([0, 10]), np.array([1.0, 2.0]))
    late = (np.array([20, 30]), np.array([3.0, 4.0]))  # e.g. a seed evaluated every 100k next to one just started
    assert all(len(a) == 0 for a in plot.aggregate([early, late]))
    runs = tmp_path / "runs"
    for seed, curve in ((1, early), (2, late)):
        write_run(
            runs, f"r{seed}", {"exp_name": "sac_continuous", "seed": seed, "env_id": "Hopper-v4"}, list(zip(*curve))
        )
    result = run_script("plot.py", str(runs), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert result.returncode == 0 and "share no range of steps" in result.stderr, result.stderr


def test_bootstrap_interval_of_two_seeds():
    # two seeds at 0 and 10: resampled means are 0, 5 or 10 with probabilities 1/4, 1/2, 1/4
    steps, mean, low, high = plot.aggregate([(np.arange(3), np.zeros(3)), (np.arange(3), np.full(3, 10.0))], ci=True)
    assert mean.tolist() == [5.0] * 3 and low.tolist() == [0.0] * 3 and high.tolist() == [10.0] * 3


def test_event_log_reads_new_events_and_files_as_they_arrive(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    log = plot.EventLog(str(tmp_path / "r"))
    writer = SummaryWriter(str(tmp_path / "r"))
    writer.add_scalar("eval/return_mean", 1.0, 10)
    writer.flush()
    assert log.reload().curve("eval/return_mean")[1].tolist() == [1.0]
    writer.add_scalar("eval/return_mean", 2.0, 20)
    writer.add_scalar("eval/return_mean", 3.0, 30)
    writer.flush()
    assert log.reload().curve("eval/return_mean")[1].tolist() == [1.0, 2.0, 3.0]
    writer.close()
    time.sleep(1.1)
    resumed = SummaryWriter(str(tmp_path / "r"), purge_step=20)  # a resumed process, from a checkpoint at step 19
    resumed.add_scalar("eval/return_mean", 22.0, 20)
    resumed.flush()
    assert log.reload().curve("eval/return_mean")[0].tolist() == [10, 20]
    assert log.curve("eval/return_mean")[1].tolist() == [1.0, 22.0]
    resumed.close()


def test_event_log_drops_the_steps_a_resumed_run_logged_again(tmp_path):
    runs = tmp_path / "runs"
    write_run(
        runs, "r", {"exp_name": "sac_continuous", "seed": 1, "env_id": "Hopper-v4"}, [(1, 10.0), (2, 20.0), (3, 30.0)]
    )
    time.sleep(1.1)  # event file names carry the second they were opened
    write_run(runs, "r", {}, [(3, 33.0), (4, 44.0)], purge=3)  # resumed from a checkpoint at step 2
    log = plot.EventLog(str(runs / "r")).reload()
    assert log.curve("eval/return_mean")[1].tolist() == [10.0, 20.0, 33.0, 44.0]
    assert log.hparams["env_id"] == "Hopper-v4" and log.last_step == 4
    assert read_scalars(str(runs / "r"))["eval/return_mean"] == [
        (1, 10.0),
        (2, 20.0),
        (3, 33.0),
        (4, 44.0),
    ]  # as TensorBoard reads it


def test_plot_selects_runs_and_cuts_at_a_budget(tmp_path):
    runs = tmp_path / "runs"
    expected = fake_grid(runs)
    result = run_script(
        "plot.py",
        str(runs),
        "--out",
        str(tmp_path / "plots"),
        "--match",
        "^Hopper-v4__td3",
        "--max-step",
        "3000",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in (tmp_path / "plots" / "eval_return_mean.md").read_text().splitlines()[2:]]
    values = np.array(expected[("Hopper-v4", "td3_continuous")])[:, :3]  # steps 1000, 2000, 3000
    assert [[c.strip() for c in r[:6]] for r in rows] == [
        [
            "Hopper-v4",
            "td3_continuous",
            "2",
            f"{values[:, -1].mean():.1f} ± {values[:, -1].std(ddof=1):.1f}",
            f"{values.max(axis=1).mean():.1f} ± {values.max(axis=1).std(ddof=1):.1f}",
            "3,000",
        ]
    ]


def test_a_run_that_another_benchmark_is_running_is_left_alone(tmp_path):
    import fcntl

    name = "Pendulum-v1__ppo__eval-episodes=1_num-envs=2_num-steps=256__1"
    (tmp_path / "runs" / "logs").mkdir(parents=True)
    with open(tmp_path / "runs" / "logs" / f"{name}.log.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the benchmark process running it holds it
        result = run_script(
            "benchmark.py",
            "--scripts",
            "ppo_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "--",
            *PPO_TINY,
            cwd=tmp_path,
        )
    assert result.returncode == 1 and summary_states(result.stdout) == {name: "busy"}
    assert not (tmp_path / "runs" / name).exists()


def orphans(run_name: str) -> list:
    """Processes whose command line names this run."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if run_name.encode() in f.read():
                    found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


def test_runs_save_and_stop_when_the_benchmark_is_killed_outright(tmp_path):
    argv = [
        os.path.join(ROOT, "benchmark.py"),
        "--scripts",
        "sac_continuous.py",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "--",
        "--total-timesteps",
        "100000",
        "--learning-starts",
        "300",
        "--eval-every",
        "500",
        "--eval-episodes",
        "1",
    ]
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=script_env()
    )
    run_dir = tmp_path / "runs" / "Pendulum-v1__sac__eval-episodes=1_learning-starts=300__1"
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "best.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.kill()  # SIGKILL: benchmark.py cannot forward anything
    proc.wait()
    log = tmp_path / "runs" / "logs" / f"{run_dir.name}.log"
    deadline = time.time() + 120
    try:
        while "stopped by signal 15" not in log.read_text():  # the orphaned run got SIGTERM from the kernel
            assert time.time() < deadline, (orphans(run_dir.name), log.read_text()[-2000:])
            time.sleep(0.2)
    finally:  # never leave a 100k-step run behind to slow the rest of the suite
        for pid in orphans(run_dir.name):
            os.kill(pid, signal.SIGKILL)
    assert 500 <= torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"] < 100_000


# ---- plot.py: problems found before any work ----


def plot_error(tmp_path, *argv):
    """plot.py on a grid whose grouping warns (runs differ in autotune): the error must come before any run is read."""
    runs = tmp_path / "runs"
    if not runs.exists():
        fake_grid(runs)
    result = run_script("plot.py", str(runs), "--env-ids", "Hopper-v4", *argv, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), (
        result.stderr
    )  # one line: no warning, no traceback
    return result.stderr


@pytest.mark.parametrize(
    "case", ["out is a file", "out under a file", "the figure is a directory", "the svg is a directory"]
)
def test_plot_refuses_an_out_it_cannot_write_before_reading_the_runs(tmp_path, case):
    (tmp_path / "file").write_text("not a directory")
    if case == "out is a file":
        assert "--out file is a file" in plot_error(tmp_path, "--out", "file")
    elif case == "out under a file":  # cannot be created, by root either
        assert f"--out file/plots cannot be created: {tmp_path / 'file'} is a file" in plot_error(
            tmp_path, "--out", "file/plots"
        )
    elif case == "the figure is a directory":
        (tmp_path / "plots" / "eval_return_mean.png").mkdir(parents=True)
        assert "plots/eval_return_mean.png is a directory" in plot_error(tmp_path, "--out", "plots")
    else:
        (tmp_path / "plots" / "curves.svg").mkdir(parents=True)
        assert "plots/curves.svg is a directory" in plot_error(tmp_path, "--out", "plots", "--name", "curves", "--svg")
        assert not (tmp_path / "plots" / "curves.png").exists()


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a read-only directory (the case under a file covers root)"
)
def test_plot_refuses_a_read_only_out(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots").chmod(0o555)
    try:
        assert "--out plots is not writable" in plot_error(tmp_path, "--out", "plots")
        assert "--out plots/new cannot be created" in plot_error(tmp_path, "--out", "plots/new")
    finally:
        (tmp_path / "plots").chmod(0o755)


def test_plot_refuses_an_invalid_regular_expression(tmp_path):
    assert (
        plot_error(tmp_path, "--out", "plots", "--match", "(")
        == "error: --match '(' is not a valid regular expression: missing ), unterminated subpattern at position 0\n"
    )
    assert not (tmp_path / "plots").exists()


def test_plot_reads_runs_of_scripts_that_had_update_threads_and_precision(tmp_path):
    """The off-policy scripts lost --update-threads (how many threads ran an update) and --precision (float32 now):
    runs that log them are plotted beside runs that do not; only a bfloat16 run is another experiment."""
    assert "update_threads" not in plot.RESUMABLE
    runs = tmp_path / "runs"
    for seed, old in (
        (1, {"update_threads": 2, "precision": "float32"}),
        (2, {"update_threads": 1, "precision": "float32"}),
        (3, {}),
    ):
        write_run(
            runs,
            f"sac__{seed}",
            {"exp_name": "sac_continuous", "seed": seed, "env_id": "Hopper-v4", **old},
            [(1000, 10.0 * seed), (2000, 20.0 * seed)],
        )
    result = run_script("plot.py", str(runs), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "| Hopper-v4 | sac_continuous | 3 | 40.0 ± 20.0 |" in result.stdout
    write_run(
        runs,
        "sac__bf16__4",
        {"exp_name": "sac_continuous", "seed": 4, "env_id": "Hopper-v4", "update_threads": 2, "precision": "bfloat16"},
        [(1000, 1.0), (2000, 2.0)],
    )
    result = run_script("plot.py", str(runs), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert result.returncode == 0 and "runs differ in precision; pass --group-by precision" in result.stderr, (
        result.stderr
    )
    grouped = run_script(
        "plot.py",
        str(runs),
        "--out",
        str(tmp_path / "plots"),
        "--group-by",
        "precision",
        "update_threads",
        cwd=tmp_path,
    )
    assert grouped.returncode == 0, grouped.stderr
    assert "sac_continuous precision=float32 update_threads=(not logged) | 1 |" in grouped.stdout
    assert "sac_continuous precision=bfloat16 update_threads=2 | 1 |" in grouped.stdout


def test_a_long_grouping_value_is_shortened_in_the_legend():
    """A checkpoint's path (bc_continuous.py --dagger-expert) would push the legend out of the figure."""
    assert plot.short(3e-4) == "0.0003" and plot.short(None) == "None"
    shortened = plot.short("benchmarks/runs_v2/HalfCheetah-v4__sac__1/checkpoints/best.pt")
    assert shortened == "…_sac__1/checkpoints/best.pt" and len(shortened) == 28
