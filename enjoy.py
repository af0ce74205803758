"""Replay a saved policy of any algorithm script: `python enjoy.py runs/<run>/checkpoints/best.pt --video out.mp4`.

The checkpoint alone says which script made it (`algo`), the env and the policy's shape; that script's
`load_policy` rebuilds the policy (with its frozen observation normalisation where it has one)."""
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import tyro

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = ("best.pt", "final.pt", "latest.pt")
REQUIRED_KEYS = {"format_version", "algo", "env_id", "args", "policy", "policy_kwargs", "obs_rms"}


@dataclass
class EnjoyArgs:
    checkpoint: tyro.conf.Positional[str]
    """a checkpoint file, or a run directory (then best.pt, final.pt, latest.pt in that order)"""
    episodes: int = 5
    """episodes to run"""
    stochastic: bool = False
    """sample actions from the policy instead of the deterministic action"""
    video: Optional[str] = None
    """write the episodes to this .mp4 or .gif file (works headless)"""
    render: Literal["none", "human"] = "none"
    """human: show the episodes in a window (needs a display)"""
    env_id: Optional[str] = None
    """run on this env instead of the stored one (say, a -v4 checkpoint on -v5)"""
    seed: int = 0
    """episode i starts from reset(seed=seed + i)"""
    device: str = "cpu"
    """torch device of the policy"""


class EnjoyError(Exception):
    pass


def resolve_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        for folder in (os.path.join(path, "checkpoints"), path):
            for name in CANDIDATES:
                if os.path.isfile(os.path.join(folder, name)):
                    return os.path.join(folder, name)
        raise EnjoyError(f"{path}: no {', '.join(CANDIDATES)} in this directory or its checkpoints/")
    if not os.path.exists(path):
        raise EnjoyError(f"{path}: no such file or directory")
    return path


def load(path: str) -> dict:
    """weights_only=True: tensors, numbers, strings, lists and dicts load; anything that would run code is refused."""
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise next to our own message
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or malicious files raise several types
        message = str(e)
        if "Unsupported global" in message or "Weights only load failed" in message:
            raise EnjoyError(f"{path}: refused, it holds objects that would run code when unpickled") from None
        first_sentence = message.strip().split(". ")[0] if message.strip() else type(e).__name__
        raise EnjoyError(f"{path}: not a loadable checkpoint (truncated or not a torch file: {first_sentence})") from None
    if not isinstance(checkpoint, dict) or not REQUIRED_KEYS <= checkpoint.keys():
        raise EnjoyError(f"{path}: not a checkpoint of this project (needs {', '.join(sorted(REQUIRED_KEYS))})")
    return checkpoint


def import_algo(algo: str):
    script = os.path.join(HERE, f"{algo}.py")
    if not algo.isidentifier() or not os.path.isfile(script):
        raise EnjoyError(f"the checkpoint was made by {algo!r}, and there is no {algo}.py beside enjoy.py")
    spec = importlib.util.spec_from_file_location(algo, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts train only under `if __name__ == "__main__"`
    return module


def main() -> None:
    args = tyro.cli(EnjoyArgs)
    try:
        if args.episodes <= 0:
            raise EnjoyError(f"--episodes must be positive, got {args.episodes}")
        if args.video is not None and not args.video.endswith((".mp4", ".gif")):
            raise EnjoyError(f"--video must end in .mp4 or .gif, got {args.video}")
        if args.render == "human" and args.video is not None:
            raise EnjoyError("--render human and --video exclude each other (a window's frames are not returned); choose one")
        if args.render == "human" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EnjoyError("--render human needs a display; use --video out.mp4 to watch it headless")
        path = resolve_checkpoint(args.checkpoint)
        checkpoint = load(path)
        module = import_algo(checkpoint["algo"])
        if args.render == "none":
            module.configure_headless_rendering()
        import gymnasium as gym

        env_id = args.env_id or checkpoint["env_id"]
        render_mode = "human" if args.render == "human" else "rgb_array" if args.video else None
        try:
            env = gym.make(env_id, render_mode=render_mode)
        except Exception as e:
            raise EnjoyError(f"cannot make env {env_id!r}: {e}") from None
        kwargs = checkpoint["policy_kwargs"]
        if env.observation_space.shape != (kwargs["obs_dim"],) or env.action_space.shape != (kwargs["act_dim"],):
            raise EnjoyError(f"{env_id} has observations {env.observation_space.shape} and actions {env.action_space.shape}; "
                             f"the policy was trained for ({kwargs['obs_dim']},) and ({kwargs['act_dim']},)")
        act = module.load_policy(checkpoint, args.device, deterministic=not args.stochastic)
    except EnjoyError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    print(f"{path}: {checkpoint['algo']} on {env_id}, step {checkpoint['global_step']}, "
          f"{'stochastic' if args.stochastic else 'deterministic'} policy")
    returns, frames = [], []
    if args.video:
        try:
            env.reset(seed=args.seed)
            env.render()
        except gym.error.DependencyNotInstalled as e:
            print(f"error: cannot render {env_id}: {e}", file=sys.stderr)
            sys.exit(2)
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=args.seed + episode)
        done, episode_return, length = False, 0.0, 0
        while not done:
            if args.video:
                frames.append(env.render())
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            episode_return += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(episode_return)
        print(f"episode {episode + 1}: return {episode_return:.2f}, length {length}")
    env.close()
    print(f"mean return {np.mean(returns):.2f} ± {np.std(returns):.2f} over {args.episodes} episodes")
    if args.video:
        os.makedirs(os.path.dirname(os.path.abspath(args.video)), exist_ok=True)
        module.write_video(args.video, frames, env.metadata.get("render_fps", 30))
        print(f"video: {args.video} ({len(frames)} frames)")


if __name__ == "__main__":
    main()
