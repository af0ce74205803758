"""Distributed Distributional Deterministic Policy Gradients, D4PG (Barth-Maron et al. 2018, arXiv:1804.08617)."""

import collections
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
from typing import Callable, Optional

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
    num_envs: int = 1  # parallel environments
    runs_dir: str = "runs"  # directory that holds the run directories
    run_name: Optional[str] = None  # name of the run directory (default: <env_id>__<exp_name>__<seed>__<unix time>)
    log_every: int = 1_000  # log losses and SPS every this many environment steps
    eval_every: int = 10_000  # evaluate the deterministic policy every this many environment steps (0: only at the end)
    eval_episodes: int = 10  # episodes per evaluation
    checkpoint_every: int = 25_000  # write checkpoints/latest.pt every this many environment steps
    resume: Optional[str] = None  # continue the run of this checkpoint, with its own arguments (README: resuming)
    progress_bar: bool = True  # show a progress bar (plain lines when the output is not a terminal)

    # ---- off-policy ----
    compile: bool = False  # put the loss functions through torch.compile
    cudagraphs: bool = False  # also capture them in CUDA graphs (torch.compile mode reduce-overhead; needs CUDA)
    save_buffer: bool = True  # save the replay buffer beside latest.pt, so --resume continues with it
    buffer_size: int = 1_000_000  # replay buffer capacity (transitions)
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # target network smoothing coefficient (polyak)
    batch_size: int = 256  # minibatch size of each gradient step
    learning_starts: int = 25_000  # environment steps of uniformly random actions before learning starts
    policy_lr: float = 1e-3  # learning rate of the actor
    q_lr: float = 1e-3  # learning rate of the critic
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the actor and of the critic

    # ---- D4PG (the paper: Adam at 1e-4, hard target copies every t_target steps; here DDPG's defaults) ----
    exploration_noise: float = 0.1  # std of the Gaussian exploration noise, a fraction of each dimension's half-range
    n_step: int = 5  # N-step returns: rewards summed per stored transition before it bootstraps (the paper's N = 5)
    num_atoms: int = 51  # atoms of the categorical return distribution (C51's and the paper's 51)
    v_min: float = -300.0  # the lowest return of the support (lower returns count as v_min)
    v_max: float = 1500.0  # the highest return of the support (higher returns count as v_max)
    # returns ~100 r at gamma 0.99: HalfCheetah ~12 a step at best, Hopper, Walker2d 3-5, -3 at worst; Pendulum -1000..0


def check_args(args: Args) -> None:  # hyperparameters that cannot work, caught before any environment is built
    positive = ("buffer_size", "batch_size", "policy_lr", "q_lr", "tau", "hidden_sizes", "n_step")
    check_ranges(args, positive, unit_interval=("tau", "gamma"), non_negative=("exploration_noise",))
    if args.batch_size > args.buffer_size:
        raise ArgError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}")
    if not 0 <= args.learning_starts < args.total_timesteps:
        raise ArgError(f"--learning-starts must be in [0, --total-timesteps), got {args.learning_starts}")
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgError("--cudagraphs needs CUDA (and not --no-cuda)")
    if args.num_atoms < 2:
        raise ArgError(f"--num-atoms must be at least 2 (the support's two ends), got {args.num_atoms}")
    if not (math.isfinite(args.v_min) and math.isfinite(args.v_max) and args.v_min < args.v_max):
        raise ArgError(f"--v-min must be below --v-max (both finite), got --v-min {args.v_min} --v-max {args.v_max}")


# ALGO LOGIC: networks
def mlp(in_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:  # Linear-ReLU layers
    dims = [in_dim, *hidden_sizes]
    return nn.Sequential(*[layer for i, o in zip(dims, dims[1:]) for layer in (nn.Linear(i, o), nn.ReLU())])


class Actor(nn.Module):
    """Deterministic policy mu(s) = bias + scale * tanh(net(s)): (B, obs_dim) -> (B, act_dim), inside the bounds."""

    def __init__(self, obs_dim, act_dim, action_low, action_high, hidden_sizes=(256, 256), exploration_noise=0.1):
        super().__init__()
        self.net = nn.Sequential(mlp(obs_dim, tuple(hidden_sizes)), nn.Linear(hidden_sizes[-1], act_dim))
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        # buffers: they follow .to(device) and are saved in the state_dict, per dimension (asymmetric bounds too)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.register_buffer("exploration_std", exploration_noise * (high - low) / 2.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_bias + self.action_scale * torch.tanh(self.net(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """deterministic: mu(s); else mu(s) + exploration_std * N(0, 1), clipped to the bounds."""
        mu = self(obs)
        if deterministic:
            return mu
        return torch.clamp(mu + self.exploration_std * torch.randn_like(mu), self.action_low, self.action_high)


class Critic(nn.Module):
    """Categorical Z(s, a) (Bellemare et al. 2017; Barth-Maron et al. 2018, section 3): (B, obs_dim), (B, act_dim) ->
    logits (B, num_atoms) of the probabilities p_i of returns z_i in [v_min, v_max]; Q(s, a) = sum_i p_i z_i."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes=(256, 256), num_atoms=51, v_min=-300.0, v_max=1500.0):
        super().__init__()
        self.net = nn.Sequential(mlp(obs_dim + act_dim, tuple(hidden_sizes)), nn.Linear(hidden_sizes[-1], num_atoms))
        self.register_buffer("support", torch.linspace(v_min, v_max, num_atoms))  # z_1..z_N: a buffer, not a weight

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """detach_params: gradients reach the actions but not the weights (the actor's loss: no critic gradient)."""
        params = {name: p.detach() if detach_params else p for name, p in self.net.named_parameters()}
        return torch.func.functional_call(self.net, params, (torch.cat([obs, actions], -1),))


# ALGO LOGIC: storage
class NStepWindows:
    """N-step transitions (Barth-Maron et al. 2018, section 3): per env (parallel actor) a window of its episode's last
    steps (s_t, a_t, r_t). A full window emits (s_t, a_t, sum_{j<n} gamma^j r_{t+j}, s_{t+n}, gamma^n); an episode's
    end emits every pending step with its k <= n rewards, discount gamma^k from the true last observation when
    truncated, 0 when terminated. An autoreset step (its action ignored) enters no window: none spans episodes."""

    def __init__(self, num_envs: int, n: int, gamma: float):
        self.n, self.gamma, self.windows = n, gamma, [collections.deque() for _ in range(num_envs)]

    def add(self, real, obs, actions, rewards, next_obs, terminations, truncations) -> tuple[np.ndarray, ...]:
        """One vector step (real: envs not autoresetting) -> the transitions it completes, as ReplayBuffer.add's."""
        done = []
        for i in np.flatnonzero(real):
            window, ended = self.windows[i], bool(terminations[i] or truncations[i])
            window.append((np.array(obs[i]), np.array(actions[i]), float(rewards[i])))  # copies: the arrays change
            while len(window) == self.n or (ended and window):
                n_step_return = sum(self.gamma**j * reward for j, (_, _, reward) in enumerate(window))
                discount = self.gamma ** len(window) * (1.0 - float(terminations[i]))
                done.append((*window.popleft()[:2], n_step_return, next_obs[i], discount))  # oldest (s_t, a_t)
        column = lambda j, like: np.array([t[j] for t in done], np.float32).reshape(len(done), *np.shape(like)[1:])
        return tuple(column(j, like) for j, like in enumerate((obs, actions, rewards, next_obs, rewards)))


class ReplayBuffer:
    """N-step transitions in preallocated float32 tensors on the training device; uniform sampling with replacement."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device, self.pos, self.size = capacity, device, 0, 0
        shapes = dict(obs=(obs_dim,), actions=(act_dim,), rewards=(), next_obs=(obs_dim,), discounts=())
        self.data = {key: torch.zeros((capacity, *shape), device=device) for key, shape in shapes.items()}

    def add(self, obs, actions, rewards, next_obs, discounts) -> None:
        """Store m transitions (leading dimension m): n-step returns, bootstrap obs, gamma^k (1 - terminated)."""
        index = torch.as_tensor((self.pos + np.arange(len(obs))) % self.capacity, device=self.device)
        for key, value in zip(self.data, (obs, actions, rewards, next_obs, discounts)):
            self.data[key][index] = torch.as_tensor(np.asarray(value), dtype=torch.float32, device=self.device)
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return tuple(value.index_select(0, index) for value in self.data.values())  # 3x faster than [index] on the CPU

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, **{k: v[: self.size].clone().cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for key, value in self.data.items():
            value[: self.size] = state[key].to(self.device)


# ALGO LOGIC: losses (pure functions: tensors and networks in, losses out; --compile wraps them)
def categorical_projection(next_probs, rewards, discounts, support) -> torch.Tensor:
    """Phi (Bellemare et al. 2017, eq. 7, algorithm 1): rewards + discounts * Z', Z' ~ next_probs (B, N) on the evenly
    spaced support (N,), projected back onto it, (B, N): each atom, clipped to [v_min, v_max], splits its mass between
    its two neighbours by closeness (all of it to a point it falls on); discount 0 (terminal): all at the reward."""
    num_atoms, delta_z = support.shape[0], (support[-1] - support[0]) / (support.shape[0] - 1)
    shifted = rewards[:, None] + discounts[:, None] * support  # T z_j: (B, N)
    # b_j: z_l <= T z_j < z_l+1 for l = floor(b_j); clipped to [0, N - 1], that is T z_j to [v_min, v_max]
    position = ((shifted - support[0]) / delta_z).clamp(0, num_atoms - 1)
    lower = position.floor()
    # m_l += p_j (1 - (b_j - l)), m_l+1 += p_j (b_j - l); algorithm 1's (u - b_j) would lose atoms that fall on z_l
    projected = torch.zeros_like(next_probs).scatter_add_(1, lower.long(), next_probs * (1 + lower - position))
    upper = (lower.long() + 1).clamp(max=num_atoms - 1)
    return projected.scatter_add_(1, upper, next_probs * (position - lower))


def critic_loss(actor_target, qf, qf_target, obs, actions, rewards, next_obs, discounts):
    """Cross-entropy of Z(s, a) to the projected N-step target Phi(R + gamma^k (1 - terminated) Z'(s', mu'(s')))
    (Barth-Maron et al. 2018, algorithm 1): truncated episodes bootstrap. And the mean Q(s, a) = E[Z(s, a)]."""
    with torch.no_grad():
        next_probs = qf_target(next_obs, actor_target(next_obs)).softmax(-1)
        target_probs = categorical_projection(next_probs, rewards, discounts, qf_target.support)
    log_probs = qf(obs, actions).log_softmax(-1)
    qf_values = (log_probs.detach().exp() * qf.support).sum(-1).mean()
    return -(target_probs * log_probs).sum(-1).mean(), qf_values


def actor_loss(actor: Actor, qf: Critic, obs) -> torch.Tensor:
    """Deterministic policy gradient: maximise E[Z(s, mu(s))] = sum_i p_i z_i (Barth-Maron et al. 2018, algorithm 1)."""
    return -(qf(obs, actor(obs), detach_params=True).softmax(-1) * qf.support).sum(-1).mean()


def main() -> None:
    args, checkpoint = parse_args(Args, check_args)
    envs, eval_env, device = setup(args)
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    # ALGO LOGIC: networks and optimizers
    low, high = envs.single_action_space.low.tolist(), envs.single_action_space.high.tolist()
    policy_kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, action_low=low, action_high=high)
    policy_kwargs.update(hidden_sizes=list(args.hidden_sizes), exploration_noise=args.exploration_noise)
    actor, actor_target = Actor(**policy_kwargs).to(device), Actor(**policy_kwargs).to(device)
    actor_target.load_state_dict(actor.state_dict())
    critic_kwargs = dict(hidden_sizes=args.hidden_sizes, num_atoms=args.num_atoms, v_min=args.v_min, v_max=args.v_max)
    qf, qf_target = [Critic(obs_dim, act_dim, **critic_kwargs).to(device) for _ in range(2)]  # one critic, its target
    qf_target.load_state_dict(qf.state_dict())
    adam = {"fused": True, "capturable": args.cudagraphs}  # fused: one kernel per step; capturable: for CUDA graphs
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, **adam)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, **adam)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)
    critic_loss_fn, actor_loss_fn = critic_loss, actor_loss
    if args.compile or args.cudagraphs:  # the GPU path (LeanRL): fused kernels, and with CUDA graphs few launches
        mode = "reduce-overhead" if args.cudagraphs else None
        critic_loss_fn, actor_loss_fn = torch.compile(critic_loss, mode=mode), torch.compile(actor_loss, mode=mode)

    # what --resume restores besides the policy, the replay buffer and the step counters
    resume_objects = dict(qf=qf, qf_target=qf_target, q_optimizer=q_optimizer, actor_optimizer=actor_optimizer)
    resume_objects.update(actor_target=actor_target)
    run = Run(args, checkpoint, envs, eval_env, device, actor, policy_kwargs, resume_objects, buffer=rb)
    obs, _ = envs.reset(seed=args.seed + run.global_step)
    autoreset, losses = np.zeros(args.num_envs, dtype=bool), {}
    # one N-step window per env; on --resume the envs were just reset: empty windows (the stopped run's < n are lost)
    windows = NStepWindows(args.num_envs, args.n_step, args.gamma)
    with run:
        while run.global_step < args.total_timesteps:
            # ALGO LOGIC: act (uniformly random before learning starts, then mu(s) plus Gaussian noise), step, store
            if run.global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            # gymnasium >= 1.0 autoresets on the *next* step (it returns a new episode's first observation): no window.
            # A truncated episode's next_obs is its true last one: its pending steps bootstrap from it with gamma^k.
            real = ~autoreset
            rb.add(*windows.add(real, obs, actions, rewards, next_obs, terminations, truncations))
            obs, autoreset = next_obs, np.logical_or(terminations, truncations)
            run.count_steps(args.num_envs, infos)

            # ALGO LOGIC: one learner step per env step (Barth-Maron et al. 2018, algorithm 1), once transitions exist
            for _ in range(args.num_envs if run.global_step >= args.learning_starts and rb.size > 0 else 0):
                data = rb.sample(args.batch_size)
                qf_loss, qf_values = critic_loss_fn(actor_target, qf, qf_target, *data)
                q_optimizer.zero_grad()
                qf_loss.backward()
                q_optimizer.step()
                losses.update(qf_loss=qf_loss, qf_values=qf_values)
                run.num_updates += 1

                # the actor's loss goes through the critic just updated
                policy_loss = actor_loss_fn(actor, qf, data[0])
                actor_optimizer.zero_grad()
                policy_loss.backward()
                actor_optimizer.step()
                losses["actor_loss"] = policy_loss.detach().clone()  # a copy outlives CUDA graphs' reused memory
                with torch.no_grad():  # polyak as DDPG's (the paper copies): target <- (1 - tau) target + tau online
                    torch._foreach_lerp_(list(actor_target.parameters()), list(actor.parameters()), args.tau)
                    torch._foreach_lerp_(list(qf_target.parameters()), list(qf.parameters()), args.tau)

            run.log_evaluate_save(args.num_envs, losses, last=run.global_step >= args.total_timesteps)
        run.finish()


POLICY = Actor  # the network a checkpoint's "policy" holds: load_policy rebuilds it


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
