"""Learning curves and result tables from the TensorBoard logs of this project's scripts.

    python plot.py runs/ --out plots/                       # one panel per env, one line per script
    python plot.py runs/ --out plots/ --group-by autotune   # one line per script and value of --autotune
    python plot.py runs/ --out plots/ --ci --reference      # bootstrap band, published returns as dashed lines

It reads every run directory under the given paths (a directory holding events.out.tfevents.* files), groups
the runs by env id and script (exp_name) plus any --group-by arguments, and draws the mean over seeds of
eval/return_mean against environment steps with a shaded band. It writes <metric>.png (and .svg with --svg)
and <metric>.md: the final and the best evaluation of each group as mean ± std over seeds.
"""

import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# the arguments that a resumed run may change (the scripts' resume_args): the budget, devices, logging
RESUMABLE = {
    "total_timesteps",
    "cuda",
    "torch_threads",
    "compile",
    "cudagraphs",
    "track",
    "progress_bar",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "capture_video",
    "save_buffer",
    "vector_mode",
}
# arguments that do not change what is learned: runs that differ only in these are seeds of one experiment
# (update_threads: an option of older off-policy scripts, logged by their runs; how many threads ran the update)
NOT_HYPERPARAMETERS = RESUMABLE | {
    "seed",
    "run_name",
    "runs_dir",
    "resume",
    "wandb_project_name",
    "wandb_entity",
    "torch_deterministic",
    "update_threads",
}
# options the scripts no longer have, and the value that their runs, which do not log them, ran with: older runs
# that log that value are of one experiment with them (--assume overrides)
REMOVED = {"precision": "float32"}
REFERENCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "reference_returns.csv")


class EventLog:
    """The scalars and hyperparameters of one run directory, read incrementally from its TensorBoard event files.

    A resumed run appends a new event file that starts with a purge marker (SummaryWriter's purge_step): what
    earlier files logged at or after that step is dropped, as TensorBoard itself does, so no step counts twice.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.scalars: dict[str, dict[int, float]] = defaultdict(dict)  # tag -> {step: value}
        self.hparams: dict[str, str] = {}
        self.walls: dict[str, list[tuple[float, int]]] = {}  # event file -> [(wall time, step), ...]
        self.max_step: Optional[int] = None
        self._loaders: dict = {}

    def reload(self) -> "EventLog":
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        for name in sorted(event_files(self.run_dir), key=event_file_time):
            path = os.path.join(self.run_dir, name)
            if path not in self._loaders:
                self._loaders[path] = LegacyEventFileLoader(path)
            for event in self._loaders[path].Load():
                self.walls.setdefault(path, []).append((event.wall_time, event.step))
                if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                    for values in self.scalars.values():
                        for step in [s for s in values if s >= event.step]:
                            del values[step]
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        self.scalars[value.tag][event.step] = value.simple_value
                    elif value.tag == "hyperparameters/text_summary" and value.tensor.string_val:
                        self.hparams = parse_hparams(value.tensor.string_val[0].decode())
        return self

    def truncate(self, max_step: int) -> None:
        self.max_step = max_step
        for values in self.scalars.values():
            for step in [s for s in values if s > max_step]:
                del values[step]

    def curve(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        items = sorted(self.scalars.get(tag, {}).items())
        return np.array([s for s, _ in items], dtype=np.int64), np.array([v for _, v in items], dtype=np.float64)

    @property
    def last_step(self) -> int:
        return max((max(v) for v in self.scalars.values() if v), default=0)

    @property
    def wall_time(self) -> float:
        """Seconds spent writing this run (up to max_step), summed over its processes:
        a resumed run's downtime is not counted."""
        total = 0.0
        for walls in self.walls.values():
            within = [w for w, s in walls if self.max_step is None or s <= self.max_step]
            total += max(within) - walls[0][0] if within else 0.0
        return total


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def event_files(run_dir: str) -> list[str]:
    try:
        return [f for f in os.listdir(run_dir) if f.startswith("events.out.tfevents.")]
    except FileNotFoundError:
        return []


def event_file_time(name: str) -> tuple[int, str]:
    parts = name.split(".")  # events.out.tfevents.<unix time>.<host>.<pid>.<n>
    return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, name)


def parse_hparams(markdown: str) -> dict[str, str]:
    """The |param|value| table every script logs as its 'hyperparameters' text."""
    out = {}
    for line in markdown.splitlines():
        cells = line.strip().strip("|").split("|")
        if len(cells) == 2 and cells[0] not in ("param", "-"):
            out[cells[0]] = cells[1]
    return out


def find_runs(paths: list[str]) -> list[str]:
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a directory")
        for dirpath, dirnames, _ in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in ("wandb", "checkpoints", "videos"))
            if event_files(dirpath):
                runs.append(dirpath)
    return runs


@dataclass
class Group:
    env_id: str
    label: str
    runs: list[EventLog] = field(default_factory=list)

    def curves(self, tag: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [c for c in (run.curve(tag) for run in self.runs) if len(c[0])]


def group_runs(logs: list[EventLog], group_by: list[str], assume: dict[str, str] | None = None) -> list[Group]:
    """assume: values of arguments that some runs do not log (written by a script version before it had the
    option), filled in where other runs of the same script log them."""
    # an argument that other runs of the same script log but this one does not: an older version of the script
    script_args: dict[str, set] = {}
    for log in logs:
        script_args.setdefault(log.hparams.get("exp_name", "?"), set()).update(log.hparams)
    for log in logs:
        name = log.hparams.get("exp_name", "?")
        log.hparams = {**{k: v for k, v in (assume or {}).items() if k in script_args[name]}, **log.hparams}
    for g in group_by:  # a script without the argument (TD3 has no alpha) just does not split on it
        if logs and not any(g in log.hparams for log in logs):
            raise KeyError(
                f"no run has an argument {g}; "
                f"the arguments are: {', '.join(sorted(set().union(*(log.hparams for log in logs))))}"
            )
    groups: dict[tuple[str, str], Group] = {}
    for log in logs:
        h = log.hparams
        if "env_id" not in h:
            warn(f"{log.run_dir}: no hyperparameters logged (not a run of this project?); skipped")
            continue
        name = h.get("exp_name", "?")
        label = " ".join(
            [name]
            + [f"{g}={short(h.get(g, '(not logged)'))}" for g in group_by if g != "exp_name" and g in script_args[name]]
        )
        groups.setdefault((h["env_id"], label), Group(h["env_id"], label)).runs.append(log)
    for g in groups.values():  # runs that differ in a hyperparameter are not seeds of one experiment: say so
        differing = sorted(
            k
            for k in set().union(*(r.hparams for r in g.runs)) - NOT_HYPERPARAMETERS - set(group_by)
            if len({r.hparams.get(k) for r in g.runs}) > 1
        )
        if differing:
            warn(
                f"{g.env_id} / {g.label}: runs differ in {', '.join(differing)}; "
                f"pass --group-by {' '.join(differing)} to separate them"
            )
        seeds = [r.hparams.get("seed") for r in g.runs]
        if len(set(seeds)) < len(seeds):
            warn(
                f"{g.env_id} / {g.label}: several runs with the same seed "
                f"({', '.join(sorted(set(s for s in seeds if seeds.count(s) > 1)))})"
            )
    return sorted(groups.values(), key=lambda g: (g.env_id, g.label))


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]], ci: bool = False, n_boot: int = 2000, seed: int = 0):
    """Mean over seeds and a band (± the sample std, or a 95% percentile-bootstrap interval of the mean) on the
    union of the seeds' steps between the last first step and the first last step of the seeds: within that range
    every seed has data, linearly interpolated between its own points."""
    start, end = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
    steps = np.unique(np.concatenate([s[(s >= start) & (s <= end)] for s, _ in curves]))
    if not len(steps):  # no step that every seed covers
        return steps, *(np.empty(0) for _ in range(3))
    values = np.stack([np.interp(steps, s, v) for s, v in curves])  # (seeds, steps)
    mean = values.mean(axis=0)
    n = len(curves)
    if ci and n > 1:
        # resampled seeds as multinomial weights: n_boot x n times n x steps, a chunk of steps at a time
        weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot) / n
        low, high = np.empty_like(mean), np.empty_like(mean)
        for i in range(0, len(steps), 1024):
            low[i : i + 1024], high[i : i + 1024] = np.percentile(
                weights @ values[:, i : i + 1024], [2.5, 97.5], axis=0
            )
    else:
        std = values.std(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
        low, high = mean - std, mean + std
    return steps, mean, low, high


def summarize(groups: list[Group], tag: str) -> list[dict]:
    """Per group: the final and the best evaluation of each seed, as mean and std over seeds."""
    rows = []
    for g in groups:
        runs = [r for r in g.runs if len(r.curve(tag)[0])]
        if not runs:
            continue
        finals = np.array([r.curve(tag)[1][-1] for r in runs])
        bests = np.array([r.curve(tag)[1].max() for r in runs])
        steps = [int(r.curve(tag)[0][-1]) for r in runs]
        rows.append(
            {
                "env_id": g.env_id,
                "group": g.label,
                "seeds": len(runs),
                "final_mean": finals.mean(),
                "final_std": sample_std(finals),
                "best_mean": bests.mean(),
                "best_std": sample_std(bests),
                "steps_min": min(steps),
                "steps_max": max(steps),
                "wall_time": float(np.mean([r.wall_time for r in runs])),
            }
        )
    return rows


def sample_std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def markdown_table(rows: list[dict], tag: str) -> str:
    out = [f"| env | group | seeds | final {tag} | best {tag} | env steps | wall time per run |", "|-|-|-|-|-|-|-|"]
    for r in rows:
        steps = f"{r['steps_min']:,}" if r["steps_min"] == r["steps_max"] else f"{r['steps_min']:,}–{r['steps_max']:,}"
        out.append(
            f"| {r['env_id']} | {r['group']} | {r['seeds']} | {mean_std(r['final_mean'], r['final_std'])} "
            f"| {mean_std(r['best_mean'], r['best_std'])} | {steps} | {r['wall_time'] / 60:.1f} min |"
        )
    return "\n".join(out) + "\n"


def load_references(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["steps"], r["return"] = int(float(r["steps"])), float(r["return"])
    return rows


def format_steps(x: float) -> str:
    return f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x / 1e3:g}k" if x else "0"


def short_source(source: str) -> str:
    return source.split(" (")[0]


def short(value, width: int = 28) -> str:
    """A value as a legend shows it: a long one (a checkpoint's path, say) by its last `width` characters."""
    text = str(value)
    return text if len(text) <= width else "…" + text[-width + 1 :]


def algo_of(label: str) -> str:
    return label.split()[0].removesuffix("_continuous")


def make_figure(groups: list[Group], tag: str, ci: bool = False, references: list[dict] | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({g.env_id for g in groups})
    ncols = min(3, len(envs))
    nrows = math.ceil(len(envs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.8 * nrows), squeeze=False)
    labels = sorted({g.label for g in groups})
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    sources = sorted({short_source(r["source"]) for r in references or []})
    dashes = [(6, 3), (2, 2), (8, 2, 2, 2), (4, 1, 1, 1)]  # one dash pattern per source
    for ax, env_id in zip(axes.flat, envs):
        xmax = 0
        for g in (g for g in groups if g.env_id == env_id):
            curves = g.curves(tag)
            if not curves:
                continue
            steps, mean, low, high = aggregate(curves, ci=ci)
            if not len(steps):
                warn(f"{env_id} / {g.label}: its seeds share no range of steps (one still at its start?); not drawn")
                continue
            ax.plot(
                steps, mean, color=colors[g.label], label=f"{g.label} ({len(curves)} seed{'s' * (len(curves) > 1)})"
            )
            ax.fill_between(steps, low, high, color=colors[g.label], alpha=0.2, linewidth=0)
            xmax = max(xmax, int(steps[-1]))
        algos = {algo_of(g.label) for g in groups if g.env_id == env_id}
        for ref in (
            references or []
        ):  # for each plotted algorithm and source: its largest budget up to 1.1x this panel's
            if ref["env_id"] != env_id or ref["algo"] not in algos or ref["steps"] > 1.1 * xmax:
                continue
            key = (ref["algo"], short_source(ref["source"]))
            if ref["steps"] != max(
                r["steps"]
                for r in references
                if (r["env_id"], r["algo"], short_source(r["source"])) == (env_id, *key) and r["steps"] <= 1.1 * xmax
            ):
                continue
            color = next(colors[lab] for lab in labels if algo_of(lab) == ref["algo"])
            ax.axhline(
                ref["return"],
                color=color,
                linestyle=(0, dashes[sources.index(key[1]) % len(dashes)]),
                linewidth=1.2,
                gid="reference",
                label=f"{ref['algo']}, {key[1]} @ {format_steps(ref['steps'])}: {ref['return']:.0f}",
            )
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(lambda x, _: format_steps(x))
        ax.set_ylabel(tag)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(envs) :]:
        ax.remove()
    fig.suptitle(f"mean over seeds; band: {'95% bootstrap interval of the mean' if ci else '± sample std'}", fontsize=9)
    fig.tight_layout()
    return fig


def output_problem(out: str, files: list[str]) -> Optional[str]:
    """Why the output directory `out` or the `files` in it cannot be written, or None: found before any work."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out} is a file; it names the directory that the figure and the table go into"
    for path in files:
        if os.path.isdir(path):
            return (
                f"{path} is a directory; it is the file plot.py would write "
                "(move it away, or pass another --out or --name)"
            )
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"{path} is not writable"
    directory = os.path.dirname(os.path.abspath(files[0]))  # --out, or a folder of it that --name names
    existing = directory
    while not os.path.exists(existing):  # the nearest folder that exists: the rest is created under it
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"--out {out} cannot be created: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"--out {out} is not writable ({existing} is read-only to this user)"
            if existing == directory
            else f"--out {out} cannot be created: {existing} is read-only to this user"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("paths", nargs="+", help="run directories, or directories that hold them (searched recursively)")
    p.add_argument("--out", default="plots", help="output directory")
    p.add_argument("--metric", default="eval/return_mean", help="the scalar tag to plot")
    p.add_argument(
        "--group-by",
        nargs="*",
        default=[],
        metavar="ARG",
        help="script arguments (as in the run's hyperparameters, e.g. alpha num_envs) that separate lines",
    )
    p.add_argument(
        "--assume",
        nargs="*",
        default=[],
        metavar="ARG=VALUE",
        help="runs that do not log ARG (written by a script version before it had the option) ran with VALUE",
    )
    p.add_argument("--env-ids", nargs="*", default=None, help="only these envs")
    p.add_argument(
        "--match", default=None, metavar="REGEX", help="only runs whose directory name matches this regular expression"
    )
    p.add_argument(
        "--max-step",
        type=int,
        default=None,
        help="cut the curves at this many environment steps (the budget of the table)",
    )
    p.add_argument(
        "--ci", action="store_true", help="band: 95%% bootstrap confidence interval of the mean instead of ± std"
    )
    p.add_argument(
        "--reference",
        nargs="?",
        const=REFERENCE_FILE,
        default=None,
        metavar="CSV",
        help=f"draw published returns as dashed lines (default data: {os.path.relpath(REFERENCE_FILE)})",
    )
    p.add_argument("--svg", action="store_true", help="also write an SVG")
    p.add_argument("--name", default=None, help="file name stem of the figure (default: from the metric)")
    args = p.parse_args(argv)
    args.group_by = [g.replace("-", "_") for g in args.group_by]
    if any("=" not in a for a in args.assume):
        print(f"error: --assume takes ARG=VALUE, got {' '.join(args.assume)}", file=sys.stderr)
        return 2
    assumed = {**REMOVED, **{key.replace("-", "_"): value for key, value in (a.split("=", 1) for a in args.assume)}}
    stem = args.name or re.sub(r"[^A-Za-z0-9_.-]+", "_", args.metric)
    outputs = [os.path.join(args.out, f"{stem}.{ext}") for ext in (["png", "svg"] if args.svg else ["png"]) + ["md"]]
    problem = output_problem(args.out, outputs)
    if problem is None and args.match is not None:
        try:
            re.compile(args.match)
        except re.error as e:
            problem = f"--match {args.match!r} is not a valid regular expression: {e}"
    if problem is not None:  # before reading any run
        print(f"error: {problem}", file=sys.stderr)
        return 2

    try:
        runs = find_runs(args.paths)
        references = load_references(args.reference) if args.reference else None
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.match:
        runs = [r for r in runs if re.search(args.match, os.path.basename(r))]
    logs = [EventLog(r).reload() for r in runs]
    if args.max_step is not None:
        for log in logs:
            log.truncate(args.max_step)
    if args.env_ids:
        logs = [log for log in logs if log.hparams.get("env_id") in args.env_ids]
    try:
        groups = group_runs(logs, args.group_by, assumed)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    groups = [g for g in groups if g.curves(args.metric)]
    if not groups:
        print(f"error: no run under {', '.join(args.paths)} has logged {args.metric}", file=sys.stderr)
        return 1

    if args.ci and min(len(g.curves(args.metric)) for g in groups) < 5:
        warn(
            "with fewer than 5 seeds a bootstrap interval is coarse (2 seeds give 3 possible means); "
            "read it as a rough band"
        )
    fig = make_figure(groups, args.metric, ci=args.ci, references=references)
    table = markdown_table(summarize(groups, args.metric), args.metric)
    try:  # checked above; what no check foresees (a full disk, the directory removed meanwhile) is still one line
        os.makedirs(os.path.dirname(outputs[0]) or ".", exist_ok=True)
        for path in outputs:
            if path.endswith(".md"):
                with open(path, "w") as f:
                    f.write(table)
            else:
                fig.savefig(path, **({"dpi": 110} if path.endswith(".png") else {}))
    except OSError as e:
        print(f"error: cannot write {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(table)
    print("wrote " + ", ".join(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
