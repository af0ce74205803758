"""Training speed of a script at its defaults (off-policy ones also with --compile) vs Stable-Baselines3, in one run.

    python benchmarks/speed.py --algo sac|td3|ddpg|ppo|a2c [--env-id HalfCheetah-v4] [--steps 4000]
        [--learning-starts 1000] [--repeats 2] [--also OLD.py] [--no-compile]

Each configuration trains in its own process with one torch thread, at the same hyperparameters (the script's
defaults: for the off-policy scripts 256x256 networks, batch 256, one gradient step per env step, its learning rates,
noise and delays), as Stable-Baselines3 runs on one core. The off-policy scripts are also timed with --compile (their
update step through torch.compile; skip it with --no-compile).
SPS is measured after learning starts, from step `learning-starts` to the last step, so only steps that include
an update count. The configurations run one after another, `repeats` times interleaved; the median is reported,
with each configuration's ratio to Stable-Baselines3 as the ratio of medians and as the median of per-repeat ratios.
Needs stable-baselines3: pip install -r requirements-bench.txt."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SB3_PROGRAM = r"""
import json, sys, time
import gymnasium as gym, torch
from stable_baselines3.common.callbacks import BaseCallback
sys.path.insert(0, sys.argv[6])
from sb3_returns import make_model  # the same SB3 configuration the returns benchmark runs
algo, env_id = sys.argv[1], sys.argv[2]
steps, learning_starts, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
model = make_model(algo, gym.make(env_id), seed, learning_starts)

class Clock(BaseCallback):
    def _on_training_start(self):
        self.start = time.perf_counter()

    def _on_step(self):
        if self.num_timesteps == learning_starts:
            self.start = time.perf_counter()
        return True

clock = Clock()
model.learn(steps, callback=clock)
print(json.dumps({"sps": (steps - learning_starts) / (time.perf_counter() - clock.start)}))
"""


def ours(script: str, env_id: str, steps: int, learning_starts: int, seed: int, extra: list) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            os.path.join(ROOT, script),
            "--env-id",
            env_id,
            "--total-timesteps",
            str(steps),
            "--seed",
            str(seed),
            "--log-every",
            "250",
            "--eval-every",
            "0",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            str(10 * steps),
            "--no-progress-bar",
            "--runs-dir",
            tmp,
            "--run-name",
            "speed",
            *extra,
        ]
        if learning_starts > 0:  # the off-policy scripts
            cmd += ["--learning-starts", str(learning_starts), "--no-save-buffer"]
        subprocess.run(cmd, check=True, capture_output=True)
        acc = EventAccumulator(os.path.join(tmp, "speed"), size_guidance={"scalars": 0})
        acc.Reload()
        tag = "losses/qf_loss" if "losses/qf_loss" in acc.Tags()["scalars"] else "losses/value_loss"
        events = [e for e in acc.Scalars(tag) if e.step >= learning_starts]
    # wall time of the first and last loss log after learning starts (the final evaluation comes after the last)
    return (events[-1].step - events[0].step) / (events[-1].wall_time - events[0].wall_time)


def sb3(algo: str, env_id: str, steps: int, learning_starts: int, seed: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SB3_PROGRAM,
            algo,
            env_id,
            str(steps),
            str(learning_starts),
            str(seed),
            os.path.join(ROOT, "benchmarks"),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["sps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=["sac", "td3", "ddpg", "ppo", "a2c"], default="sac")
    parser.add_argument("--env-id", default="HalfCheetah-v4")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the --compile configuration (off-policy scripts)"
    )
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="SCRIPT",
        help="other versions of the script to time the same way, at their defaults, e.g. an older commit's: "
        "git show HEAD~1:sac_continuous.py > /tmp/sac_before.py",
    )
    args = parser.parse_args()
    if args.algo in ("ppo", "a2c"):  # on-policy: every step counts, from the first update on
        args.learning_starts = 0

    script, baseline_name = f"{args.algo}_continuous.py", f"stable-baselines3 {args.algo.upper()}"
    configs = {
        f"{script} (eager)": lambda seed: ours(script, args.env_id, args.steps, args.learning_starts, seed, []),
        baseline_name: lambda seed: sb3(args.algo, args.env_id, args.steps, args.learning_starts, seed),
    }
    for other in args.also:
        configs[f"{other} (eager)"] = lambda seed, other=os.path.abspath(other): ours(
            other, args.env_id, args.steps, args.learning_starts, seed, []
        )
    if args.algo in ("sac", "td3", "ddpg") and not args.no_compile:  # PPO and A2C do not take --compile
        configs[f"{script} --compile"] = lambda seed: ours(
            script, args.env_id, args.steps, args.learning_starts, seed, ["--compile"]
        )
    results = {name: [] for name in configs}
    for repeat in range(args.repeats):
        for name, measure in configs.items():
            results[name].append(measure(repeat + 1))
            print(f"  {name}: {results[name][-1]:.1f} SPS", flush=True)
    baseline = statistics.median(results[baseline_name])
    print(
        f"\n{args.env_id}, SPS after learning starts (steps {args.learning_starts}-{args.steps}), "
        f"median of {args.repeats}:"
    )
    print("| configuration | SPS | ratio of medians | median of per-repeat ratios |")
    for name, values in results.items():
        median = statistics.median(values)
        # within a repeat the configurations ran minutes apart: their ratio is less affected by the machine's drift
        paired = statistics.median(value / base for value, base in zip(values, results[baseline_name]))
        print(f"| {name} | {median:.1f} | {median / baseline:.2f}x | {paired:.2f}x |")


if __name__ == "__main__":
    main()
