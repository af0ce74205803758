"""Returns per env step of Stable-Baselines3's algorithms, logged the way this project's scripts log them, so that
plot.py draws them beside ours.

    python benchmarks/sb3_returns.py --algo ppo|a2c|sac|td3|ddpg --env-id HalfCheetah-v4 --seed 1
        [--total-timesteps 1000000] [--runs-dir runs]

PPO and A2C run at SB3's defaults. SAC, TD3 and DDPG run at our scripts' defaults, read from their Args
(make_model below; speed.py builds its SB3 baselines with the same function): network widths, batch, buffer,
learning rate, random steps before learning starts, one gradient step per env step, exploration noise, TD3's
delay and smoothing.

The run goes to <runs-dir>/<env>__sb3_<algo>__<seed>: TensorBoard scalars eval/return_mean and eval/return_std
every --eval-every env steps, and the 'hyperparameters' text table plot.py groups by (exp_name sb3_<algo>, env_id,
seed). The evaluation is the one our scripts do: --eval-episodes episodes on a separate env, episode i reset with
seed + 100000 + i (ppo_continuous.evaluate itself), the deterministic action (the Gaussian's mean, clipped to the
bounds by SB3's predict).
SB3 gets one torch thread, as our scripts do. Needs stable-baselines3: pip install -r requirements-bench.txt."""

import argparse
import os
import sys

import gymnasium as gym
import torch
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppo_continuous import evaluate  # noqa: E402  the evaluation every script of ours runs, for SB3 too


def make_model(algo: str, env, seed: int, learning_starts: int | None = None):
    """SB3's `algo` on `env`: PPO and A2C at SB3's defaults, SAC, TD3 and DDPG at the defaults of our script's Args
    (`learning_starts` overrides the script's random steps; speed.py starts updates early to time them)."""
    import importlib

    import numpy as np
    from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    if algo in ("ppo", "a2c"):
        return {"ppo": PPO, "a2c": A2C}[algo]("MlpPolicy", env, seed=seed, device="cpu")
    ours = importlib.import_module(f"{algo}_continuous").Args()
    assert ours.policy_lr == ours.q_lr, "SB3 takes one learning rate for the actor and the critics"
    common = dict(
        learning_rate=ours.q_lr,
        buffer_size=ours.buffer_size,
        batch_size=ours.batch_size,
        tau=ours.tau,
        gamma=ours.gamma,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs={"net_arch": list(ours.hidden_sizes)},
        seed=seed,
        device="cpu",
        learning_starts=ours.learning_starts if learning_starts is None else learning_starts,
    )
    if algo == "sac":
        return SAC("MlpPolicy", env, ent_coef="auto" if ours.autotune else ours.alpha, **common)
    scale = (env.action_space.high - env.action_space.low) / 2.0  # our noise is scaled per dimension by the half-range
    noise = NormalActionNoise(np.zeros(env.action_space.shape), ours.exploration_noise * scale)
    if algo == "td3":
        return TD3(
            "MlpPolicy",
            env,
            action_noise=noise,
            policy_delay=ours.policy_frequency,
            target_policy_noise=ours.policy_noise,
            target_noise_clip=ours.noise_clip,
            **common,
        )
    return DDPG("MlpPolicy", env, action_noise=noise, **common)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=["ppo", "a2c", "sac", "td3", "ddpg"], default="ppo")
    parser.add_argument("--env-id", default="HalfCheetah-v4")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-timesteps", type=int, default=1_000_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)
    for name in ("total_timesteps", "eval_every", "eval_episodes"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    exp_name = f"sb3_{args.algo}"
    run_dir = os.path.join(args.runs_dir, f"{args.env_id}__{exp_name}__{args.seed}")
    if os.path.exists(run_dir):
        print(f"error: {run_dir} exists; this script does not resume", file=sys.stderr)
        return 2
    writer = SummaryWriter(run_dir)
    table = {
        "exp_name": exp_name,
        "env_id": args.env_id,
        "seed": args.seed,
        "total_timesteps": args.total_timesteps,
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "defaults": "stable-baselines3" if args.algo in ("ppo", "a2c") else "this project's script",
    }
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in table.items()))
    eval_env = gym.make(args.env_id)
    model = make_model(args.algo, gym.make(args.env_id), args.seed)

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            step = self.num_timesteps  # one env: one env step per call
            if step % args.eval_every == 0 or step == args.total_timesteps:
                act_fn = lambda obs: self.model.predict(obs, deterministic=True)[0]  # noqa: E731
                returns = evaluate(act_fn, eval_env, args.eval_episodes, args.seed + 100_000)
                writer.add_scalar("eval/return_mean", returns.mean(), step)
                writer.add_scalar("eval/return_std", returns.std(), step)
                writer.flush()
            return True

    model.learn(args.total_timesteps, callback=Evaluate())
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
