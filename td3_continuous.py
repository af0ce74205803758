"""Twin Delayed DDPG for continuous actions (Fujimoto et al. 2018, arXiv:1802.09477)."""

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
    policy_lr: float = 3e-4  # learning rate of the actor
    q_lr: float = 3e-4  # learning rate of the critics
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the actor and of each critic

    # ---- TD3 ----
    noise_type: Literal["gaussian", "ou"] = "gaussian"  # exploration noise: Gaussian, or Ornstein-Uhlenbeck
    exploration_noise: float = 0.1  # std of the exploration noise, a fraction of each action dimension's half-range
    policy_frequency: int = 2  # update the actor and the target networks once every this many critic updates
    policy_noise: float = 0.2  # target policy smoothing: noise std, a fraction of each dimension's half-range
    noise_clip: float = 0.5  # target policy smoothing: the noise is clipped to +-noise_clip times the half-range


def check_args(args: Args) -> None:  # hyperparameters that cannot work, caught before any environment is built
    positive = ("buffer_size", "batch_size", "policy_lr", "q_lr", "tau", "hidden_sizes", "policy_frequency")
    check_ranges(
        args, positive, unit_interval=("tau", "gamma"), non_negative=("exploration_noise", "policy_noise", "noise_clip")
    )
    if args.batch_size > args.buffer_size:
        raise ArgError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}")
    if not 0 <= args.learning_starts < args.total_timesteps:
        raise ArgError(f"--learning-starts must be in [0, --total-timesteps), got {args.learning_starts}")
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgError("--cudagraphs needs CUDA (and not --no-cuda)")


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
    def act(self, obs: torch.Tensor, deterministic: bool = False, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """deterministic: mu(s); else mu(s) + exploration_std * noise (N(0, 1) unless given), clipped to the bounds."""
        mu = self(obs)
        if deterministic:
            return mu
        noise = torch.randn_like(mu) if noise is None else noise
        return torch.clamp(mu + self.exploration_std * noise, self.action_low, self.action_high)


class OUNoise:
    """Ornstein-Uhlenbeck process per env and dimension (Lillicrap et al. 2015: theta 0.15, dt 1; unit variance in the
    stationary limit here, scaled by exploration_std outside): x <- x - theta x + sqrt(2 theta) N(0, 1)."""

    def __init__(self, num_envs: int, act_dim: int, device: torch.device, theta: float = 0.15):
        self.theta, self.state = theta, torch.zeros(num_envs, act_dim, device=device)

    def sample(self) -> torch.Tensor:
        self.state += -self.theta * self.state + math.sqrt(2 * self.theta) * torch.randn_like(self.state)
        return self.state

    def reset(self, done: np.ndarray) -> None:
        self.state[torch.as_tensor(done, device=self.state.device)] = 0.0


class QEnsemble(nn.Module):
    """`num_q` independent Q(s, a) MLPs evaluated as one batched network (LeanRL's ensemble): returns (num_q, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes=(256, 256), num_q: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim, *hidden_sizes, 1]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num_q, i, o)) for i, o in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(num_q, 1, o)) for o in dims[1:]])
        for weight, bias in zip(self.weights, self.biases):  # nn.Linear's default init, per member
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, obs, actions, detach_params: bool = False, members: Optional[int] = None) -> torch.Tensor:
        """detach_params: no gradient reaches the weights (the actor's loss); members: the first `members` critics."""
        x = torch.cat([obs, actions], -1).unsqueeze(0).expand(members or len(self.weights[0]), -1, -1)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if members is not None:
                weight, bias = weight[:members], bias[:members]
            if detach_params:
                weight, bias = weight.detach(), bias.detach()
            if i < len(self.weights) - 1:
                x = torch.baddbmm(bias, x, weight).relu_()
            else:  # one output column: multiply and sum, (num_q, B); on the CPU baddbmm takes 4-5x longer here
                x = (x * weight.transpose(1, 2)).sum(-1) + bias.squeeze(-1)
        return x


# ALGO LOGIC: storage
class ReplayBuffer:
    """Transitions in preallocated float32 tensors on the training device; uniform sampling with replacement."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device, self.pos, self.size = capacity, device, 0, 0
        shapes = dict(obs=(obs_dim,), actions=(act_dim,), rewards=(), next_obs=(obs_dim,), terminations=())
        self.data = {key: torch.zeros((capacity, *shape), device=device) for key, shape in shapes.items()}

    def add(self, obs, actions, rewards, next_obs, terminations) -> None:
        """Store n transitions (arrays with a leading dimension n); `terminations` is 1 only where the MDP ended."""
        index = torch.as_tensor((self.pos + np.arange(len(obs))) % self.capacity, device=self.device)
        for key, value in zip(self.data, (obs, actions, rewards, next_obs, terminations)):
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
def critic_loss(actor_target, qf, qf_target, gamma, policy_noise, noise_clip, obs, actions, rewards, next_obs, dones):
    """Clipped double Q (Fujimoto et al. 2018, eq. 10), each critic's MSE summed over both: the target
    r + gamma (1 - terminated) min_j Q'_j(s', a') bootstraps through truncations; a' = mu'(s') + clip(noise, -c, c),
    clipped to the bounds (target policy smoothing, eq. 15), noise std and c in units of each dimension's half-range."""
    with torch.no_grad():
        noise = (torch.randn_like(actions) * policy_noise).clamp(-noise_clip, noise_clip) * actor_target.action_scale
        next_actions = torch.clamp(actor_target(next_obs) + noise, actor_target.action_low, actor_target.action_high)
        next_q_value = rewards + gamma * (1.0 - dones) * qf_target(next_obs, next_actions).min(0).values
    qf_values = qf(obs, actions)
    return (qf_values - next_q_value).pow(2).mean(1).sum(), qf_values.detach().mean()


def actor_loss(actor: Actor, qf: QEnsemble, obs) -> torch.Tensor:
    """Deterministic policy gradient through the first critic: -Q_1(s, mu(s)) (Fujimoto et al. 2018, section 4.2)."""
    return -qf(obs, actor(obs), detach_params=True, members=1)[0].mean()


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
    qf = QEnsemble(obs_dim, act_dim, args.hidden_sizes, num_q=2).to(device)
    qf_target = QEnsemble(obs_dim, act_dim, args.hidden_sizes, num_q=2).to(device)
    qf_target.load_state_dict(qf.state_dict())
    adam = {"fused": True, "capturable": args.cudagraphs}  # fused: one kernel per step; capturable: for CUDA graphs
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, **adam)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, **adam)
    ou_noise = OUNoise(args.num_envs, act_dim, device) if args.noise_type == "ou" else None
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
    autoreset = np.zeros(args.num_envs, dtype=bool)
    losses = {}
    with run:
        while run.global_step < args.total_timesteps:
            # ALGO LOGIC: act (uniformly random before learning starts, then mu(s) plus exploration noise), step, store
            if run.global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                noise = ou_noise.sample() if ou_noise is not None else None  # None: Gaussian
                actions = actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device), noise=noise).cpu().numpy()
            if ou_noise is not None:  # an env this step resets (next-step autoreset) starts its next episode's process
                ou_noise.reset(autoreset)  # from zero: its first action's noise is one step from zero, as at the start
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            # gymnasium >= 1.0 autoresets on the *next* step (it returns a new episode's first observation): not stored.
            # A truncated episode's next_obs is its true last one, stored with termination 0: the target bootstraps.
            real = ~autoreset
            rb.add(obs[real], actions[real], rewards[real], next_obs[real], terminations[real])
            obs, autoreset = next_obs, np.logical_or(terminations, truncations)
            run.count_steps(args.num_envs, infos)

            # ALGO LOGIC: one critic step per environment step (Fujimoto et al. 2018, algorithm 1)
            for _ in range(args.num_envs if run.global_step >= args.learning_starts else 0):
                data = rb.sample(args.batch_size)
                qf_loss, qf_values = critic_loss_fn(
                    actor_target, qf, qf_target, args.gamma, args.policy_noise, args.noise_clip, *data
                )
                q_optimizer.zero_grad()
                qf_loss.backward()
                q_optimizer.step()
                losses.update(qf_loss=qf_loss, qf_values=qf_values)
                run.num_updates += 1
                if run.num_updates % args.policy_frequency == 0:  # delayed policy updates (section 5.2)
                    # the actor's loss goes through the critics just updated
                    policy_loss = actor_loss_fn(actor, qf, data[0])
                    actor_optimizer.zero_grad()
                    policy_loss.backward()
                    actor_optimizer.step()
                    losses["actor_loss"] = policy_loss.detach().clone()  # a copy outlives CUDA graphs' reused memory
                    with torch.no_grad():  # polyak: target <- (1 - tau) target + tau online, one fused op per network
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
