"""Soft Actor-Critic for continuous actions (Haarnoja et al. 2018, arXiv:1801.01290; automatic temperature: arXiv:1812.05905)."""
import contextlib
import copy
import ctypes.util
import difflib
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Callable, Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
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
    num_envs: int = 1
    """parallel environments"""
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

    # ---- SAC ----
    precision: Literal["float32", "bfloat16"] = "float32"
    """bfloat16: the hidden-to-hidden matrix products of the updates in bfloat16 (weights, optimizer, input and output
    layers, losses, acting and evaluation stay float32): about 1.3x faster updates on a CPU with AVX-512 BF16 or AMX,
    slower on others; it cost SAC some return on HalfCheetah (README, Speed)"""
    update_threads: int = 2
    """CPU threads per update (1 or 2): with 2 the actor's half of each update runs beside the critics' on a second
    core (the same result bit for bit, about 1.5x faster updates), and an update without one (TD3's every other)
    splits the critics' batch between the cores (equal up to rounding); CUDA and --compile use 1"""
    save_buffer: bool = True
    """save the replay buffer beside latest.pt, so --resume continues with it"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target critic smoothing coefficient (polyak)"""
    batch_size: int = 256
    """minibatch size of each gradient step"""
    learning_starts: int = 5_000
    """environment steps of uniformly random actions before learning starts"""
    policy_lr: float = 1e-3
    """learning rate of the actor"""
    q_lr: float = 1e-3
    """learning rate of the critics"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of the actor and of each critic"""
    autotune: bool = True
    """tune the entropy temperature alpha automatically (target entropy -|A|)"""
    alpha: float = 0.2
    """entropy temperature; the initial value when autotuning"""
    alpha_lr: float = 3e-4
    """learning rate of log(alpha) when autotuning"""


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
    for name in ("buffer_size", "batch_size", "policy_lr", "q_lr", "alpha", "alpha_lr", "tau"):
        if not getattr(args, name) > 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.update_threads not in (1, 2):
        raise ArgError(f"--update-threads must be 1 or 2, got {args.update_threads}")
    if any(h <= 0 for h in args.hidden_sizes) or not args.hidden_sizes:
        raise ArgError(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if args.tau > 1:
        raise ArgError(f"--tau must be in (0, 1], got {args.tau}")
    if not 0 <= args.gamma <= 1:
        raise ArgError(f"--gamma must be in [0, 1], got {args.gamma}")
    if args.batch_size > args.buffer_size:
        raise ArgError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}")
    if not 0 <= args.learning_starts < args.total_timesteps:
        raise ArgError(f"--learning-starts {args.learning_starts} must be in [0, --total-timesteps {args.total_timesteps})")


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86: AVX-512 BF16 or AMX; Arm: BF16); elsewhere torch emulates it,
    slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


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


# ALGO LOGIC: networks
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Float32Linear(nn.Linear):
    """nn.Linear that computes in float32 even inside a bfloat16 autocast (--precision bfloat16): the input layers,
    which see the raw observations and actions, and the output layers, which give Q values and actions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_region(x.device.type):
            return super().forward(x.float())


def float32_region(device_type: str):
    """Where an autocast is on, a region that computes in float32; else nothing to switch off (entering an autocast
    context costs a few microseconds, a dozen times per update)."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else contextlib.nullcontext()


def mlp(in_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear-ReLU layers; the first in float32 (Float32Linear), the hidden-to-hidden ones in the autocast's precision."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [(nn.Linear if layers else Float32Linear)(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers)


def tanh_gaussian(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor, action_scale: torch.Tensor, action_bias: torch.Tensor):
    """a = bias + scale * tanh(u), u = mean + std * noise, all (B, A). Returns a and log p(a) (B,), the density
    of a in env units by the change of variables (Haarnoja et al. 2018, appendix C):
    log p(a) = log N(u; mean, std) - sum_i log(scale_i * (1 - tanh(u_i)^2))."""
    u = mean + log_std.exp() * noise
    # per dimension, log N(u; mean, std) = -noise^2 / 2 - log_std - log(2 pi) / 2 and
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): exact, no epsilon, stable for large |u|;
    # the terms that do not depend on the sample are summed once (fewer operations per update)
    log_prob = (2.0 * (u + F.softplus(-2.0 * u)) - 0.5 * noise.pow(2) - log_std).sum(-1)
    constant = (0.5 * math.log(2 * math.pi) + 2.0 * math.log(2.0)) * mean.shape[-1] + torch.log(action_scale).sum()
    return action_bias + action_scale * torch.tanh(u), log_prob - constant


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy: obs (B, obs_dim) -> action (B, act_dim) inside [action_low, action_high]."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: list, action_high: list, hidden_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.trunk = mlp(obs_dim, tuple(hidden_sizes))
        self.fc_mean = Float32Linear(hidden_sizes[-1], act_dim)
        self.fc_logstd = Float32Linear(hidden_sizes[-1], act_dim)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        # buffers: they follow .to(device) and are saved in the state_dict, per dimension (asymmetric bounds too)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(obs)
        log_std = torch.tanh(self.fc_logstd(hidden))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # smooth clamp to [min, max]
        return self.fc_mean(hidden), log_std

    def sample(self, obs: torch.Tensor, noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action (B, A) and its log-probability (B,); noise: the standard normal draw (B, A), drawn
        here if None."""
        mean, log_std = self(obs)
        return tanh_gaussian(mean, log_std, torch.randn_like(mean) if noise is None else noise, self.action_scale, self.action_bias)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The common policy contract: deterministic is tanh of the mean, else a sample (the action of `sample`
        for the same noise, without the log-probability that acting does not need)."""
        mean, log_std = self(obs)
        u = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        return self.action_bias + self.action_scale * torch.tanh(u)


class QEnsemble(nn.Module):
    """`num_q` independent Q(s, a) MLPs evaluated as one batched network (baddbmm): returns (num_q, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...] = (256, 256), num_q: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim, *hidden_sizes, 1]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num_q, i, o)) for i, o in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(num_q, 1, o)) for o in dims[1:]])
        for weight, bias in zip(self.weights, self.biases):  # nn.Linear's default init, per member
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_params: bool = False, members: Optional[int] = None) -> torch.Tensor:
        """detach_params: gradients reach the actions but not the weights (the actor's loss).
        members: evaluate only the first `members` critics, (members, B) (TD3's and DDPG's actor loss uses the first)."""
        last = len(self.weights) - 1
        x = torch.cat([obs, actions], -1).unsqueeze(0).expand(members or len(self.weights[0]), -1, -1)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if members is not None:
                weight, bias = weight[:members], bias[:members]
            if detach_params:
                weight, bias = weight.detach(), bias.detach()
            if 0 < i < last:  # hidden to hidden: in the autocast's precision
                x = torch.baddbmm(bias, x, weight)
            else:  # the input and output layers in float32, as Float32Linear: bfloat16 would round the observations
                with float32_region(x.device.type):  # and actions to 3 digits, a Q value near 1000 by 2
                    if i < last:
                        x = torch.baddbmm(bias, x.float(), weight)
                    else:  # one output column: multiply and sum, (num_q, B); on the CPU baddbmm takes 4-5x longer here
                        x = (x.float() * weight.transpose(1, 2)).sum(-1) + bias.squeeze(-1)
            if i < last:
                x = x.relu_()  # in place: baddbmm's backward does not need its output
        return x


# ALGO LOGIC: storage
class ReplayBuffer:
    """Transitions in preallocated float32 tensors on the training device; uniform sampling with replacement."""

    keys = ("obs", "actions", "rewards", "next_obs", "terminations")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device, self.pos, self.size = capacity, device, 0, 0
        shapes = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_obs": (obs_dim,), "terminations": ()}
        self.data = {key: torch.zeros((capacity, *shapes[key]), dtype=torch.float32, device=device) for key in self.keys}

    def add(self, obs, actions, rewards, next_obs, terminations) -> None:
        """Store n transitions (arrays with a leading dimension n); `terminations` is 1 only where the MDP ended."""
        n = len(obs)
        if n == 0:
            return
        index = torch.as_tensor((self.pos + np.arange(n)) % self.capacity, device=self.device)
        for key, value in zip(self.keys, (obs, actions, rewards, next_obs, terminations)):
            self.data[key][index] = torch.as_tensor(np.asarray(value), dtype=torch.float32, device=self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return tuple(self.data[key].index_select(0, index) for key in self.keys)  # index_select: 3x faster than [index] on the CPU

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, "capacity": self.capacity, **{k: v[: self.size].clone().cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ArgError(f"the saved replay buffer holds {state['capacity']} transitions, --buffer-size is {self.capacity}")
        self.pos, self.size = state["pos"], state["size"]
        for key in self.keys:
            self.data[key][: self.size] = state[key].to(self.device)


def env_step(envs: gym.vector.VectorEnv, rb: ReplayBuffer, obs: np.ndarray, actions: np.ndarray, autoreset: np.ndarray):
    """Step the vector env and store the real transitions. gymnasium >= 1.0 autoresets on the *next* step: an
    env whose episode ended on the previous call is reset by this one, ignores its action and returns the first
    observation of a new episode, so that step is not a transition and is not stored. A truncated episode's
    last observation is the true final one: it is stored with termination 0, so the target bootstraps from it."""
    next_obs, rewards, terminations, truncations, infos = envs.step(actions)
    real = ~autoreset
    rb.add(obs[real], actions[real], rewards[real], next_obs[real], terminations[real])
    return next_obs, infos, np.logical_or(terminations, truncations)


# ALGO LOGIC: updates (pure functions: every input is an argument, outputs are tensors; torch.compile wraps them).
# Each returns the loss to differentiate and detached metrics; Updater differentiates and steps the optimizers.
def soft_q_target(rewards, terminations, next_q, next_log_pi, alpha, gamma: float) -> torch.Tensor:
    """r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')), a' ~ pi(s') (Haarnoja et al. 2018b, eq. 3)."""
    return rewards + gamma * (1.0 - terminations) * (next_q - alpha * next_log_pi)


def critic_loss(obs, actions, rewards, next_obs, terminations, next_noise, actor: Actor, qf: QEnsemble, qf_target: QEnsemble,
                log_alpha: torch.Tensor, gamma: float):
    """next_noise: the standard normal draw of the actor's sample in the next states, (B, A)."""
    with torch.no_grad():
        next_actions, next_log_pi = actor.sample(next_obs, next_noise)
        next_q = qf_target(next_obs, next_actions).min(0).values
        next_q_value = soft_q_target(rewards, terminations, next_q, next_log_pi, log_alpha.exp(), gamma)
    qf_values = qf(obs, actions)
    qf_loss = (qf_values - next_q_value).pow(2).mean(1).sum()  # sum over critics of each one's MSE
    return qf_loss, (qf_loss.detach(), qf_values.detach().mean())


def actor_loss(obs, noise, actor: Actor, qf: QEnsemble, log_alpha: torch.Tensor, target_entropy: float):
    """The actor's loss plus, where log_alpha requires grad, the temperature's (Haarnoja et al. 2018b, eq. 18:
    J(alpha) = E[-alpha (log pi(a|s) + target_entropy)]): one backward pass, as no parameter has a gradient from both."""
    actions, log_pi = actor.sample(obs, noise)
    min_qf_pi = qf(obs, actions, detach_params=True).min(0).values
    alpha = log_alpha.exp()
    policy_loss = (alpha.detach() * log_pi - min_qf_pi).mean()
    alpha_loss = -(alpha * (log_pi.detach() + target_entropy)).mean() if log_alpha.requires_grad else torch.zeros_like(log_alpha)
    return policy_loss + alpha_loss, (policy_loss.detach(), alpha_loss.detach(), -log_pi.detach().mean())


def cloned_outputs(fn: Callable) -> Callable:
    def wrapper(*args):
        loss, metrics = fn(*args)
        return loss, tuple(t.clone() for t in metrics)

    return wrapper


@torch.no_grad()
def polyak_update(target_params: list[torch.Tensor], params: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau params, as one fused op over all tensors."""
    torch._foreach_lerp_(target_params, params, tau)


def frozen(module: nn.Module, trainable: bool = False) -> nn.Module:
    """A copy of `module` whose parameters share its memory (they follow its optimizer steps and load_state_dict) but
    are tensors of their own: what one thread of an Updater reads of a network that another thread trains. Each thread
    must use tensors of its own: torch's autograd bookkeeping of one tensor is not safe to share between threads (a
    thread that records a gradient edge to a parameter while another indexes it can deadlock on the GIL).
    trainable: the copy's parameters take gradients of their own (in their .grad), as the module's do."""
    view = copy.deepcopy(module)
    for name, param in module.named_parameters():
        owner, _, leaf = name.rpartition(".")
        setattr(view.get_submodule(owner), leaf, nn.Parameter(param.detach(), requires_grad=trainable and param.requires_grad))
    for name, buffer in module.named_buffers():  # the action bounds
        owner, _, leaf = name.rpartition(".")
        setattr(view.get_submodule(owner), leaf, buffer.detach())
    return view


class Updater:
    """One update of the critics and, when one is due, of the actor, both from the parameters as they were before it:
    each half computes its loss and gradient first, then both step their optimizers (a simultaneous update; the
    actor's gradient goes through the critics of before their step). With threads=2 the actor's half runs on a
    second thread while this one runs the critics' (torch releases the GIL inside its operations); an update without
    an actor half (TD3's every other one) splits the critics' batch between the two threads instead and adds their
    gradients. On one thread everything runs one after the other: the same result bit for bit, except that a split
    batch sums its gradient in another order (equal up to rounding). Only this thread draws random numbers: what the
    critics' loss needs is in its batch."""

    def __init__(self, threads: int, autocast: Callable):
        self.autocast = autocast  # autocast is per thread: each half enters it
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="update") if threads > 1 else None
        self.barrier = threading.Barrier(2)
        self.replicas: dict[tuple, tuple] = {}  # the critics' networks as the second thread reads them, for a split batch

    def gradient(self, loss_fn: Callable, optimizers: list) -> tuple:
        with self.autocast():
            loss, metrics = loss_fn()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return metrics

    def half(self, loss_fn: Callable, optimizers: list) -> tuple:
        """On its thread: the gradient, wait until the other half has its own (it reads these parameters), step."""
        try:
            metrics = self.gradient(loss_fn, optimizers)
            self.barrier.wait()
        except BaseException:
            self.barrier.abort()  # the other half stops waiting
            raise
        for optimizer in optimizers:
            optimizer.step()
        return metrics

    def part(self, loss_of: Callable, batch: tuple, nets: tuple, share: float) -> tuple:
        """The gradient of `share` times the loss of part of the batch (a mean over it); its share of the metrics."""
        with self.autocast():
            loss, metrics = loss_of(batch, nets)
        (loss * share).backward()
        return tuple(metric * share for metric in metrics)

    def split(self, loss_of: Callable, batch: tuple, nets: tuple, optimizers: list) -> tuple:
        """The critics' half alone on both threads: each takes part of the batch (the second on copies of the networks
        that share their memory), weighted by its share; the gradients add up to the whole batch's."""
        key = tuple(map(id, nets))
        if key not in self.replicas:
            copies = tuple(frozen(net, trainable=True) if isinstance(net, nn.Module) else net.detach() for net in nets)
            params = [[p for net in group if isinstance(net, nn.Module) for p in net.parameters()] for group in (nets, copies)]
            self.replicas[key] = nets, copies, *params  # holding the networks keeps their ids from being reused
        _, copies, params, copied = self.replicas[key]
        n = len(batch[0])
        k = (n + 1) // 2
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        for param in copied:
            param.grad = None
        second = self.worker.submit(self.part, loss_of, tuple(t[k:] for t in batch), copies, (n - k) / n)
        try:
            metrics = self.part(loss_of, tuple(t[:k] for t in batch), nets, k / n)
        except BaseException:
            second.exception()  # wait for the worker, which reads these parameters; this error is the one raised
            raise
        other = second.result()
        pairs = [(p.grad, c.grad) for p, c in zip(params, copied) if p.grad is not None and c.grad is not None]
        if pairs:
            torch._foreach_add_([g for g, _ in pairs], [c for _, c in pairs])
        for optimizer in optimizers:
            optimizer.step()
        return tuple(a + b for a, b in zip(metrics, other))

    def __call__(self, critic: tuple[Callable, tuple, tuple, list], actor: Optional[tuple[Callable, list]] = None) -> tuple:
        """critic: (its loss as a function of (batch, networks), reading nothing else, a mean over the batch; the batch
        (tensors with one row per sample); the networks the loss reads; its optimizers); actor: (its loss function
        without arguments, its optimizers). Returns both halves' metrics."""
        loss_of, batch, nets, critic_optimizers = critic
        if actor is None and self.worker is not None and len(batch[0]) > 1:
            return self.split(loss_of, batch, nets, critic_optimizers), None
        critic = (lambda: loss_of(batch, nets), critic_optimizers)
        if actor is None or self.worker is None:
            metrics = [self.gradient(*half) for half in (critic, actor) if half is not None]
            for optimizer in critic[1] + (actor[1] if actor else []):
                optimizer.step()
            return metrics[0], metrics[1] if actor else None
        future = self.worker.submit(self.half, *actor)
        try:
            critic_metrics = self.half(*critic)
        except threading.BrokenBarrierError:
            future.result()  # raises the actor half's error, the cause
            raise
        return critic_metrics, future.result()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()


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
    """One observation (obs_dim,) -> one action (act_dim,). SAC does not normalise observations: obs_rms is None."""

    def act_fn(obs: np.ndarray) -> np.ndarray:
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
        return policy.act(obs_tensor, deterministic)[0].cpu().numpy()

    return act_fn


def load_policy(checkpoint: dict, device: str = "cpu", deterministic: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """What enjoy.py calls: the policy of a checkpoint as a function of one observation."""
    policy = Actor(**checkpoint["policy_kwargs"]).to(device)
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
        envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
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
    actor = Actor(**policy_kwargs).to(device)
    qf = QEnsemble(obs_dim, act_dim, args.hidden_sizes).to(device)
    qf_target = QEnsemble(obs_dim, act_dim, args.hidden_sizes).to(device)
    qf_target.load_state_dict(qf.state_dict())
    # fused Adam: one kernel per step instead of a dozen per tensor (about 3x faster steps on the CPU);
    # capturable keeps the step count on the device, which CUDA graphs need
    adam = {"fused": True, "capturable": args.cudagraphs}
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, **adam)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, **adam)
    temperature = nn.ParameterDict({"log_alpha": nn.Parameter(torch.tensor(math.log(args.alpha), device=device), requires_grad=args.autotune)})
    log_alpha = temperature["log_alpha"]
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr, **adam) if args.autotune else None
    actor_optimizers = [actor_optimizer] + ([alpha_optimizer] if alpha_optimizer else [])
    target_entropy = -float(act_dim)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)
    qf_params, qf_target_params = list(qf.parameters()), list(qf_target.parameters())
    # what each half of an update reads of the other's networks (Updater): same memory, tensors of their own
    actor_frozen, qf_frozen, log_alpha_frozen = frozen(actor), frozen(qf), log_alpha.detach()
    # what --resume restores besides the policy and the replay buffer: objects with state_dict() and load_state_dict()
    resume_objects = {"qf": qf, "qf_target": qf_target, "q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer, "temperature": temperature}
    if alpha_optimizer is not None:
        resume_objects["alpha_optimizer"] = alpha_optimizer

    bfloat16 = args.precision == "bfloat16"
    if bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("error: --precision bfloat16: this GPU does not support bfloat16", file=sys.stderr)
        sys.exit(2)
    if bfloat16 and device.type == "cpu" and not native_bfloat16():
        print("warning: this CPU has no native bfloat16 products (AVX-512 BF16 or AMX); --precision bfloat16 will be slower than float32", file=sys.stderr)
    critic_fn, actor_fn = critic_loss, actor_loss
    if args.compile or args.cudagraphs:
        mode = "reduce-overhead" if args.cudagraphs else None
        critic_fn, actor_fn = torch.compile(critic_loss, mode=mode), torch.compile(actor_loss, mode=mode)
    if args.cudagraphs:  # a CUDA graph overwrites its outputs when it runs again: keep copies of the metrics
        critic_fn, actor_fn = cloned_outputs(critic_fn), cloned_outputs(actor_fn)
    threads = args.update_threads if device.type == "cpu" and not args.compile else 1
    updater = Updater(threads, lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16))

    global_step, num_updates, best_return, episodes_done = 0, 0, -math.inf, 0
    if checkpoint is not None:
        state = checkpoint["resume_state"]
        actor.load_state_dict(checkpoint["policy"])
        missing = [name for name in resume_objects if name not in state]
        if missing:  # a checkpoint of an older version of this script
            print(f"error: {cli.resume} has no resume state for {', '.join(missing)}; it was written by another version of {ALGO}.py", file=sys.stderr)
            sys.exit(2)
        for name, obj in resume_objects.items():
            obj.load_state_dict(state[name])
        global_step, num_updates = checkpoint["global_step"], state["num_updates"]
        best_return, episodes_done = state["best_return"], state["episodes_done"]
        if os.path.exists(os.path.join(ckpt_dir, "best.pt")):  # evaluations may have come after the last latest.pt
            best_return = max(best_return, load_checkpoint(os.path.join(ckpt_dir, "best.pt"))["resume_state"]["best_return"])
        set_rng_state(state["rng"], envs.action_space)
        buffer_file = state.get("buffer_file")
        if buffer_file and os.path.exists(os.path.join(ckpt_dir, buffer_file)):
            rb.load_state_dict(torch.load(os.path.join(ckpt_dir, buffer_file), map_location=device, weights_only=True))
        elif global_step >= args.learning_starts:
            print(f"warning: no replay buffer saved with {cli.resume}; learning continues from an empty buffer", file=sys.stderr)
        print(f"resuming {run_name} at step {global_step}")

    def save_checkpoint(name: str, with_buffer: bool = False) -> None:
        os.makedirs(ckpt_dir, exist_ok=True)
        buffer_file = None
        if with_buffer and args.save_buffer:
            buffer_file = f"buffer_{global_step}.pt"
            atomic_save(rb.state_dict(), os.path.join(ckpt_dir, buffer_file))
        atomic_save({
            "format_version": FORMAT_VERSION, "algo": ALGO, "env_id": args.env_id, "run_name": run_name,
            "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items()},
            "global_step": global_step, "policy_kwargs": policy_kwargs, "policy": actor.state_dict(), "obs_rms": None,
            "resume_state": {
                **{name: obj.state_dict() for name, obj in resume_objects.items()}, "num_updates": num_updates,
                "best_return": best_return, "episodes_done": episodes_done, "rng": get_rng_state(envs.action_space),
                "buffer_file": buffer_file,
            },
        }, os.path.join(ckpt_dir, name))
        if with_buffer:  # the new latest.pt names its buffer: older buffers are no longer referenced
            for old in os.listdir(ckpt_dir):
                if old.startswith("buffer_") and old.endswith(".pt") and old != buffer_file:
                    os.remove(os.path.join(ckpt_dir, old))

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
    eval_act = make_act_fn(actor, None, device, deterministic=True)
    obs, _ = envs.reset(seed=args.seed + global_step)
    autoreset = np.zeros(args.num_envs, dtype=bool)
    losses = None
    last_return = float("nan")
    start_step, start_time = global_step, time.time()
    try:
        while global_step < args.total_timesteps:
            # ALGO LOGIC: act
            if global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            next_obs, infos, autoreset = env_step(envs, rb, obs, actions, autoreset)
            obs = next_obs
            global_step += args.num_envs
            progress.update(args.num_envs)

            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    last_return = float(infos["episode"]["r"][i])
                    episodes_done += 1
                    writer.add_scalar("charts/episodic_return", last_return, global_step)
                    writer.add_scalar("charts/episodic_length", int(infos["episode"]["l"][i]), global_step)

            # ALGO LOGIC: training, one gradient step per env step (an autoreset step, which stores nothing, included)
            if global_step >= args.learning_starts:
                for _ in range(args.num_envs):
                    data = rb.sample(args.batch_size)
                    noise = torch.randn(args.batch_size, act_dim, device=device)  # the actor's sample, drawn on this thread
                    next_noise = torch.randn(args.batch_size, act_dim, device=device)  # the target's, in the next states
                    (qf_loss, qf_mean), (policy_loss, alpha_loss, entropy) = updater(
                        (lambda batch, nets: critic_fn(*batch, *nets, args.gamma), (*data, next_noise), (actor_frozen, qf, qf_target, log_alpha_frozen),
                         [q_optimizer]),
                        (lambda: actor_fn(data[0], noise, actor, qf_frozen, log_alpha, target_entropy), actor_optimizers))
                    polyak_update(qf_target_params, qf_params, args.tau)
                    num_updates += 1
                losses = {"losses/qf_loss": qf_loss, "losses/qf_values": qf_mean, "losses/actor_loss": policy_loss,
                          "losses/alpha": log_alpha.detach().exp(), "losses/entropy": entropy}
                if args.autotune:
                    losses["losses/alpha_loss"] = alpha_loss

            if crossed(global_step, args.log_every, args.num_envs):
                sps = int((global_step - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                for tag, value in (losses or {}).items():  # .item() syncs with the device: only here
                    writer.add_scalar(tag, value.item(), global_step)
                progress.set_postfix(sps=sps, ret=f"{last_return:.1f}", refresh=False)
                writer.flush()  # what a killed run logged is on disk up to here

            done = global_step >= args.total_timesteps
            if crossed(global_step, args.eval_every, args.num_envs) or done:
                video_path = os.path.join(video_dir, f"eval_{global_step}.mp4") if args.capture_video else None
                eval_returns = evaluate(eval_act, eval_env, args.eval_episodes, args.seed + 100_000, video_path)
                writer.add_scalar("eval/return_mean", eval_returns.mean(), global_step)
                writer.add_scalar("eval/return_std", eval_returns.std(), global_step)
                if eval_returns.mean() > best_return:
                    best_return = float(eval_returns.mean())
                    save_checkpoint("best.pt")
            if crossed(global_step, args.checkpoint_every, args.num_envs) or done:
                writer.flush()
                save_checkpoint("latest.pt", with_buffer=True)
            if stop_signal and not done:
                writer.flush()
                save_checkpoint("latest.pt", with_buffer=True)
                progress.close()
                print(f"\nstopped by signal {stop_signal[0]} at step {global_step}; continue with --resume {os.path.join(ckpt_dir, 'latest.pt')}", file=sys.stderr)
                sys.exit(128 + stop_signal[0])
        save_checkpoint("final.pt")
    finally:
        progress.close()
        envs.close()
        eval_env.close()
        writer.close()
        updater.close()
        if args.track:
            import wandb

            wandb.finish()
    print(f"done: {global_step} steps, best evaluation {best_return:.1f}, checkpoints in {ckpt_dir}")


if __name__ == "__main__":
    main()
