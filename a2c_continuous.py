"""Advantage actor-critic, synchronous (A2C), continuous actions (Mnih et al. 2016, arXiv:1602.01783)."""

import contextlib
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
import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn as nn
import tyro

ALGO = os.path.basename(__file__)[: -len(".py")]


@dataclass
class Args:
    # ---- common to every script: same fields, same order ----
    exp_name: str = ALGO  # the name of this experiment (part of the run name)
    seed: int = 1  # seed of Python, NumPy, torch, the envs and their action spaces
    torch_deterministic: bool = True  # deterministic torch algorithms (two CPU runs with one seed log the same curves)
    cuda: bool = True  # train on CUDA when it is available
    torch_threads: int = 1  # torch intra-op threads on the CPU; 1 is fastest for 256-wide networks
    track: bool = False  # log to Weights & Biases (the TensorBoard logs are synced)
    wandb_project_name: str = "continuous-control"  # the wandb project
    wandb_entity: Optional[str] = None  # the wandb entity (team or user)
    capture_video: bool = False  # write an mp4 of the first episode of every evaluation to runs/<run>/videos
    env_id: str = "HalfCheetah-v4"  # the gymnasium environment id (with shimmy: dm_control/<domain>-<task>-v0)
    total_timesteps: int = 1_000_000  # total environment steps, summed over the vector envs
    num_envs: int = 16  # parallel environments (16 synchronous actors, each rollout 16 x 5 steps)
    runs_dir: str = "runs"  # directory that holds the run directories
    run_name: Optional[str] = None  # name of the run directory (default: <env_id>__<exp_name>__<seed>__<unix time>)
    log_every: int = 1_000  # log losses and SPS every this many environment steps
    eval_every: int = 10_000  # evaluate the deterministic policy every this many environment steps (0: only at the end)
    eval_episodes: int = 10  # episodes per evaluation
    checkpoint_every: int = 25_000  # write checkpoints/latest.pt every this many environment steps
    resume: Optional[str] = None  # continue the run of this checkpoint, with its own arguments (README: resuming)
    progress_bar: bool = True  # show a progress bar (plain lines when the output is not a terminal)

    # ---- A2C (the fields down to norm_reward are PPO's too) ----
    vector_mode: Literal["sync", "async"] = "sync"  # step the envs in this process (sync) or in worker processes
    learning_rate: float = 7e-4  # learning rate
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over the run
    num_steps: int = 5  # steps per env in each rollout (n of the n-step returns); one gradient step per rollout
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 0.95  # GAE lambda (1.0: plain n-step returns)
    norm_adv: bool = False  # normalise the advantages of each rollout
    ent_coef: float = 0.0  # entropy bonus coefficient (0, as SB3: 0.01 let the std grow past 4 on HalfCheetah)
    vf_coef: float = 0.5  # value loss coefficient
    max_grad_norm: float = 0.5  # global gradient-norm clip
    hidden_sizes: tuple[int, ...] = (64, 64)  # hidden layer widths of the actor and of the critic (tanh)
    log_std_init: float = 0.0  # initial log std of the Gaussian (-1: better on HalfCheetah, worse on Hopper)
    norm_obs: bool = True  # normalise observations with running statistics (checkpointed, frozen for evaluation)
    norm_reward: bool = True  # scale rewards by the running std of the discounted return
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"  # RMSprop (alpha 0.99, eps 1e-5; A3C paper and SB3) or Adam


def check_args(args: Args) -> None:  # hyperparameters that cannot work, caught before any environment is built
    positive = ("learning_rate", "num_steps", "max_grad_norm", "hidden_sizes")
    check_ranges(args, positive, unit_interval=("gamma", "gae_lambda"))
    for name in [name for name in ("ent_coef", "vf_coef") if getattr(args, name) < 0][:1]:
        raise ArgError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.num_steps * args.num_envs > args.total_timesteps:
        steps = f"--num-steps {args.num_steps} x --num-envs {args.num_envs}"
        raise ArgError(f"one rollout ({steps}) is more than --total-timesteps {args.total_timesteps}")


# ALGO LOGIC: networks
def tanh_mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, out_std: float) -> nn.Sequential:
    """Orthogonal weights with gain sqrt(2), out_std on the output layer; zero biases (Andrychowicz et al. 2021)."""
    dims, layers = [in_dim, *hidden_sizes, out_dim], []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        nn.init.orthogonal_(layers[-2].weight, math.sqrt(2) if i < len(hidden_sizes) else out_std)
        nn.init.zeros_(layers[-2].bias)
    return nn.Sequential(*layers[:-1])  # no tanh on the output


class Agent(nn.Module):
    """Gaussian policy with a state-independent log-std, and a value function; obs (B, obs_dim) are normalised."""

    def __init__(self, obs_dim, act_dim, action_low: list, action_high: list, hidden_sizes=(64, 64), log_std_init=0.0):
        super().__init__()
        self.critic = tanh_mlp(obs_dim, tuple(hidden_sizes), 1, out_std=1.0)
        self.actor_mean = tanh_mlp(obs_dim, tuple(hidden_sizes), act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), float(log_std_init)))
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def get_action_and_value(self, obs: torch.Tensor, action: Optional[torch.Tensor] = None):
        """Sample (or score) an action: action (B, A), log-prob, entropy, value (B,); unsquashed (env: clipped)."""
        mean = self.actor_mean(obs)
        dist = torch.distributions.Normal(mean, self.actor_logstd.expand_as(mean).exp(), validate_args=False)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(-1), dist.entropy().sum(-1), self.get_value(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The common policy contract: the mean action, or a sample; clipped to the bounds."""
        action = self.actor_mean(obs) if deterministic else self.get_action_and_value(obs)[0]
        return torch.clamp(action, self.action_low, self.action_high)


# ALGO LOGIC: normalisation (the statistics are part of the policy: checkpointed, restored, frozen for evaluation)
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
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total

    def stats(self) -> dict:  # a frozen copy: what normalize_obs and the evaluation use
        return {"mean": np.array(self.mean), "var": np.array(self.var)}

    def state_dict(self) -> dict:
        return {"mean": torch.tensor(self.mean), "var": torch.tensor(self.var), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"].numpy().copy(), state["var"].numpy().copy(), state["count"]


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


# ALGO LOGIC: advantages and the loss (pure functions: tensors and networks in, losses and metrics out)
def compute_gae(rewards, values, terminations, dones, next_value, gamma: float, gae_lambda: float):
    """GAE(lambda) (Schulman et al. 2016) of (T, N) tensors, next_value (N,). An episode that ended at t has its final
    obs at t + 1 (next-step autoreset): values[t + 1] bootstraps a truncation, not a termination; dones end the sum."""
    advantages, last_gae = torch.zeros_like(rewards), torch.zeros_like(next_value)
    for t in reversed(range(len(rewards))):
        next_values = next_value if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1.0 - terminations[t]) * next_values - values[t]
        last_gae = delta + gamma * gae_lambda * (1.0 - dones[t]) * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def a2c_loss(agent: Agent, obs, actions, advantages, returns, args: Args) -> tuple:
    """Policy gradient with the advantage, value regression, entropy bonus (Mnih et al. 2016, algorithm S3) on the
    rollout's transitions: obs (B, obs_dim), actions (B, A), the rest (B,). Returns loss, metrics."""
    _, logprob, entropy, new_value = agent.get_action_and_value(obs, actions)
    if args.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
    policy_loss = -(advantages * logprob).mean()
    value_loss = ((returns - new_value) ** 2).mean()  # mean squared error, as Stable-Baselines3 weighs it with vf_coef
    entropy = entropy.mean()
    loss = policy_loss - args.ent_coef * entropy + args.vf_coef * value_loss
    metrics = dict(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy)
    return loss, {key: value.detach() for key, value in metrics.items()}


def main() -> None:
    args, checkpoint = parse_args(Args, check_args)
    vector_env = gym.vector.AsyncVectorEnv if args.vector_mode == "async" else gym.vector.SyncVectorEnv
    envs, eval_env, device = setup(args, vector_env)
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    # ALGO LOGIC: agent, optimizer, normalisation, and rollout storage (`real`: the steps that are transitions)
    low, high = envs.single_action_space.low.tolist(), envs.single_action_space.high.tolist()
    policy_kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, action_low=low, action_high=high)
    policy_kwargs["hidden_sizes"] = list(args.hidden_sizes)
    agent = Agent(**policy_kwargs, log_std_init=args.log_std_init).to(device)
    if args.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(agent.parameters(), lr=args.learning_rate, alpha=0.99, eps=1e-5)
    else:
        optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    obs_rms = RunningMeanStd((obs_dim,)) if args.norm_obs else None
    obs_stats = lambda: obs_rms.stats() if obs_rms is not None else None  # a copy: normalize_obs never updates it
    as_input = lambda obs: torch.as_tensor(normalize_obs(obs, obs_stats()), dtype=torch.float32, device=device)
    reward_scaler = RewardScaler(args.num_envs, args.gamma) if args.norm_reward else None
    shapes = dict(obs=(obs_dim,), actions=(act_dim,), values=(), rewards=(), terminations=(), dones=(), real=())
    storage = {key: torch.zeros((args.num_steps, args.num_envs, *s), device=device) for key, s in shapes.items()}
    batch_steps = args.num_steps * args.num_envs
    # what --resume restores besides the policy, the observation statistics and the step counters
    resume_objects = dict(optimizer=optimizer, **({"reward_scaler": reward_scaler} if args.norm_reward else {}))
    run = Run(args, checkpoint, envs, eval_env, device, agent, policy_kwargs, resume_objects, obs_rms=obs_rms)
    obs, _ = envs.reset(seed=args.seed + run.global_step)
    if obs_rms is not None:
        obs_rms.update(obs)  # every observation the envs return is counted once
    autoreset, losses = np.zeros(args.num_envs, dtype=bool), {}
    with run:
        while run.global_step + batch_steps <= args.total_timesteps:  # whole rollouts only: at most total_timesteps
            if args.anneal_lr:  # linear decay to 0 at total_timesteps
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - run.global_step / args.total_timesteps)

            # ALGO LOGIC: rollout of num_steps steps in each env with the current policy
            for step in range(args.num_steps):
                obs_tensor = as_input(obs)
                with torch.no_grad():
                    action, _, _, value = agent.get_action_and_value(obs_tensor)
                clipped = torch.clamp(action, agent.action_low, agent.action_high).cpu().numpy()
                next_obs, rewards, terminations, truncations, infos = envs.step(clipped)
                # gymnasium >= 1.0 autoresets on the *next* step: there, an env whose episode ended is not a transition
                real, dones = ~autoreset, np.logical_or(terminations, truncations)
                if reward_scaler is not None:
                    rewards = reward_scaler(rewards, dones, real)
                for key, data in zip(storage, (obs_tensor, action, value, rewards, terminations, dones, real)):
                    storage[key][step] = torch.as_tensor(data, dtype=torch.float32, device=device)
                if obs_rms is not None:
                    obs_rms.update(next_obs)
                obs, autoreset = next_obs, dones
                run.count_steps(args.num_envs, infos)

            # ALGO LOGIC: n-step advantages (GAE), then one gradient step on the rollout's real transitions
            with torch.no_grad():
                next_value = agent.get_value(as_input(obs))
            gae_inputs = [storage[key] for key in ("rewards", "values", "terminations", "dones")]
            advantages, returns = compute_gae(*gae_inputs, next_value, args.gamma, args.gae_lambda)
            real_index = storage["real"].flatten().nonzero().squeeze(-1)
            batch = {key: storage[key].flatten(0, 1)[real_index] for key in ("obs", "actions", "values")}
            batch.update(advantages=advantages.flatten()[real_index], returns=returns.flatten()[real_index])
            if len(real_index) > 0:  # a rollout of autoreset steps alone (tiny --num-envs x --num-steps): no update
                loss, losses = a2c_loss(
                    agent, batch["obs"], batch["actions"], batch["advantages"], batch["returns"], args
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
                optimizer.step()
                var_returns = batch["returns"].var(correction=0)
                unexplained = (batch["returns"] - batch["values"]).var(correction=0) / var_returns
                losses["explained_variance"] = (1 - unexplained).nan_to_num(0.0, 0.0, 0.0)  # 0: undefined (1 sample)
                run.num_updates += 1

            logged = {**losses, "charts/learning_rate": optimizer.param_groups[0]["lr"]}
            run.log_evaluate_save(batch_steps, logged, last=run.global_step + batch_steps > args.total_timesteps)
        run.finish()


POLICY = Agent  # the network a checkpoint's "policy" holds: load_policy rebuilds it


# ---- shared plumbing: identical in every script below this line ----
FORMAT_VERSION = 1
EVAL_SEED = 100_000  # evaluation episode i starts from reset(seed=args.seed + EVAL_SEED + i); enjoy.py's default too


class ArgError(ValueError):
    """Bad input: one line on stderr and exit status 2, before any work."""


class CheckpointError(Exception):
    """A file that is not a loadable checkpoint of this project, or one that cannot be written (exit status 2)."""


class Diverged(Exception):
    """A loss or weight that is not finite: the run stops (exit status 3) and writes no checkpoint from it."""


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(args_class, check: Callable) -> tuple:
    """The command line, or with --resume the checkpoint's own arguments with the command line on top; checked."""
    configure_headless_rendering()  # before anything imports MuJoCo or dm_control: they read MUJOCO_GL then
    argv, ints = sys.argv[1:], {"--" + f.name.replace("_", "-") for f in fields(args_class) if f.type is int}
    for i, token in enumerate(argv[:-1]):  # integer options take integral floats: --total-timesteps 1e5
        with contextlib.suppress(ValueError, OverflowError):
            if token in ints and not argv[i + 1].lstrip("-").isdigit() and float(argv[i + 1]).is_integer():
                argv[i + 1] = str(int(float(argv[i + 1])))
    cli = tyro.cli(args_class, args=argv)
    try:
        checkpoint = load_checkpoint(cli.resume) if cli.resume else None
        if checkpoint is not None and checkpoint["algo"] != ALGO:
            raise ArgError(f"{cli.resume} is a {checkpoint['algo']} checkpoint; resume it with {checkpoint['algo']}.py")
        if checkpoint is not None and "resume_state" not in checkpoint:
            raise ArgError(f"{cli.resume} holds a policy only; enjoy.py replays it, it cannot be resumed")
        args = resume_args(args_class, checkpoint["args"], argv) if checkpoint else cli
        check(args)
        if args.env_id.startswith("dm_control/"):  # shimmy registers the DeepMind Control Suite's tasks
            __import__("shimmy")
        if ":" not in args.env_id and args.env_id not in gym.registry:
            close = ", ".join(difflib.get_close_matches(args.env_id, list(gym.registry), n=3, cutoff=0.6))
            raise ArgError(f"unknown env id {args.env_id!r}" + (f"; did you mean {close}?" if close else ""))
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled") or os.environ.get("WANDB_API_KEY")
        if args.track and not offline and not __import__("wandb").api.api_key:
            raise ArgError("--track: not logged in to Weights & Biases; run `wandb login`, or set WANDB_MODE=offline")
    except (ArgError, CheckpointError, ImportError) as e:
        fail(str(e))
    return args, checkpoint


def resume_args(args_class, saved: dict, argv: list[str]):
    """The saved arguments with the command line on top: only budget, device, logging and checkpoint options change."""
    changeable = "total_timesteps cuda torch_threads compile cudagraphs track progress_bar resume log_every eval_every"
    changeable += " checkpoint_every capture_video save_buffer vector_mode"
    if saved.get("precision", "float32") != "float32":  # an option of earlier versions that changed the arithmetic
        raise ArgError(f"this run trained with --precision {saved['precision']}, which this version no longer has")
    values = {f.name: saved.get(f.name, f.default) for f in fields(args_class)}
    saved_args = args_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})  # tuples: lists
    args = tyro.cli(args_class, default=saved_args, args=argv)
    for name in (f.name for f in fields(args_class) if getattr(args, f.name) != getattr(saved_args, f.name)):
        if name not in changeable.split():
            raise ArgError(f"--{name.replace('_', '-')} cannot change when resuming; start a new run instead")
    return args


def check_ranges(args, positive=(), unit_interval=(), non_negative=()) -> None:
    """Options that must be > 0, >= 0 or in [0, 1] (each member of a tuple option); the common ones always."""
    common = ("torch_threads", "total_timesteps", "num_envs", "log_every", "eval_episodes", "checkpoint_every")
    rules = [(name, lambda v: v > 0, "positive") for name in common + positive]
    rules += [(name, lambda v: v >= 0, ">= 0") for name in ("eval_every", "seed", *non_negative)]
    rules += [(name, lambda v: 0 <= v <= 1, "in [0, 1]") for name in unit_interval]
    for name, ok, text in rules:
        value = getattr(args, name)
        if value == () or not all(ok(v) for v in np.atleast_1d(value)):
            raise ArgError(f"--{name.replace('_', '-')} must be {text}, got {value}")


def make_env(env_id: str, seed: int, render_mode: Optional[str] = None) -> Callable[[], gym.Env]:
    def thunk() -> gym.Env:
        if multiprocessing.parent_process() is not None:  # an async worker: Ctrl-C is the main process's to handle
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # gymnasium 1.4 films MuJoCo tasks from a fixed camera unless asked for the model's tracking one, "track"
        track = render_mode and "gymnasium.envs.mujoco" in str(gym.spec(env_id).entry_point)
        env = gym.make(env_id, render_mode=render_mode, **({"camera_name": "track"} if track else {}))
        if isinstance(env.observation_space, gym.spaces.Dict):  # dm_control: a dict of arrays, flattened
            env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def configure_headless_rendering() -> None:
    """Headless: MuJoCo renders through EGL, else OSMesa; pygame offscreen. Harmless warnings of dependencies: off."""
    warnings.filterwarnings("ignore", message=".*(is out of date|Overriding environment).*")  # -v4, re-registration
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("MUJOCO_GL")):
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    with contextlib.suppress(ImportError):  # MuJoCo's warnings, never to MUJOCO_LOG.TXT; not HalfCheetah's settotalmass
        mujoco_warning = lambda text: "settotalmass" in text or warnings.warn(f"MuJoCo: {text}", stacklevel=2)
        __import__("mujoco").set_mju_user_warning(mujoco_warning)


def setup(args, vector_env=gym.vector.SyncVectorEnv) -> tuple:
    """Seeds the generators and makes the training envs (next-step autoreset), the evaluation env and the device."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    try:
        thunks = [make_env(args.env_id, args.seed + i) for i in range(args.num_envs)]
        envs = vector_env(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        eval_env = make_env(args.env_id, args.seed + EVAL_SEED, "rgb_array" if args.capture_video else None)()
        spaces = envs.single_observation_space, envs.single_action_space
        boxes = all(isinstance(space, gym.spaces.Box) and len(space.shape) == 1 for space in spaces)
        if not boxes or not np.isfinite(np.r_[spaces[1].low, spaces[1].high]).all():
            raise ArgError(f"{args.env_id}: {ALGO} needs flat Box observations and bounded Box actions, not {spaces}")
        if args.capture_video:  # fail now, not at the first evaluation, if frames cannot be rendered
            eval_env.reset(seed=args.seed)
            eval_env.render()
    except Exception as e:  # a bad space, gym.make of a broken env, a renderer that cannot start
        fail(str(e) if isinstance(e, ArgError) else f"cannot make or render env {args.env_id!r}: {e}")
    envs.action_space.seed(args.seed)
    return envs, eval_env, torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")


def crossed(step: int, every: int, stride: int) -> bool:
    """True when the last `stride` steps passed a multiple of `every` (works when stride does not divide every)."""
    return every > 0 and step // every > (step - stride) // every


def atomic_save(obj: dict, path: str) -> None:
    """Write to a temporary file and rename it: a crash leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: the previous file stays as it was
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """torch.load with weights_only=True (tensors, numbers, strings, lists and dicts: nothing runs on load)."""
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise next to our own message
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise CheckpointError(f"{path}: {e.strerror.lower()}") from None
    except Exception as e:  # truncated, foreign or malicious files raise several types
        reason = str(e).strip().split(". ")[0] or type(e).__name__
        if "Unsupported global" in str(e) or "Weights only load failed" in str(e):
            reason = "it holds objects that would run code when unpickled; refused"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})") from None
    keys = {"format_version", "algo", "env_id", "args", "policy", "policy_kwargs"}
    if not isinstance(checkpoint, dict) or not keys <= checkpoint.keys():
        raise CheckpointError(f"{path}: not a checkpoint of this project (a dict with {', '.join(sorted(keys))})")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {checkpoint['format_version']} is newer than {FORMAT_VERSION}")
    return checkpoint


def normalize_obs(obs: np.ndarray, obs_rms: Optional[dict], clip: float = 10.0) -> np.ndarray:
    """(obs - mean) / std, clipped to +-clip, with given statistics (numpy arrays or CPU tensors); None: unchanged."""
    if obs_rms is None:
        return obs
    return np.clip((obs - np.asarray(obs_rms["mean"])) / np.sqrt(np.asarray(obs_rms["var"]) + 1e-8), -clip, clip)


def make_act_fn(policy: nn.Module, obs_rms: Optional[dict], device, deterministic: bool) -> Callable:
    """One observation (obs_dim,) -> one action (act_dim,), through the frozen observation statistics if any."""
    as_batch = lambda obs: torch.as_tensor(normalize_obs(obs, obs_rms), dtype=torch.float32, device=device)[None]
    return lambda obs: policy.act(as_batch(obs), deterministic)[0].cpu().numpy()


def load_policy(checkpoint: dict, device: str = "cpu", deterministic: bool = True) -> Callable:
    """What enjoy.py calls: the policy of a checkpoint as a function of one observation."""
    policy = POLICY(**checkpoint["policy_kwargs"]).to(device)
    policy.load_state_dict(checkpoint["policy"])
    if not all(torch.isfinite(t).all() for t in policy.state_dict().values()):
        raise CheckpointError("the policy holds weights that are not finite (its run diverged); refused")
    return make_act_fn(policy.eval(), checkpoint.get("obs_rms"), torch.device(device), deterministic)


def evaluate(act_fn: Callable, env: gym.Env, episodes: int, seed: int, video_path=None, stop=()):
    """Returns of act_fn's episodes (episode i starts from reset(seed=seed + i)); the first one's frames stream to
    video_path. None as soon as the list `stop` (a signal handler's) is not empty: the evaluation is abandoned."""
    returns, fps = [], env.metadata.get("render_fps", 30)
    video = imageio.get_writer(video_path, fps=fps, macro_block_size=1) if video_path else None  # frames stream to it
    try:
        for episode in range(episodes):
            (obs, _), done = env.reset(seed=seed + episode), False
            returns.append(0.0)
            while not done:
                if stop:
                    return None
                if video is not None and episode == 0:
                    video.append_data(env.render())
                obs, reward, terminated, truncated, _ = env.step(act_fn(obs))
                returns[-1], done = returns[-1] + float(reward), terminated or truncated
    finally:
        if video is not None:
            video.close()
    return np.asarray(returns)


class Run:
    """All of a training run but its algorithm: run directory, writers, progress, signals, evaluation, checkpoints."""

    def __init__(self, args, checkpoint, envs, eval_env, device, policy, policy_kwargs, resume_objects, **extra):
        self.args, self.envs, self.eval_env, self.device, self.policy = args, envs, eval_env, device, policy
        self.policy_kwargs, self.resume_objects = policy_kwargs, resume_objects
        self.obs_rms, self.buffer = extra.get("obs_rms"), extra.get("buffer")  # observation statistics, replay buffer
        self.global_step, self.num_updates, self.best_return, self.episodes_done = 0, 0, -math.inf, 0
        self.last_eval, self.stop_signal = None, []
        try:
            self.run_dir = self.claim_run_dir(checkpoint)
            self.ckpt_dir, self.run_name = os.path.join(self.run_dir, "checkpoints"), os.path.basename(self.run_dir)
            if checkpoint is not None:
                self.restore(checkpoint)
        except (ArgError, CheckpointError) as e:
            fail(str(e))
        if args.track:
            wandb_args = dict(project=args.wandb_project_name, entity=args.wandb_entity, id=self.run_name)
            __import__("wandb").init(**wandb_args, config=asdict(args), resume="allow", dir=self.run_dir)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: what an earlier process logged after the checkpoint resumed from is dropped: no step twice
        self.writer = SummaryWriter(self.run_dir, purge_step=self.global_step + 1 if checkpoint else None)
        if checkpoint is None:
            table = "".join(f"\n|{key}|{value}|" for key, value in asdict(args).items())
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|" + table)
        plain = not (args.progress_bar and sys.stderr.isatty())  # not a terminal: plain lines instead of a bar
        self.bar = __import__("tqdm").tqdm(total=args.total_timesteps, initial=self.global_step, disable=plain)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        self.start_step, self.start_time = self.global_step, time.time()

    def claim_run_dir(self, checkpoint) -> str:
        """A resumed run's directory, or a new one created exclusively: a default name taken gets a suffix."""
        args, path = self.args, os.path.dirname(os.path.abspath(self.args.resume or ""))
        if checkpoint is not None:  # the run that holds the checkpoint, wherever it was moved
            in_run = os.path.basename(path) == "checkpoints"
            return os.path.dirname(path) if in_run else os.path.join(args.runs_dir, checkpoint["run_name"])
        name = args.run_name or f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        try:
            os.makedirs(args.runs_dir, exist_ok=True)
            for path in [os.path.join(args.runs_dir, name + (f"-{i}" if i else "")) for i in range(1000)]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
                    return path
                if args.run_name is not None:
                    latest = os.path.join(path, "checkpoints", "latest.pt")
                    raise ArgError(f"{path} holds another run; choose another --run-name, or --resume {latest}")
        except OSError as e:
            raise ArgError(f"cannot create a run directory in --runs-dir {args.runs_dir}: {e.strerror or e}") from None
        raise ArgError(f"no free run directory for {name} in {args.runs_dir}")

    def restore(self, checkpoint: dict) -> None:
        """latest.pt is the source of truth: a best.pt or replay buffer that cannot be read is reported and replaced."""
        state, ckpt_dir = checkpoint["resume_state"], self.ckpt_dir
        for stale in [f for f in os.listdir(ckpt_dir) if ".pt.tmp." in f] if os.path.isdir(ckpt_dir) else []:
            os.remove(os.path.join(ckpt_dir, stale))  # left by a save that was killed
        if any(name not in state for name in self.resume_objects):
            missing = ", ".join(name for name in self.resume_objects if name not in state)
            raise CheckpointError(f"{self.args.resume} has no resume state for {missing}; another {ALGO}.py wrote it")
        self.policy.load_state_dict(checkpoint["policy"])
        for name, obj in self.resume_objects.items():
            obj.load_state_dict(state[name])
        if self.obs_rms is not None:
            self.obs_rms.load_state_dict(checkpoint["obs_rms"])
        self.global_step, self.num_updates = checkpoint["global_step"], state["num_updates"]
        self.best_return, self.episodes_done, rng = state["best_return"], state["episodes_done"], state["rng"]
        torch.set_rng_state(rng["torch"])  # the generators the scripts draw from: torch's and the action space's
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.envs.action_space.np_random.bit_generator.state = rng["action_space"]
        if os.path.exists(os.path.join(ckpt_dir, "best.pt")):  # evaluations may have come after the last latest.pt
            try:
                best = load_checkpoint(os.path.join(ckpt_dir, "best.pt"))["resume_state"]["best_return"]
                self.best_return = max(self.best_return, best)
            except (CheckpointError, KeyError) as e:
                print(f"warning: best.pt is unreadable ({e}); the next evaluation replaces it", file=sys.stderr)
                self.best_return = -math.inf
        if self.buffer is not None:
            try:
                self.buffer.load_state_dict(torch.load(os.path.join(ckpt_dir, state["buffer_file"]), weights_only=True))
            except Exception as e:  # not saved (--no-save-buffer), missing or truncated
                reason = f"is unreadable ({str(e).split('. ')[0]})" if state.get("buffer_file") else "was not saved"
                print(f"warning: the replay buffer {reason}; learning continues from an empty one", file=sys.stderr)
        print(f"resuming {self.run_name} at step {self.global_step}")

    def on_signal(self, signum, frame) -> None:
        """A first Ctrl-C or SIGTERM stops the run at the next step (abandoning an evaluation); a second one at once."""
        if self.stop_signal:
            raise SystemExit(128 + signum)
        self.stop_signal.append(signum)

    def count_steps(self, n: int, infos: dict) -> None:
        self.global_step += n
        self.bar.update(n)
        for i in np.flatnonzero(infos.get("_episode", [])):
            self.episodes_done += 1
            self.writer.add_scalar("charts/episodic_return", float(infos["episode"]["r"][i]), self.global_step)
            self.writer.add_scalar("charts/episodic_length", int(infos["episode"]["l"][i]), self.global_step)

    def log_evaluate_save(self, stride: int, metrics: dict, last: bool) -> None:
        """Logging, evaluation and checkpoints as they fall due in the last `stride` steps; stops on a signal or NaN."""
        args, step = self.args, self.global_step
        if crossed(step, args.log_every, stride):
            # .item() syncs with the device: only here; metrics without a "/" are losses
            values = {k if "/" in k else f"losses/{k}": torch.as_tensor(v).item() for k, v in metrics.items()}
            for name in [name for name, value in values.items() if not math.isfinite(value)][:1]:
                raise Diverged(f"{name} is {values[name]} at step {step}")
            values["charts/SPS"] = int((step - self.start_step) / max(time.time() - self.start_time, 1e-9))
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()  # what a killed run logged is on disk up to here
            self.show(f"{values['charts/SPS']} SPS")
        if (crossed(step, args.eval_every, stride) or last) and not self.stop_signal:
            self.show("evaluating")
            video = os.path.join(self.run_dir, "videos", f"eval_{step}.mp4") if args.capture_video else None
            if video:
                os.makedirs(os.path.dirname(video), exist_ok=True)
            obs_rms = self.obs_rms.stats() if self.obs_rms is not None else None  # a frozen copy
            act_fn = make_act_fn(self.policy, obs_rms, self.device, deterministic=True)
            seed = args.seed + EVAL_SEED
            returns = evaluate(act_fn, self.eval_env, args.eval_episodes, seed, video, self.stop_signal)
            if returns is not None:
                self.last_eval = float(returns.mean())
                self.writer.add_scalar("eval/return_mean", returns.mean(), step)
                self.writer.add_scalar("eval/return_std", returns.std(), step)
                if returns.mean() > self.best_return:
                    self.best_return = float(returns.mean())
                    self.save("best.pt")
        if crossed(step, args.checkpoint_every, stride) or last or self.stop_signal:
            self.save("latest.pt", with_buffer=True)
        if self.stop_signal and not last:
            latest = os.path.join(self.ckpt_dir, "latest.pt")
            print(f"\nstopped by signal {self.stop_signal[0]} at step {step}; continue: --resume {latest}")
            sys.exit(128 + self.stop_signal[0])

    def show(self, status: str) -> None:
        text = f"{status}, last evaluation {'-' if self.last_eval is None else f'{self.last_eval:.1f}'}"
        self.bar.set_postfix_str(text)
        if self.bar.disable and self.args.progress_bar:
            print(f"step {self.global_step}/{self.args.total_timesteps}: {text}", file=sys.stderr, flush=True)

    def save(self, name: str, with_buffer: bool = False) -> None:
        """checkpoints/<name>, never from weights that are not finite (the last good checkpoints stay as they were)."""
        modules = [self.policy, *(obj for obj in self.resume_objects.values() if isinstance(obj, nn.Module))]
        if not all(torch.isfinite(t).all() for module in modules for t in module.state_dict().values()):
            raise Diverged(f"the weights are not finite at step {self.global_step}")
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self.writer.flush()
        buffer_file = f"buffer_{self.global_step}.pt" if with_buffer and self.buffer and self.args.save_buffer else None
        if buffer_file:
            atomic_save(self.buffer.state_dict(), os.path.join(self.ckpt_dir, buffer_file))
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        action_space = self.envs.action_space.np_random.bit_generator.state
        rng = dict(torch=torch.get_rng_state(), cuda=cuda, action_space=action_space)
        state = {name: obj.state_dict() for name, obj in self.resume_objects.items()}
        state.update(num_updates=self.num_updates, best_return=self.best_return, buffer_file=buffer_file)
        state.update(episodes_done=self.episodes_done, rng=rng)
        args = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self.args).items()}
        obs_rms = self.obs_rms.state_dict() if self.obs_rms is not None else None
        checkpoint = dict(format_version=FORMAT_VERSION, algo=ALGO, env_id=self.args.env_id, run_name=self.run_name)
        checkpoint.update(args=args, global_step=self.global_step, policy_kwargs=self.policy_kwargs, obs_rms=obs_rms)
        checkpoint.update(policy=self.policy.state_dict(), resume_state=state)
        atomic_save(checkpoint, os.path.join(self.ckpt_dir, name))
        for old in os.listdir(self.ckpt_dir) if buffer_file else []:  # the new latest.pt names its buffer: not old ones
            if old.startswith("buffer_") and old.endswith(".pt") and old != buffer_file:
                os.remove(os.path.join(self.ckpt_dir, old))

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        for close in (self.bar.close, self.envs.close, self.eval_env.close, self.writer.close):
            with contextlib.suppress(Exception):
                close()
        if self.args.track:
            __import__("wandb").finish(exit_code=0 if kind is None else 1)
        if isinstance(error, (Diverged, CheckpointError)):  # one line, no traceback
            diverged = f"diverged: {error}; nothing was saved from it, the last good checkpoints are in {self.ckpt_dir}"
            fail(diverged if isinstance(error, Diverged) else str(error), 3 if isinstance(error, Diverged) else 2)

    def finish(self) -> None:
        self.save("final.pt")
        print(f"done: {self.global_step} steps, best evaluation {self.best_return:.1f}, checkpoints in {self.ckpt_dir}")


if __name__ == "__main__":
    main()
