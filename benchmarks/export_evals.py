"""Write the evaluation curves of finished runs to a CSV and print the final evaluation across seeds.

    python benchmarks/export_evals.py runs/HalfCheetah-v4__sac__1 runs/HalfCheetah-v4__sac__2 ... --out results.csv
"""
import argparse
import csv
import os

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", required=True, help="CSV file: run, step, wall_time_s, return_mean, return_std")
    args = parser.parse_args()
    finals, rows = [], []
    for run in args.runs:
        acc = EventAccumulator(run, size_guidance={"scalars": 0})
        acc.Reload()
        means, stds = acc.Scalars("eval/return_mean"), acc.Scalars("eval/return_std")
        start = min(e.wall_time for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)[:1])
        for mean, std in zip(means, stds):
            rows.append([os.path.basename(run.rstrip("/")), mean.step, round(mean.wall_time - start, 1), round(mean.value, 2), round(std.value, 2)])
        finals.append((means[-1].step, means[-1].value, (means[-1].wall_time - start) / 60))
        print(f"{run}: step {means[-1].step}, eval {means[-1].value:.1f}, {finals[-1][2]:.1f} min")
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "step", "wall_time_s", "return_mean", "return_std"])
        writer.writerows(rows)
    values = np.array([value for _, value, _ in finals])
    print(f"final evaluation over {len(values)} runs: {values.mean():.1f} ± {values.std():.1f} (min {values.min():.1f})")


if __name__ == "__main__":
    main()
