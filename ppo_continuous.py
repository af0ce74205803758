"""Proximal Policy Optimization with a clipped surrogate objective, for continuous actions (Schulman et al. 2017, arXiv:1707.06347)."""
import ctypes.util
import difflib
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Callable, Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

ALGO = os.path.basename(__file__)[: -len(".py")]
FORMAT_VERSION = 1


@dataclass
class Args:
    # ---- common to every script: same fields, same order ----
    exp_name: str = ALGO
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of Python, NumPy, torch, the envs and their action spaces"""
    torch_deterministic: bool = True
    """make torch pick deterministic algorithms (two CPU runs with the same seed log identical curves)"""
    cuda: bool = True
    """train on CUDA when it is available"""
    torch_threads: int = 1
    """torch intra-op threads on the CPU; 1 is fastest for 256-wide networks"""
    compile: bool = False
    """put the update step through torch.compile"""
    cudagraphs: bool = False
    """capture the update step in CUDA graphs (torch.compile mode reduce-overhead; needs CUDA)"""
    track: bool = False
    """log to Weights & Biases (the TensorBoard logs are synced)"""
    wandb_project_name: str = "continuous-control"
    """the wandb project"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team or user)"""
    capture_video: bool = False
    """write an mp4 of the first episode of every evaluation to runs/<run>/videos"""
    env_id: str = "HalfCheetah-v4"
    """the gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """total environment steps, summed over the vector envs"""
    num_envs: int = 8
    """parallel environments (PPO's default: 8, each rollout 8 x 256 steps; batched inference is faster than one env)"""
    runs_dir: str = "runs"
    """directory that holds the run directories"""
    run_name: Optional[str] = None
    """name of the run directory (default: <env_id>__<exp_name>__<seed>__<unix time>)"""
    log_every: int = 1_000
    """log losses and SPS every this many environment steps"""
    eval_every: int = 10_000
    """evaluate the deterministic policy every this many environment steps (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    checkpoint_every: int = 25_000
    """write checkpoints/latest.pt every this many environment steps"""
    resume: Optional[str] = None
    """continue the run of this checkpoint (its own arguments are used; total-timesteps and the device flags may be changed)"""
    progress_bar: bool = True
    """show a tqdm progress bar"""

    # ---- PPO ----
    learning_rate: float = 3e-4
    """Adam learning rate"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over the run"""
    num_steps: int = 256
    """steps per env in each rollout"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda (1.0: n-step returns)"""
    num_minibatches: int = 32
    """minibatches per epoch"""
    update_epochs: int = 10
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise the advantages within each minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss around the old values, as the policy loss is"""
    ent_coef: float = 0.0
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    target_kl: Optional[float] = None
    """stop the epochs of an update early once the approximate KL exceeds this"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic (tanh)"""
    log_std_init: float = 0.0
    """initial log standard deviation of the Gaussian policy (0: std 1; -1, std 0.37, is far better on HalfCheetah and worse on Walker2d: see README)"""
    norm_obs: bool = True
    """normalise observations with running statistics (saved in every checkpoint, frozen for evaluation)"""
    norm_reward: bool = True
    """scale rewards by the running std of the discounted return"""
    vector_mode: Literal["sync", "async"] = "sync"
    """step the envs in this process (sync) or in worker processes (async)"""


class ArgError(ValueError):
    """Bad input: reported as one line, exit code 2, before any work."""


def check_common_args(args: Args) -> None:
    positive = ("torch_threads", "total_timesteps", "num_envs", "log_every", "eval_episodes", "checkpoint_every")
    for name in positive:
        if getattr(args, name) <= 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.eval_every < 0:
        raise ArgError(f"--eval-every must be >= 0, got {args.eval_every}")
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgError("--cudagraphs needs CUDA (and not --no-cuda)")
    if ":" not in args.env_id and args.env_id not in gym.registry:
        close = difflib.get_close_matches(args.env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ArgError(f"unknown env id {args.env_id!r}{hint}")


def check_args(args: Args) -> None:
    """Hyperparameters that cannot work, caught before any environment is built."""
    check_common_args(args)
    for name in ("learning_rate", "num_steps", "num_minibatches", "update_epochs", "max_grad_norm"):
        if not getattr(args, name) > 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("clip_coef", "ent_coef", "vf_coef"):
        if getattr(args, name) < 0:
            raise ArgError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if any(h <= 0 for h in args.hidden_sizes) or not args.hidden_sizes:
        raise ArgError(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    for name in ("gamma", "gae_lambda"):
        if not 0 <= getattr(args, name) <= 1:
            raise ArgError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if args.compile or args.cudagraphs:  # the update loops over small minibatches; nothing to gain measured yet
        raise ArgError(f"--compile and --cudagraphs are not supported by {ALGO} yet")
    if args.num_steps * args.num_envs > args.total_timesteps:
        raise ArgError(f"one rollout (--num-steps {args.num_steps} x --num-envs {args.num_envs}) is more than --total-timesteps {args.total_timesteps}")
    if args.num_minibatches > args.num_steps * args.num_envs:
        raise ArgError(f"--num-minibatches {args.num_minibatches} is more than the {args.num_steps * args.num_envs} samples of a rollout")
    if args.target_kl is not None and args.target_kl <= 0:
        raise ArgError(f"--target-kl must be positive, got {args.target_kl}")


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ArgError(f"{env_id}: observation space {observation_space} is not a flat Box")
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ArgError(f"{env_id}: action space {action_space} is not a Box; {ALGO} needs continuous actions")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ArgError(f"{env_id}: action space {action_space} is unbounded; {ALGO} needs finite bounds")


def configure_headless_rendering() -> None:
    """With no display: MuJoCo renders through EGL if present, else OSMesa (read when mujoco is first imported);
    pygame (classic-control envs) draws offscreen."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    if not os.environ.get("MUJOCO_GL"):
        os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def make_env(env_id: str, seed: int, render_mode: Optional[str] = None) -> Callable[[], gym.Env]:
    def thunk() -> gym.Env:
        if multiprocessing.parent_process() is not None:  # an async worker: Ctrl-C is the main process's to handle
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env = gym.make(env_id, render_mode=render_mode)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def crossed(step: int, every: int, stride: int) -> bool:
    """True when the last `stride` steps passed a multiple of `every` (works when stride does not divide every)."""
    return every > 0 and step // every > (step - stride) // every


# ALGO LOGIC: observation and reward normalisation (their statistics are part of the policy: saved, restored, frozen for evaluation)
class RunningMeanStd:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape: tuple = (), epsilon: float = 1e-4):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), epsilon

    def update(self, batch: np.ndarray) -> None:
        if len(batch) == 0:
            return
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0), len(batch)
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total) / total
        self.count = total

    def stats(self) -> dict:
        """A frozen copy of the statistics: what normalize_obs and the evaluation use."""
        return {"mean": np.array(self.mean), "var": np.array(self.var)}

    def state_dict(self) -> dict:
        return {"mean": torch.from_numpy(np.array(self.mean)), "var": torch.from_numpy(np.array(self.var)), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"].numpy().copy(), state["var"].numpy().copy(), state["count"]


def normalize_obs(obs: np.ndarray, obs_rms: Optional[dict], clip: float = 10.0) -> np.ndarray:
    """(obs - mean) / std, clipped to +-clip, with given statistics (numpy arrays or CPU tensors); None: unchanged."""
    if obs_rms is None:
        return obs
    return np.clip((obs - np.asarray(obs_rms["mean"])) / np.sqrt(np.asarray(obs_rms["var"]) + 1e-8), -clip, clip)


class RewardScaler:
    """Divides each reward by the running std of the discounted return (gym's NormalizeReward; Engstrom et al. 2020)."""

    def __init__(self, num_envs: int, gamma: float):
        self.gamma, self.rms, self.returns = gamma, RunningMeanStd(), np.zeros(num_envs)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray, real: np.ndarray) -> np.ndarray:
        self.returns[real] = self.returns[real] * self.gamma + rewards[real]
        self.rms.update(self.returns[real])
        self.returns[dones] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + 1e-8), -10.0, 10.0)

    def state_dict(self) -> dict:  # not the per-env returns: a resumed run resets its envs, so its episodes start anew
        return {"rms": self.rms.state_dict()}

    def load_state_dict(self, state: dict) -> None:  # a checkpoint of an earlier version also holds "returns": not used
        self.rms.load_state_dict(state["rms"])
        self.returns = np.zeros_like(self.returns)


# ALGO LOGIC: networks
def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (Engstrom et al. 2020; Andrychowicz et al. 2021)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def tanh_mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [layer_init(nn.Linear(in_dim, width)), nn.Tanh()]
        in_dim = width
    return nn.Sequential(*layers, layer_init(nn.Linear(in_dim, out_dim), std=out_std))


class Agent(nn.Module):
    """Gaussian policy with a state-independent log-std, and a value function; both on normalised observations (B, obs_dim)."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: list, action_high: list, hidden_sizes: tuple[int, ...] = (64, 64),
                 log_std_init: float = 0.0):
        super().__init__()
        self.critic = tanh_mlp(obs_dim, tuple(hidden_sizes), 1, out_std=1.0)
        self.actor_mean = tanh_mlp(obs_dim, tuple(hidden_sizes), act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), float(log_std_init)))
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def get_action_and_value(self, obs: torch.Tensor, action: Optional[torch.Tensor] = None):
        """Sample (or score the given) action: action (B, A), log-prob (B,), entropy (B,), value (B,).
        The Gaussian is not squashed: the env gets the action clipped to the bounds, the loss the sample itself."""
        mean = self.actor_mean(obs)
        dist = torch.distributions.Normal(mean, self.actor_logstd.expand_as(mean).exp(), validate_args=False)  # checks cost more than the math
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(-1), dist.entropy().sum(-1), self.get_value(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The common policy contract: the mean action, or a sample; clipped to the bounds."""
        action = self.actor_mean(obs) if deterministic else self.get_action_and_value(obs)[0]
        return torch.clamp(action, self.action_low, self.action_high)


# ALGO LOGIC: advantages
def compute_gae(rewards, values, next_value, terminations, dones, gamma: float, gae_lambda: float):
    """GAE(lambda) over a rollout of T steps and N envs: rewards, values, terminations, dones are (T, N), next_value (N,).
    With gymnasium's next-step autoreset the observation acted on at t + 1 is the next observation of step t, the
    true final one when an episode ended at t; so values[t + 1] bootstraps a truncated episode correctly, a
    termination cuts the bootstrap, and `dones` (termination or truncation) stops the advantage flowing across
    episodes. The autoreset steps themselves get values here but are masked out of the loss."""
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(len(rewards))):
        next_values = next_value if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1.0 - terminations[t]) * next_values - values[t]
        last_gae = delta + gamma * gae_lambda * (1.0 - dones[t]) * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


# ALGO LOGIC: the update (a pure function: every input is an argument, the metrics come back as tensors)
def ppo_update(agent: Agent, optimizer: torch.optim.Optimizer, obs, actions, logprobs, advantages, returns, values,
               update_epochs: int, num_minibatches: int, clip_coef: float, clip_vloss: bool, norm_adv: bool, ent_coef: float,
               vf_coef: float, max_grad_norm: float, target_kl: Optional[float]) -> dict:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7) over `update_epochs` shuffled passes of the flat batch."""
    clipfracs = []
    for _ in range(update_epochs):
        # fewer real transitions than minibatches (autoreset steps took their places): one transition per minibatch
        for index in torch.randperm(len(obs), device=obs.device).tensor_split(min(num_minibatches, len(obs))):
            _, new_logprob, entropy, new_value = agent.get_action_and_value(obs[index], actions[index])
            logratio = new_logprob - logprobs[index]
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean()  # the low-variance k3 estimator of KL(old || new)
                clipfracs.append(((ratio - 1.0).abs() > clip_coef).float().mean())
            mb_advantages = advantages[index]
            if norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std(correction=0) + 1e-8)
            policy_loss = torch.max(-mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
            if clip_vloss:
                value_clipped = values[index] + torch.clamp(new_value - values[index], -clip_coef, clip_coef)
                value_loss = 0.5 * torch.max((new_value - returns[index]) ** 2, (value_clipped - returns[index]) ** 2).mean()
            else:
                value_loss = 0.5 * ((new_value - returns[index]) ** 2).mean()
            entropy_mean = entropy.mean()
            loss = policy_loss - ent_coef * entropy_mean + vf_coef * value_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm, foreach=True)
            optimizer.step()
        if target_kl is not None and approx_kl.item() > target_kl:
            break
    explained_variance = 1 - (returns - values).var() / returns.var()
    return {"losses/policy_loss": policy_loss.detach(), "losses/value_loss": value_loss.detach(), "losses/entropy": entropy_mean.detach(),
            "losses/approx_kl": approx_kl, "losses/clipfrac": torch.stack(clipfracs).mean(), "losses/explained_variance": explained_variance}


# checkpoints and evaluation (identical in every script)
class CheckpointError(Exception):
    """A file that is not a loadable checkpoint of this project."""


def atomic_save(obj: dict, path: str) -> None:
    """Write to a temporary file and rename it: a crash leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """torch.load with weights_only=True (tensors, numbers, strings, lists and dicts: nothing runs on load)."""
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise next to our own message
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except Exception as e:  # torch raises several types for truncated, foreign or malicious files
        reason = str(e).strip().split(". ")[0] if str(e).strip() else type(e).__name__
        if "Unsupported global" in str(e) or "Weights only load failed" in str(e):
            reason = "it holds objects that would run code when unpickled; refused"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"format_version", "algo", "env_id", "args", "policy"} <= checkpoint.keys():
        raise CheckpointError(f"{path}: not a checkpoint of this project (a dict with format_version, algo, env_id, args, policy)")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {checkpoint['format_version']} is newer than this script's {FORMAT_VERSION}")
    return checkpoint


def get_rng_state(action_space: gym.Space) -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain lists: loadable with weights_only
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "action_space": action_space.np_random.bit_generator.state,
    }


def set_rng_state(state: dict, action_space: gym.Space) -> None:
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"], state=dict(state["numpy"]["state"]))
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    action_space.np_random.bit_generator.state = state["action_space"]


def resume_args(saved: dict, argv: Optional[list] = None) -> Args:
    """The arguments of a resumed run: the saved ones, with the command line read again on top of them. Only the
    budget and the device, logging and checkpoint options may change; anything else is refused."""
    changeable = {"total_timesteps", "cuda", "torch_threads", "update_threads", "compile", "cudagraphs", "track", "progress_bar",
                  "log_every", "eval_every", "checkpoint_every", "capture_video", "save_buffer", "vector_mode", "resume"}
    defaults = Args()
    values = {f.name: saved.get(f.name, getattr(defaults, f.name)) for f in fields(Args)}
    saved_args = Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})  # tuples are saved as lists
    args = tyro.cli(Args, default=saved_args, args=argv)
    for f in fields(Args):
        if f.name not in changeable and getattr(args, f.name) != getattr(saved_args, f.name):
            raise ArgError(f"--{f.name.replace('_', '-')} cannot change when resuming (saved: {getattr(saved_args, f.name)!r}); start a new run instead")
    return args


def write_video(path: str, frames: list, fps: int) -> None:
    import imageio.v2 as imageio  # only needed with --capture-video

    if path.endswith(".gif"):
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)


def evaluate(act_fn: Callable[[np.ndarray], np.ndarray], env: gym.Env, episodes: int, seed: int, video_path: Optional[str] = None) -> np.ndarray:
    """Episode returns of act_fn on env (episode i starts from reset(seed=seed + i)); frames of the first episode go to video_path."""
    returns, frames = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, episode_return = False, 0.0
        while not done:
            if video_path is not None and episode == 0:
                frames.append(env.render())
            obs, reward, terminated, truncated, _ = env.step(act_fn(obs))
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    if frames:
        write_video(video_path, frames, env.metadata.get("render_fps", 30))
    return np.asarray(returns)


def make_act_fn(policy: nn.Module, obs_rms: Optional[dict], device: torch.device, deterministic: bool) -> Callable[[np.ndarray], np.ndarray]:
    """One observation (obs_dim,) -> one action (act_dim,), through the frozen observation normalisation obs_rms."""

    def act_fn(obs: np.ndarray) -> np.ndarray:
        obs_tensor = torch.as_tensor(normalize_obs(obs, obs_rms), dtype=torch.float32, device=device).unsqueeze(0)
        return policy.act(obs_tensor, deterministic)[0].cpu().numpy()

    return act_fn


def load_policy(checkpoint: dict, device: str = "cpu", deterministic: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """What enjoy.py calls: the policy of a checkpoint as a function of one observation."""
    policy = Agent(**checkpoint["policy_kwargs"]).to(device)
    policy.load_state_dict(checkpoint["policy"])
    policy.eval()
    return make_act_fn(policy, checkpoint["obs_rms"], torch.device(device), deterministic)


def main() -> None:
    cli = tyro.cli(Args)
    try:
        checkpoint = load_checkpoint(cli.resume) if cli.resume else None
        if checkpoint is not None and checkpoint["algo"] != ALGO:
            raise ArgError(f"{cli.resume} is a {checkpoint['algo']} checkpoint; resume it with {checkpoint['algo']}.py")
        args = resume_args(checkpoint["args"]) if checkpoint else cli
        check_args(args)
    except (ArgError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    run_name = checkpoint["run_name"] if checkpoint else args.run_name or f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)
    if checkpoint is not None and os.path.basename(os.path.dirname(os.path.abspath(args.resume))) == "checkpoints":
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(args.resume)))  # the run that holds it, wherever it was moved
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    configure_headless_rendering()

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    # env setup
    try:
        vector_env = gym.vector.AsyncVectorEnv if args.vector_mode == "async" else gym.vector.SyncVectorEnv
        envs = vector_env([make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
                          autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        eval_env = make_env(args.env_id, args.seed + 100_000, "rgb_array" if args.capture_video else None)()
        check_spaces(args.env_id, envs.single_observation_space, envs.single_action_space)
        if args.capture_video:  # fail now, not at the first evaluation, if frames cannot be rendered
            eval_env.reset(seed=args.seed)
            eval_env.render()
    except ArgError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # gym.make of a broken or unregistered env
        print(f"error: cannot make{' or render' if args.capture_video else ''} env {args.env_id!r}: {e}", file=sys.stderr)
        sys.exit(2)
    envs.action_space.seed(args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))

    # ALGO LOGIC: agent
    policy_kwargs = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes),
                     "action_low": envs.single_action_space.low.tolist(), "action_high": envs.single_action_space.high.tolist()}
    agent = Agent(**policy_kwargs, log_std_init=args.log_std_init).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    obs_rms = RunningMeanStd((obs_dim,)) if args.norm_obs else None
    reward_scaler = RewardScaler(args.num_envs, args.gamma) if args.norm_reward else None
    batch_steps = args.num_steps * args.num_envs
    # rollout storage on the training device; `real` marks the steps that are transitions (not autoresets)
    storage = {key: torch.zeros((args.num_steps, args.num_envs, *shape), device=device)
               for key, shape in (("obs", (obs_dim,)), ("actions", (act_dim,)), ("logprobs", ()), ("rewards", ()),
                                  ("terminations", ()), ("dones", ()), ("values", ()), ("real", ()))}
    # what --resume restores besides the policy and the normalisation statistics: objects with state_dict() and load_state_dict()
    resume_objects = {"optimizer": optimizer}
    if reward_scaler is not None:
        resume_objects["reward_scaler"] = reward_scaler

    global_step, num_updates, best_return, episodes_done = 0, 0, -math.inf, 0
    if checkpoint is not None:
        state = checkpoint["resume_state"]
        agent.load_state_dict(checkpoint["policy"])
        missing = [name for name in resume_objects if name not in state]
        if missing:  # a checkpoint of an older version of this script
            print(f"error: {cli.resume} has no resume state for {', '.join(missing)}; it was written by another version of {ALGO}.py", file=sys.stderr)
            sys.exit(2)
        for name, obj in resume_objects.items():
            obj.load_state_dict(state[name])
        if obs_rms is not None:
            obs_rms.load_state_dict(checkpoint["obs_rms"])
        global_step, num_updates = checkpoint["global_step"], state["num_updates"]
        best_return, episodes_done = state["best_return"], state["episodes_done"]
        if os.path.exists(os.path.join(ckpt_dir, "best.pt")):  # evaluations may have come after the last latest.pt
            best_return = max(best_return, load_checkpoint(os.path.join(ckpt_dir, "best.pt"))["resume_state"]["best_return"])
        set_rng_state(state["rng"], envs.action_space)
        print(f"resuming {run_name} at step {global_step}")

    def save_checkpoint(name: str) -> None:
        os.makedirs(ckpt_dir, exist_ok=True)
        atomic_save({
            "format_version": FORMAT_VERSION, "algo": ALGO, "env_id": args.env_id, "run_name": run_name,
            "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items()},
            "global_step": global_step, "policy_kwargs": policy_kwargs, "policy": agent.state_dict(),
            "obs_rms": obs_rms.state_dict() if obs_rms is not None else None,
            "resume_state": {
                **{name: obj.state_dict() for name, obj in resume_objects.items()}, "num_updates": num_updates,
                "best_return": best_return, "episodes_done": episodes_done, "rng": get_rng_state(envs.action_space),
            },
        }, os.path.join(ckpt_dir, name))

    # logging (after arguments and envs are known to be good)
    os.makedirs(run_dir, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=asdict(args),
                   name=run_name, id=run_name, resume="allow", dir=run_dir, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: anything an earlier process logged after the checkpoint we resume from is dropped, so no step appears twice
    writer = SummaryWriter(run_dir, purge_step=global_step + 1 if checkpoint else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    video_dir = os.path.join(run_dir, "videos")
    if args.capture_video:
        os.makedirs(video_dir, exist_ok=True)

    stop_signal: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop_signal.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_signal.append(signum))

    from tqdm import tqdm

    progress = tqdm(total=args.total_timesteps, initial=global_step, disable=not args.progress_bar, unit="step", dynamic_ncols=True)
    obs, _ = envs.reset(seed=args.seed + global_step)
    if obs_rms is not None:
        obs_rms.update(obs)  # every observation the envs return is counted once
    autoreset = np.zeros(args.num_envs, dtype=bool)
    losses, last_return = None, float("nan")
    start_step, start_time = global_step, time.time()
    try:
        while global_step + batch_steps <= args.total_timesteps:  # whole rollouts only: at most total_timesteps steps
            if args.anneal_lr:  # linear decay to 0 at total_timesteps
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - global_step / args.total_timesteps)

            # ALGO LOGIC: rollout
            for step in range(args.num_steps):
                obs_norm = normalize_obs(obs, obs_rms.stats() if obs_rms is not None else None)
                obs_tensor = torch.as_tensor(obs_norm, dtype=torch.float32, device=device)
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(obs_tensor)
                clipped = torch.clamp(action, agent.action_low, agent.action_high).cpu().numpy()
                next_obs, rewards, terminations, truncations, infos = envs.step(clipped)
                real = ~autoreset  # gymnasium >= 1.0: an env that ended last step is reset by this one; not a transition
                dones = np.logical_or(terminations, truncations)
                if reward_scaler is not None:
                    rewards = reward_scaler(rewards, dones, real)
                for key, value_ in (("obs", obs_tensor), ("actions", action), ("logprobs", logprob), ("values", value),
                                    ("rewards", rewards), ("terminations", terminations), ("dones", dones), ("real", real)):
                    storage[key][step] = torch.as_tensor(value_, dtype=torch.float32, device=device)
                if obs_rms is not None:
                    obs_rms.update(next_obs)
                obs, autoreset = next_obs, dones
                global_step += args.num_envs
                if "episode" in infos:
                    for i in np.flatnonzero(infos["_episode"]):
                        last_return = float(infos["episode"]["r"][i])
                        episodes_done += 1
                        writer.add_scalar("charts/episodic_return", last_return, global_step)
                        writer.add_scalar("charts/episodic_length", int(infos["episode"]["l"][i]), global_step)
            progress.update(batch_steps)

            # ALGO LOGIC: advantages and the update, on the real transitions only
            with torch.no_grad():
                obs_norm = normalize_obs(obs, obs_rms.stats() if obs_rms is not None else None)
                next_value = agent.get_value(torch.as_tensor(obs_norm, dtype=torch.float32, device=device))
                advantages, returns = compute_gae(storage["rewards"], storage["values"], next_value, storage["terminations"],
                                                  storage["dones"], args.gamma, args.gae_lambda)
            real_index = storage["real"].flatten().nonzero().squeeze(-1)
            flat = {key: storage[key].flatten(0, 1)[real_index] for key in ("obs", "actions", "logprobs", "values")}
            if len(real_index) > 0:  # a rollout of autoreset steps alone (a tiny --num-envs x --num-steps) has nothing to learn
                losses = ppo_update(agent, optimizer, flat["obs"], flat["actions"], flat["logprobs"], advantages.flatten()[real_index],
                                    returns.flatten()[real_index], flat["values"], args.update_epochs, args.num_minibatches, args.clip_coef,
                                    args.clip_vloss, args.norm_adv, args.ent_coef, args.vf_coef, args.max_grad_norm, args.target_kl)
                num_updates += 1

            if crossed(global_step, args.log_every, batch_steps):
                sps = int((global_step - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
                for tag, value in (losses or {}).items():  # .item() syncs with the device: only here
                    writer.add_scalar(tag, value.item(), global_step)
                progress.set_postfix(sps=sps, ret=f"{last_return:.1f}", refresh=False)
                writer.flush()  # what a killed run logged is on disk up to here

            done = global_step + batch_steps > args.total_timesteps
            if crossed(global_step, args.eval_every, batch_steps) or done:
                video_path = os.path.join(video_dir, f"eval_{global_step}.mp4") if args.capture_video else None
                frozen = obs_rms.stats() if obs_rms is not None else None  # a copy: evaluation never updates the statistics
                eval_returns = evaluate(make_act_fn(agent, frozen, device, deterministic=True), eval_env, args.eval_episodes,
                                   args.seed + 100_000, video_path)
                writer.add_scalar("eval/return_mean", eval_returns.mean(), global_step)
                writer.add_scalar("eval/return_std", eval_returns.std(), global_step)
                if eval_returns.mean() > best_return:
                    best_return = float(eval_returns.mean())
                    save_checkpoint("best.pt")
            if crossed(global_step, args.checkpoint_every, batch_steps) or done:
                writer.flush()
                save_checkpoint("latest.pt")
            if stop_signal and not done:
                writer.flush()
                save_checkpoint("latest.pt")
                progress.close()
                print(f"\nstopped by signal {stop_signal[0]} at step {global_step}; continue with --resume {os.path.join(ckpt_dir, 'latest.pt')}", file=sys.stderr)
                sys.exit(128 + stop_signal[0])
        save_checkpoint("final.pt")
    finally:
        progress.close()
        envs.close()
        eval_env.close()
        writer.close()
        if args.track:
            import wandb

            wandb.finish()
    print(f"done: {global_step} steps, best evaluation {best_return:.1f}, checkpoints in {ckpt_dir}")


if __name__ == "__main__":
    main()
