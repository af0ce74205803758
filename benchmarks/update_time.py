"""Milliseconds per gradient update of sac_continuous.py, td3_continuous.py or ddpg_continuous.py, in-process, for
one or more versions of the script, interleaved so that the machine's drift hits them alike.

    python benchmarks/update_time.py sac_continuous.py /tmp/sac_before.py   # e.g. git show HEAD~1:sac_continuous.py > /tmp/sac_before.py

One update is what the training loop does per environment step after learning starts, at the script's default
hyperparameters for HalfCheetah's sizes (17 observations, 6 actions): sample a batch, update the critics, then the
actor (SAC: and the temperature; TD3: every policy_frequency-th step, with the polyak updates), polyak-average the
targets. The replay buffer holds 100k random transitions. One torch thread. Reports the minimum and the median over
`--blocks` blocks of `--updates` updates per version (the minimum is the least disturbed by other load), and the
median over blocks of each version's time divided by the first version's in the same round, which drift moves least."""
import argparse
import contextlib
import copy
import importlib.util
import os
import statistics
import time

import numpy as np
import torch


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_update(module, compile: bool = False, threads: int = 1, obs_dim: int = 17, act_dim: int = 6):
    """A closure that runs one update of the script `module` at its default arguments (compile: the loss functions
    through torch.compile, as the script's --compile does; threads: its --update-threads, for versions that have it)."""
    args = module.Args()
    torch.manual_seed(0)
    kind = "sac" if hasattr(args, "alpha") else "td3" if hasattr(args, "policy_noise") else "ddpg"  # from the Args, whatever the file's name
    qf = module.QEnsemble(obs_dim, act_dim, args.hidden_sizes, num_q=1 if kind == "ddpg" else 2)
    qf_target = copy.deepcopy(qf)
    actor = module.Actor(obs_dim, act_dim, [-1.0] * act_dim, [1.0] * act_dim, args.hidden_sizes)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, fused=True)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    rb = module.ReplayBuffer(args.buffer_size, obs_dim, act_dim, torch.device("cpu"))
    n = 100_000
    rb.add(np.random.randn(n, obs_dim), np.random.uniform(-1, 1, (n, act_dim)), np.random.randn(n), np.random.randn(n, obs_dim), np.zeros(n))
    qf_params, qf_target_params = list(qf.parameters()), list(qf_target.parameters())
    actor_target = copy.deepcopy(actor)
    actor_params, actor_target_params = list(actor.parameters()), list(actor_target.parameters())
    extra = (args.policy_noise, args.noise_clip) if kind == "td3" else ()
    log_alpha = torch.nn.Parameter(torch.tensor(0.0))
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr, fused=True) if kind == "sac" else None
    count = [0]

    if not hasattr(module, "Updater"):  # versions before the simultaneous update: update functions that step
        update_critic, update_actor = (torch.compile(f) for f in (module.update_critic, module.update_actor)) if compile else (module.update_critic, module.update_actor)

        def update():
            data = rb.sample(args.batch_size)
            if kind == "sac":
                update_critic(*data, actor, qf, qf_target, q_optimizer, log_alpha, args.gamma)
                update_actor(data[0], actor, qf, actor_optimizer, log_alpha, alpha_optimizer, -float(act_dim))
                module.polyak_update(qf_target_params, qf_params, args.tau)
                return
            update_critic(*data, actor_target, qf, qf_target, q_optimizer, args.gamma, *extra)
            count[0] += 1
            if count[0] % args.policy_frequency == 0:
                update_actor(data[0], actor, qf, actor_optimizer)
                module.polyak_update(actor_target_params, actor_params, args.tau)
                module.polyak_update(qf_target_params, qf_params, args.tau)
        return update

    critic_loss, actor_loss = (torch.compile(f) for f in (module.critic_loss, module.actor_loss)) if compile else (module.critic_loss, module.actor_loss)
    updater = module.Updater(threads, contextlib.nullcontext)
    # as the scripts do: each half reads the other's networks through frozen copies (threads must not share tensors)
    actor_frozen, qf_frozen, log_alpha_frozen = module.frozen(actor), module.frozen(qf), log_alpha.detach()

    split_api = hasattr(module.Updater, "split")  # the critics' half as (loss of (batch, nets), batch, nets, optimizers)

    def critic_half(batch, nets, optimizers, *constants):
        if split_api:
            return (lambda batch, nets: critic_loss(*batch, *nets, *constants), batch, nets, optimizers)
        if kind != "ddpg":  # versions before the noise was drawn outside the loss
            batch = batch[:-1]
        return (lambda: critic_loss(*batch, *nets, *constants), optimizers)

    def update():
        data = rb.sample(args.batch_size)
        if kind == "sac":
            noise = torch.randn(args.batch_size, act_dim)
            next_noise = torch.randn(args.batch_size, act_dim)
            updater(critic_half((*data, next_noise), (actor_frozen, qf, qf_target, log_alpha_frozen), [q_optimizer], args.gamma),
                    (lambda: actor_loss(data[0], noise, actor, qf_frozen, log_alpha, -float(act_dim)), [actor_optimizer, alpha_optimizer]))
            module.polyak_update(qf_target_params, qf_params, args.tau)
            return
        if kind == "td3":
            data = (*data, torch.randn(args.batch_size, act_dim))
        count[0] += 1
        due = count[0] % args.policy_frequency == 0
        updater(critic_half(data, (actor_target, qf, qf_target), [q_optimizer], args.gamma, *extra),
                (lambda: actor_loss(data[0], actor, qf_frozen), [actor_optimizer]) if due else None)
        if due:
            module.polyak_update(actor_target_params, actor_params, args.tau)
            module.polyak_update(qf_target_params, qf_params, args.tau)
    return update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="+", help="versions of one script (paths)")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also time each version with its update functions through torch.compile")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="--update-threads to time, for versions that have it (e.g. 1 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    modules = {path: load(os.path.abspath(path), f"version{i}") for i, path in enumerate(args.scripts)}
    updates = {}
    for path, module in modules.items():
        for threads in args.threads if hasattr(module, "Updater") else [1]:
            updates[path if threads == 1 else f"{path} ({threads} threads)"] = make_update(module, threads=threads)
    if args.compile:
        updates.update({f"{path} (compiled)": make_update(module, compile=True) for path, module in modules.items()})
    times = {path: [] for path in updates}
    for update in updates.values():  # warm-up
        for _ in range(20):
            update()
    for _ in range(args.blocks):
        for path, update in updates.items():
            start = time.perf_counter()
            for _ in range(args.updates):
                update()
            times[path].append((time.perf_counter() - start) / args.updates * 1e3)
    first = next(iter(times.values()))
    for path, values in times.items():
        # each block ran right after the first version's: their ratio is the least affected by the machine's drift
        ratio = statistics.median(value / base for value, base in zip(values, first))
        print(f"{path}: {min(values):.2f} ms per update (min of {args.blocks} blocks of {args.updates}), median {statistics.median(values):.2f}, "
              f"median ratio to the first {ratio:.3f}")


if __name__ == "__main__":
    main()
