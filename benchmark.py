"""Run a grid of experiments (scripts × env ids × seeds), on this machine or on a Ray cluster.

    python benchmark.py --scripts sac_continuous.py td3_continuous.py --env-ids HalfCheetah-v4 Hopper-v4 \\
        --seeds 1 2 3 -- --total-timesteps 300000

Arguments after `--` go to every run, as given; they are checked once against each script's Args before
anything runs (a bad one: one line on stderr, exit status 2). Each run is its own process with one torch thread, in
<runs-dir>/<env id>__<algo>[__<its arguments>]__<seed>, with its output in <runs-dir>/logs/<run>.log.
Running the same command again is safe: finished runs are skipped, interrupted ones continue from their
checkpoints/latest.pt (the scripts' --resume), and a larger --total-timesteps extends finished runs.
A failed run is reported with the end of its log and does not stop the others.

On a Ray cluster (pip install -r requirements-cluster.txt): --ray-address auto (or ray://host:port) sends each
run as a task that needs one CPU (or --gpus-per-run GPUs). Every node must see this directory at the same path
and --runs-dir must be on storage that every node shares.
"""

import argparse
import ctypes
import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from plot import RESUMABLE, EventLog

ROOT = os.path.dirname(os.path.abspath(__file__))
# arguments the runs themselves get from this script
RESERVED = {"--env-id", "--seed", "--runs-dir", "--run-name", "--resume"}
BUSY = -1000  # exit status of a run that another benchmark process is running
FINISHED_ELSEWHERE = -1001  # exit status of a run that another benchmark process finished meanwhile


def experiment_slug(extra: list[str]) -> str:
    """A readable, canonical name for the arguments that define an experiment:
    --no-autotune --alpha 0.2 -> alpha=0.2_no-autotune.
    Arguments that a resumed run may change (the budget, devices, logging) are left out."""
    items, i = [], 0
    while i < len(extra):
        token = extra[i]
        i += 1
        if not token.startswith("--"):
            continue
        name, eq, value = token[2:].partition("=")
        if not eq:  # the values that follow the option
            values = []
            while i < len(extra) and not extra[i].startswith("--"):
                values.append(extra[i])
                i += 1
            value = ",".join(values)
        if name.removeprefix("no-").replace("-", "_") not in RESUMABLE:
            items.append(f"{name}={value}" if value else name)
    slug = re.sub(r"[^A-Za-z0-9=.,+_-]+", "-", "_".join(sorted(items)))
    if len(slug) > 60:
        slug = slug[:50] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return slug


def option_value(extra: list[str], name: str) -> Optional[str]:
    for i, token in enumerate(extra):
        if token == name and i + 1 < len(extra):
            return extra[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


# Run in a child process by check_arguments (the parent imports neither torch nor the scripts): each script imported
# as a module (the scripts train only under `if __name__ == "__main__"`), and its Args parsed by tyro from
# benchmark.py's own arguments plus the ones after --, as a run's command line has them. Prints one JSON line: null,
# or [script, "import" | "own" | "extra", message].
CHECK_PROGRAM = r"""
import contextlib, importlib.util, io, json, re, sys

def tyro_message(text):
    lines = [re.sub(r"\x1b\[[0-9;]*m|^[\s\u2500-\u257f]+|[\s\u2500-\u257f]+$", "", line) for line in text.splitlines()]
    lines = [line for line in lines if line.strip("-=+|")]  # no box borders
    if not lines:
        return None
    message = lines[1] if len(lines) > 1 else lines[0]  # under the box's title (Unrecognized options, Value error, ...)
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Perhaps you meant"):
            message += f" (perhaps you meant {lines[i + 1].split()[0]})"
            break
    return message

def parse(args_cls, argv):
    import tyro

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            tyro.cli(args_cls, args=argv)
    except SystemExit as e:
        if e.code == 0:  # -h/--help: the help, and no training
            return "-h/--help prints the script's help and trains nothing"
        return tyro_message(out.getvalue()) or f"tyro exited with status {e.code}"
    return None

scripts, own, extra = json.loads(sys.argv[1])
result = None
for i, script in enumerate(scripts):
    name = f"_benchmark_check_{i}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # tyro reads the help of Args through inspect, which looks its module up here
    try:
        with contextlib.redirect_stdout(sys.stderr):
            spec.loader.exec_module(module)
    except BaseException as e:
        result = [script, "import", f"{type(e).__name__}: {e}".splitlines()[0]]
        break
    if not hasattr(module, "Args"):  # not a script of this project: nothing to check against
        continue
    error = parse(module.Args, [*own, *extra])
    if error is not None:
        result = [script, "own" if parse(module.Args, own) is not None else "extra", error]
        break
print(json.dumps(result))
"""


def check_arguments(scripts: list[str], env_id: str, seed: int, runs_dir: str, extra: list[str]) -> Optional[str]:
    """One line naming the first problem of the arguments after -- for any of `scripts` (read from each script's
    Args when it is checked, so the check follows the scripts as they change), or None: checked once, in one child
    process, before any run starts, rather than by every run failing."""
    own = ["--env-id", env_id, "--seed", str(seed), "--runs-dir", runs_dir, "--run-name", "check", "--no-progress-bar"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "10000"}  # no wrapped error lines
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHECK_PROGRAM, json.dumps([scripts, own, extra])],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=600,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        detail = (
            "it took over 10 minutes"
            if isinstance(e, subprocess.TimeoutExpired)
            else (out.stderr.strip().splitlines() or ["no output"])[-1]
        )
        print(
            f"warning: could not check the arguments after -- against the scripts ({detail}); "
            "the runs will report any bad one",
            file=sys.stderr,
        )
        return None
    if result is None:
        return None
    script, kind, message = result
    name = os.path.relpath(script, ROOT) if script.startswith(ROOT + os.sep) else script  # as --scripts names it
    if kind == "import":
        return f"cannot import {name}: {message}"
    if kind == "own":
        return f"{name} does not take the arguments benchmark.py gives every run ({' '.join(own[::2])}): {message}"
    return f"the arguments after -- are not valid for {name}: {message}"


@dataclass
class Run:
    script: str  # absolute path
    env_id: str
    seed: int
    extra: list[str]
    runs_dir: str  # absolute path

    @property
    def algo(self) -> str:
        return os.path.basename(self.script).removesuffix(".py").removesuffix("_continuous")

    @property
    def name(self) -> str:
        slug = experiment_slug(self.extra)
        return "__".join([self.env_id, self.algo] + ([slug] if slug else []) + [str(self.seed)])

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)

    @property
    def log_path(self) -> str:
        return os.path.join(self.runs_dir, "logs", f"{self.name}.log")

    @property
    def total_timesteps(self) -> Optional[int]:
        value = option_value(self.extra, "--total-timesteps")
        return int(value) if value is not None else None

    def status(self) -> str:
        """done (final.pt at the requested budget), resume (a latest.pt to continue from), new, or stuck (a final.pt
        below the budget and no latest.pt to extend it from: never deleted, reported)."""
        ckpt = os.path.join(self.run_dir, "checkpoints")
        final = os.path.exists(os.path.join(ckpt, "final.pt"))
        if final and (
            self.total_timesteps is None
            or saved_total_timesteps(os.path.join(ckpt, "final.pt")) >= self.total_timesteps
        ):
            return "done"
        if os.path.exists(os.path.join(ckpt, "latest.pt")):
            return "resume"
        return "stuck" if final else "new"

    def command(self, status: str) -> list[str]:
        if status == "resume":
            return [
                self.script,
                "--resume",
                os.path.join(self.run_dir, "checkpoints", "latest.pt"),
                "--no-progress-bar",
                *self.extra,
            ]
        return [
            self.script,
            "--env-id",
            self.env_id,
            "--seed",
            str(self.seed),
            "--runs-dir",
            self.runs_dir,
            "--run-name",
            self.name,
            "--no-progress-bar",
            *self.extra,
        ]


def saved_total_timesteps(path: str) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["args"]["total_timesteps"])


def execute(
    run: Run, on_start: Optional[Callable[[subprocess.Popen], None]] = None, stop_file: Optional[str] = None
) -> int:
    """Run one run to its end (here, or inside a Ray task) and return its exit status.

    A lock file keeps two benchmark processes from running the same run, and what to do (skip, resume or start)
    is decided again once the lock is held: another process may have finished the run since this one looked.
    A run with no checkpoint at all starts in an empty directory, so a killed first attempt leaves no half curve
    behind in the plots. The run is stopped (SIGTERM: it saves latest.pt) when the Ray task is cancelled or, as Ray
    can lose a cancellation, when `stop_file` exists.
    """
    import shutil

    os.makedirs(os.path.dirname(run.log_path), exist_ok=True)
    with open(run.log_path + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return BUSY
        if stop_file is not None and os.path.exists(stop_file):  # stopped before it started
            return -signal.SIGTERM
        status = run.status()
        if status == "done":
            return FINISHED_ELSEWHERE
        with open(run.log_path, "a") as log:
            if status == "stuck":
                log.write(
                    f"{run.run_dir} has a final.pt below the requested --total-timesteps "
                    "and no latest.pt to extend it from; move it away to train it again\n"
                )
                return 1
            if status == "new" and os.path.isdir(run.run_dir):
                shutil.rmtree(run.run_dir)
                log.write(f"removed {run.run_dir}: it had no checkpoint to resume from\n")
            command = [sys.executable, *run.command(status)]
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.uname().nodename}: {' '.join(command)}\n")
            log.flush()
            try:  # the child gets SIGTERM (saves latest.pt, stops) when the thread that started it dies (Linux)
                prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (AttributeError, OSError):
                prctl = None
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=(lambda: prctl(1, signal.SIGTERM)) if prctl else None,
            )
            if on_start is not None:
                on_start(proc)
            try:
                while proc.poll() is None:  # not proc.wait(): Ray's cancellation arrives only while Python code runs
                    if stop_file is not None and os.path.exists(stop_file):
                        break
                    time.sleep(0.5)
                else:
                    return proc.returncode
            except KeyboardInterrupt:  # a cancelled Ray task
                pass
            signalled = False  # let the run checkpoint and stop
            while True:
                try:
                    if not signalled:
                        proc.send_signal(signal.SIGTERM)
                        signalled = True
                    return proc.wait()
                except KeyboardInterrupt:  # the cancellation again (run_ray repeats it) while the run saves
                    pass


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-20_000:].replace("\r", "\n")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class Progress:
    """One line per run: status, step, SPS and latest evaluation, read from the runs' TensorBoard logs."""

    def __init__(self, runs: list[Run], refresh: float, stream=sys.stdout):
        self.runs, self.refresh, self.stream = runs, refresh, stream
        self.logs = {run.name: EventLog(run.run_dir) for run in runs}
        self.state = {run.name: "pending" for run in runs}
        self.tty = stream.isatty()  # redraw in place on a terminal; append to a log file
        self.last_draw, self.drawn = 0.0, 0

    def line(self, run: Run) -> str:
        log = self.logs[run.name]
        try:
            log.reload()
        except Exception as e:  # a file being replaced or cut short: the last good numbers stay on screen
            print(f"warning: cannot read the logs of {run.name}: {e}", file=sys.stderr)
        step = log.last_step
        total = run.total_timesteps or int(log.hparams.get("total_timesteps", 0) or 0)
        sps = log.scalars.get("charts/SPS", {})
        evals = log.scalars.get("eval/return_mean", {})
        parts = [f"{run.name:<48}", f"{self.state[run.name]:<9}"]
        if step:
            parts.append(f"{step:>9,}" + (f"/{total:,} {100 * step / total:3.0f}%" if total else ""))
        if sps:
            parts.append(f"SPS {sps[max(sps)]:.0f}")
        if evals:
            parts.append(f"eval {evals[max(evals)]:.1f} @ {max(evals):,}")
        return "  ".join(parts)

    def draw(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_draw < self.refresh:
            return
        self.last_draw = now
        counts = {state: list(self.state.values()).count(state) for state in dict.fromkeys(self.state.values())}
        lines = [time.strftime("%H:%M:%S  ") + ", ".join(f"{n} {state}" for state, n in counts.items())]
        lines += ["  " + self.line(run) for run in self.runs if self.state[run.name] == "running"]
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the top of the last block and clear it
        self.drawn = len(lines)
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()


def run_local(
    todo: list[Run], workers: int, progress: Progress, stop: threading.Event, force: threading.Event
) -> dict[str, int]:
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, int] = {}
    lock = threading.Lock()

    def job(run: Run) -> int:
        if stop.is_set():
            return -signal.SIGTERM

        def started(proc):
            progress.state[run.name] = "running"
            with lock:
                procs[run.name] = proc
            if stop.is_set():
                proc.send_signal(signal.SIGTERM)

        rc = execute(run, on_start=started)
        with lock:
            procs.pop(run.name, None)
        return rc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(job, run): run for run in todo}
        pending = deque(futures)
        signalled = None
        while pending:
            wanted = signal.SIGKILL if force.is_set() else signal.SIGTERM if stop.is_set() else None
            if wanted is not None and wanted != signalled:  # SIGTERM: each run saves latest.pt; SIGKILL: no waiting
                signalled = wanted
                with lock:
                    for proc in procs.values():
                        os.killpg(proc.pid, wanted) if wanted == signal.SIGKILL else proc.send_signal(wanted)
            for future in [f for f in pending if f.done()]:
                pending.remove(future)
                run = futures[future]
                results[run.name] = future.result()
                progress.state[run.name] = describe(results[run.name])
            progress.draw()
            time.sleep(0.2)
    return results


def run_ray(
    todo: list[Run],
    address: str,
    gpus_per_run: float,
    progress: Progress,
    stop: threading.Event,
    force: threading.Event,
    install_signal_handlers: Callable[[], None],
) -> dict[str, int]:
    if not todo:
        return {}
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    install_signal_handlers()  # ray.init puts in its own SIGTERM handler, which would kill this process
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=0)(execute)
    submitted = time.time()
    # on the shared storage: created to stop the runs, beside Ray's cancellation, which a task can miss
    stop_file = os.path.join(
        os.path.dirname(todo[0].log_path), f".stop-{os.uname().nodename}-{os.getpid()}-{int(submitted)}"
    )
    refs = {task.remote(run, stop_file=stop_file): run for run in todo}
    for run in todo:
        progress.state[run.name] = "submitted"
    results: dict[str, int] = {}
    cancelled, cancelled_at = None, 0.0
    try:
        while refs:
            level = "force" if force.is_set() else "stop" if stop.is_set() else None
            # repeated every 10 s: Ray can lose a cancellation of a running task (seen in CI, the run went on)
            if level is not None and (level != cancelled or time.time() - cancelled_at > 10):
                cancelled, cancelled_at = level, time.time()
                os.makedirs(os.path.dirname(stop_file), exist_ok=True)
                open(stop_file, "a").close()
                for ref in refs:  # KeyboardInterrupt in the task: the run saves latest.pt and stops; force: killed
                    ray.cancel(ref, force=level == "force")
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for ref in ready:
                run = refs.pop(ref)
                try:
                    results[run.name] = ray.get(ref)
                except (
                    ray.exceptions.RayError
                ) as e:  # cancelled, the task raised, its worker or node died, out of memory
                    results[run.name] = -signal.SIGTERM if cancelled else 1
                    if not cancelled:
                        with open(run.log_path, "a") as log:
                            log.write(f"ray task failed: {type(e).__name__}: {e}\n")
                progress.state[run.name] = describe(results[run.name])
            for run in refs.values():  # a task has started once it writes to its run's log
                if (
                    progress.state[run.name] == "submitted"
                    and os.path.exists(run.log_path)
                    and os.path.getmtime(run.log_path) >= submitted - 1
                ):
                    progress.state[run.name] = "running"
            progress.draw()
    finally:
        ray.shutdown()
        if os.path.exists(stop_file):
            os.remove(stop_file)
    return results


def describe(rc: int) -> str:
    if rc == 0:
        return "done"
    if rc == BUSY:
        return "busy"
    if rc == FINISHED_ELSEWHERE:
        return "done elsewhere"
    if rc in (-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        return "stopped"
    return "failed"


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Arguments after -- go to every run.",
        usage="%(prog)s --scripts S [S ...] --env-ids E [E ...] --seeds N [N ...] [options] [-- script arguments]",
    )
    p.add_argument(
        "--scripts", nargs="+", required=True, help="training scripts, e.g. sac_continuous.py ppo_continuous.py"
    )
    p.add_argument("--env-ids", nargs="+", required=True, help="gymnasium env ids")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds (default: 1 2 3)")
    p.add_argument("--runs-dir", default="runs", help="where the run directories go (shared storage with Ray)")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="runs at once on this machine (default: CPU cores)"
    )
    p.add_argument("--ray-address", default=None, help="run on this Ray cluster (auto, host:port or ray://host:port)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each Ray task asks for (default 0)")
    p.add_argument(
        "--refresh",
        type=float,
        default=None,
        help="seconds between progress updates (default: 2 on a terminal, 60 otherwise)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    args = p.parse_args(argv)
    # tyro takes --total_timesteps as well as --total-timesteps: one spelling, so that the checks below see it
    extra = [
        re.sub(r"^--([^=]*)", lambda m: "--" + m.group(1).replace("_", "-"), t) if t.startswith("--") else t
        for t in extra
    ]
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.gpus_per_run < 0:
        p.error("--gpus-per-run must be >= 0")
    if args.gpus_per_run and not args.ray_address:
        p.error("--gpus-per-run needs --ray-address (locally, give the runs --cuda or --no-cuda after --)")
    for token in extra:
        if token.split("=")[0] in RESERVED:
            p.error(f"{token.split('=')[0]} is set by benchmark.py for each run; do not pass it after --")
    for script in args.scripts:
        if not os.path.isfile(script) and not os.path.isfile(os.path.join(ROOT, script)):
            p.error(f"no such script: {script}")
    if len(set(args.seeds)) < len(args.seeds):
        p.error("--seeds has duplicates")
    return args, extra


def main(argv: Optional[list[str]] = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    runs_dir = os.path.abspath(args.runs_dir)
    scripts = [os.path.abspath(s if os.path.isfile(s) else os.path.join(ROOT, s)) for s in args.scripts]
    runs: dict[str, Run] = {}
    for run in (
        Run(script, env_id, seed, extra, runs_dir)
        for script in dict.fromkeys(scripts)
        for env_id in dict.fromkeys(args.env_ids)
        for seed in args.seeds
    ):
        if run.name in runs:  # two scripts with one algo name (sac.py, x/sac_continuous.py) would share directories
            print(
                f"error: {runs[run.name].script} and {run.script} both give run {run.name}; rename one", file=sys.stderr
            )
            return 2
        runs[run.name] = run
    # the arguments after --, once, before any run starts (also with --dry-run): not every run failing on them
    error = check_arguments(list(dict.fromkeys(scripts)), args.env_ids[0], args.seeds[0], runs_dir, extra)
    budget = option_value(extra, "--total-timesteps")
    if error is None and budget is not None and not budget.isdigit():
        error = f"--total-timesteps after -- must be a whole number, got {budget}"
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    statuses = {name: run.status() for name, run in runs.items()}
    todo = [run for name, run in runs.items() if statuses[name] != "done"]
    counts = {s: list(statuses.values()).count(s) for s in ("done", "resume", "new", "stuck")}
    print(
        f"{len(runs)} runs in {runs_dir}: {counts['done']} finished already, "
        f"{counts['resume']} to resume, {counts['new']} to start"
        + (f", {counts['stuck']} with a final.pt below the budget and no latest.pt" if counts["stuck"] else "")
    )
    if args.dry_run:
        for run in todo:
            print(f"{statuses[run.name]:<7} {' '.join(run.command(statuses[run.name]))}")
        return 0

    stop, force = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            print(f"\nsignal {signum} again: killing the runs without waiting for their checkpoints", file=sys.stderr)
            force.set()
            return
        print(
            f"\nsignal {signum}: stopping the runs (each saves checkpoints/latest.pt; again to kill them); "
            "run the same command again to resume",
            file=sys.stderr,
        )
        stop.set()

    def install_signal_handlers():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    install_signal_handlers()
    refresh = args.refresh if args.refresh is not None else (2.0 if sys.stdout.isatty() else 60.0)
    progress = Progress(todo, refresh)
    start = time.time()
    if args.ray_address:
        results = run_ray(todo, args.ray_address, args.gpus_per_run, progress, stop, force, install_signal_handlers)
    else:
        results = run_local(todo, args.workers, progress, stop, force)
    progress.draw(force=True)

    print(f"\nsummary ({time.time() - start:.0f} s):")
    failed = []
    for run in runs.values():
        state = (
            "skipped (finished before)"
            if statuses[run.name] == "done"
            else describe(results.get(run.name, -signal.SIGTERM))
        )
        log = EventLog(run.run_dir).reload()
        evals = log.scalars.get("eval/return_mean", {})
        final = f"final eval {evals[max(evals)]:9.1f}  best {max(evals.values()):9.1f}" if evals else ""
        print(f"  {run.name:<48} {state:<26} {log.last_step:>9,} steps  {final}")
        if state == "failed":
            failed.append(run)
    for run in failed:
        print(f"\n{run.name} failed (exit {results[run.name]}); the end of {run.log_path}:\n{log_tail(run.log_path)}")
    busy = any(describe(rc) == "busy" for rc in results.values())
    if busy:
        print("\nruns marked busy are running in another benchmark.py process", file=sys.stderr)
    if stop.is_set():
        return 130
    return 1 if failed or busy else 0


if __name__ == "__main__":
    sys.exit(main())
