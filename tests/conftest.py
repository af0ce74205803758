import os
import subprocess
import sys
from collections import defaultdict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def script_env(**extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}
    env.pop("DISPLAY", None)  # the tests run headless, as CI does
    return env


def run_script(script, *args, cwd, timeout=600, env=None):
    """Run a project script as a user would; returns the CompletedProcess (stdout and stderr as text)."""
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or script_env())


def start_script(script, *args, cwd, env=None):
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or script_env()
    )


def refused(module, argv, capsys, monkeypatch):
    """A script's argument checks and env setup, run in this process (seconds less than a subprocess each): the exit
    status and stderr of the refusal. A case that passes them fails the test ("DID NOT RAISE"); nothing trains."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, argv)])
    with pytest.raises(SystemExit) as exit:
        args, _ = module.parse_args(module.Args, module.check_args)
        module.setup(args)
    return exit.value.code, capsys.readouterr().err


def train_evals(script, cwd, *args, timeout=900):
    """Train a script to the end in cwd/runs/learn and return its eval/return_mean curve [(step, value), ...]."""
    result = run_script(script, *args, "--run-name", "learn", "--no-progress-bar", cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_scalars(str(cwd / "runs" / "learn"))["eval/return_mean"]


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard shows it (purged steps of a resumed run are dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = defaultdict(list)
    for tag in acc.Tags()["scalars"]:
        out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


@pytest.fixture(scope="session")
def root():
    return ROOT
