"""Replay a saved policy of any algorithm script: `python enjoy.py runs/<run>/checkpoints/best.pt --video out.mp4`.

The checkpoint says which script made it (`algo`), the env and the policy's shape; that script loads it (its own
checkpoint loader, with the format_version check) and rebuilds the policy (`load_policy`, with the frozen observation
normalisation where it has one). By default the episodes are those of the training run's evaluations (the same seeds
and count), so the mean printed is the `eval/return_mean` logged at that checkpoint's step.
`--export zoo/<name>.pt` writes the policy alone: everything replaying needs, nothing resuming needs.
`--record-dataset <id>` saves the episodes as a Minari dataset (bc_continuous.py learns from it)."""

import functools
import importlib.util
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import tyro

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = ("best.pt", "final.pt", "latest.pt")
POLICY_KEYS = (
    "format_version",
    "algo",
    "env_id",
    "run_name",
    "args",
    "global_step",
    "policy_kwargs",
    "policy",
    "obs_rms",
)


@dataclass
class EnjoyArgs:
    checkpoint: tyro.conf.Positional[str]
    """a checkpoint file, or a run directory (then best.pt, final.pt, latest.pt in that order)"""
    episodes: Optional[int] = None
    """episodes to run (default: as many as the run's evaluations)"""
    seed: Optional[int] = None
    """episode i starts from reset(seed=seed + i) (default: the run's evaluation seeds)"""
    stochastic: bool = False
    """sample actions from the policy instead of the deterministic action"""
    video: Optional[str] = None
    """write the episodes to this .mp4 or .gif file (works headless)"""
    render: Literal["none", "human"] = "none"
    """human: show the episodes in a window (needs a display)"""
    env_id: Optional[str] = None
    """run on this env instead of the stored one (say, a -v4 checkpoint on -v5)"""
    device: str = "cpu"
    """torch device of the policy"""
    video_scale: float = 1.0
    """scale the video's frames by this factor (0.4: a 192x192 GIF of MuJoCo's 480x480 frames, for a README)"""
    max_steps: Optional[int] = None
    """cut each episode after this many steps (a short preview of a long episode)"""
    export: Optional[str] = None
    """write the policy alone (a few hundred KB, what enjoy.py needs) to this .pt file, then replay it"""
    record_dataset: Optional[str] = None
    """save the episodes as a local Minari dataset with this id (halfcheetah-sac-expert-v0) for bc_continuous.py"""


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


@functools.lru_cache(maxsize=None)  # a checkpoint of sac_continuous needs that script once, not twice
def import_algo(algo: str):
    script = os.path.join(HERE, f"{algo}.py")
    if not algo.isidentifier() or not os.path.isfile(script):
        raise EnjoyError(f"the checkpoint was made by {algo!r}, and there is no {algo}.py beside enjoy.py")
    spec = importlib.util.spec_from_file_location(algo, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts train only under `if __name__ == "__main__"`
    return module


def load(path: str):
    """The checkpoint, loaded by the script that wrote it, and that script as a module. Every script's loader is the
    same code (the shared plumbing), so any one of them can read which script wrote the file."""
    any_script = import_algo("sac_continuous")
    try:
        algo = any_script.load_checkpoint(path)["algo"]
        module = import_algo(str(algo))
        return module.load_checkpoint(path), module
    except any_script.CheckpointError as e:
        raise EnjoyError(str(e)) from None


def check_writable(path: str, suffixes: tuple) -> None:
    """Before any work: the file can be created where it is asked for."""
    if not path.endswith(suffixes):
        raise EnjoyError(f"{path} must end in {' or '.join(suffixes)}")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        existed = os.path.exists(path)
        open(path, "ab").close()
        if not existed:
            os.remove(path)
    except OSError as e:
        raise EnjoyError(f"cannot write {path}: {e.strerror or e}") from None


def scaled(frame: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return frame
    from PIL import Image

    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS))


def check_new_dataset(dataset_id: str) -> None:
    """Before any work: minari can write a dataset of this id, and none exists."""
    try:
        import minari
        from minari.storage import get_dataset_path
    except ImportError as e:
        raise EnjoyError(f"--record-dataset needs minari (pip install minari): {e}") from None
    if not re.fullmatch(r"([\w.-]+/)*[\w.-]+-v\d+", dataset_id):
        raise EnjoyError(f"--record-dataset {dataset_id!r}: a Minari id is [namespace/]name-v<version>")
    if dataset_id in minari.list_local_datasets() or os.path.exists(get_dataset_path(dataset_id)):
        raise EnjoyError(f"dataset {dataset_id} exists in {get_dataset_path(dataset_id)}; choose another id")


def save_dataset(dataset_id: str, episodes: list, env, checkpoint: dict, returns: list, stochastic: bool) -> None:
    """The episodes (dicts of EpisodeBuffer's fields), with minari's own writer; the recording policy's mean return is
    the dataset's ref_max_score."""
    import minari
    from minari.data_collector import EpisodeBuffer

    policy = f"{'stochastic' if stochastic else 'deterministic'} policy of a {checkpoint['algo']} checkpoint"
    with warnings.catch_warnings():  # minari asks for an author, an e-mail address and a code link
        warnings.simplefilter("ignore")
        dataset = minari.create_dataset_from_buffers(
            dataset_id,
            [EpisodeBuffer(id=i, **episode) for i, episode in enumerate(episodes)],
            env=env.spec.id,
            observation_space=env.observation_space,  # dm_control's: flattened, as the scripts see them
            action_space=env.action_space,
            algorithm_name=f"{checkpoint['algo']} (enjoy.py)",
            description=f"{len(episodes)} episodes of the {policy} at step {checkpoint['global_step']}",
            ref_max_score=float(np.mean(returns)),
            num_episodes_average_score=min(len(episodes), 10),  # random-policy episodes for ref_min_score
        )
    where = os.path.dirname(dataset.spec.data_path)
    print(f"dataset {dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps, in {where}")


def main() -> None:
    args = tyro.cli(EnjoyArgs)
    try:
        if args.episodes is not None and args.episodes <= 0:
            raise EnjoyError(f"--episodes must be positive, got {args.episodes}")
        if not 0 < args.video_scale <= 4:
            raise EnjoyError(f"--video-scale must be in (0, 4], got {args.video_scale}")
        if args.max_steps is not None and args.max_steps <= 0:
            raise EnjoyError(f"--max-steps must be positive, got {args.max_steps}")
        if args.render == "human" and args.video is not None:
            raise EnjoyError(
                "--render human and --video exclude each other (a window's frames are not returned); choose one"
            )
        if args.render == "human" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EnjoyError("--render human needs a display; use --video out.mp4 to watch it headless")
        for path, suffixes in ((args.video, (".mp4", ".gif")), (args.export, (".pt",))):
            if path is not None:
                check_writable(path, suffixes)
        if args.record_dataset is not None:
            check_new_dataset(args.record_dataset)
        path = resolve_checkpoint(args.checkpoint)
        checkpoint, module = load(path)
        if args.render == "none":
            module.configure_headless_rendering()
        env_id = args.env_id or checkpoint["env_id"]
        if env_id.startswith("dm_control/"):  # shimmy registers the DeepMind Control Suite's tasks
            importlib.import_module("shimmy")
        render_mode = "human" if args.render == "human" else "rgb_array" if args.video else None
        try:
            env = module.make_env(env_id, 0, render_mode)()
            if args.video:
                env.reset(seed=0)
                env.render()
        except Exception as e:
            raise EnjoyError(f"cannot make or render env {env_id!r}: {e}") from None
        kwargs = checkpoint["policy_kwargs"]
        if env.observation_space.shape != (kwargs["obs_dim"],) or env.action_space.shape != (kwargs["act_dim"],):
            raise EnjoyError(
                f"{env_id} has observations {env.observation_space.shape} and actions {env.action_space.shape}; "
                f"the policy was trained for ({kwargs['obs_dim']},) and ({kwargs['act_dim']},)"
            )
        act = module.load_policy(checkpoint, args.device, deterministic=not args.stochastic)
    except EnjoyError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # CheckpointError of the script: a policy with weights that are not finite, say
        if type(e).__name__ not in ("CheckpointError", "ArgError"):
            raise
        print(f"error: {path}: {e}", file=sys.stderr)
        sys.exit(2)

    if args.export:
        module.atomic_save({key: checkpoint.get(key) for key in POLICY_KEYS}, args.export)
        print(f"exported the policy of {path} to {args.export} ({os.path.getsize(args.export) / 1024:.0f} KB)")
    saved = checkpoint["args"]
    episodes = args.episodes or saved.get("eval_episodes", 10)
    seed = args.seed if args.seed is not None else saved["seed"] + module.EVAL_SEED
    print(
        f"{path}: {checkpoint['algo']} on {env_id}, step {checkpoint['global_step']}, "
        f"{'stochastic' if args.stochastic else 'deterministic'} policy, {episodes} episodes from seed {seed}"
    )
    video, bar, stride = None, None, 1
    if args.video:  # frames stream to the file; software rendering is slow (about 10 frames a second): a progress bar
        import imageio.v2 as imageio
        from tqdm import tqdm

        fps = env.metadata.get("render_fps", 30)
        gif = args.video.endswith(".gif")
        # browsers play GIF frames shorter than 20 ms at 100 ms: a GIF keeps every n-th frame, at most 50 a second
        stride = max(1, round(fps / 25)) if gif else 1
        video = imageio.get_writer(
            args.video,
            **(dict(mode="I", duration=1000 * stride / fps, loop=0) if gif else dict(fps=fps, macro_block_size=1)),
        )
        total = episodes * -(-(args.max_steps or env.spec.max_episode_steps or 1000) // stride)
        bar = tqdm(total=total, unit="frame", leave=False, disable=not sys.stderr.isatty())
    returns, frames, recorded = [], 0, []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, episode_return, length = False, 0.0, 0
            steps = dict(observations=[obs], actions=[], rewards=[], terminations=[], truncations=[])
            while not done:
                if video is not None and length % stride == 0:
                    video.append_data(scaled(env.render(), args.video_scale))
                    frames += 1
                    bar.update()
                action = act(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                episode_return += float(reward)
                length += 1
                truncated = truncated or length == args.max_steps
                done = terminated or truncated
                if args.record_dataset:
                    for key, value in zip(steps, (obs, action, float(reward), terminated, truncated)):
                        steps[key].append(value)
            returns.append(episode_return)
            if args.record_dataset:
                recorded.append(dict(seed=seed + episode, **steps))
            (bar.write if bar else print)(f"episode {episode + 1}: return {episode_return:.2f}, length {length}")
    finally:
        if video is not None:
            bar.close()
            video.close()
        env.close()
    print(f"mean return {np.mean(returns):.2f} ± {np.std(returns):.2f} over {episodes} episodes")
    if args.record_dataset:
        save_dataset(args.record_dataset, recorded, env, checkpoint, returns, args.stochastic)
    if args.video:
        print(f"video: {args.video} ({frames} frames)")


if __name__ == "__main__":
    main()
