"""ddpg_continuous.py and td3_continuous.py: their pure pieces against plain references, then the scripts as a user runs them."""
import contextlib
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddpg_continuous as ddpg
import td3_continuous as td3
from conftest import read_scalars, run_script, train_evals

SCRIPTS = ["ddpg_continuous.py", "td3_continuous.py"]
SMALL = ["--batch-size", 64, "--buffer-size", 5000, "--hidden-sizes", 64, 64, "--no-progress-bar"]
LOW, HIGH = [-1.0, 0.0, 2.0], [3.0, 1.0, 5.0]


def plain_mlp(x, layers):
    """Reference forward pass of one critic member: a list of (weight (in, out), bias (out,)), ReLU between."""
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight + bias
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def member(qf, j):
    return [(w[j].detach().numpy(), b[j, 0].detach().numpy()) for w, b in zip(qf.weights, qf.biases)]


def test_td3_target_matches_plain_reference():
    torch.manual_seed(0)
    actor_target = td3.Actor(4, 3, LOW, HIGH, (16,))
    qf_target = td3.QEnsemble(4, 3, (16, 16), num_q=2)
    rewards, terminations = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 1.0, 0.0])
    next_obs, unit_noise = torch.randn(3, 4), torch.randn(3, 3) * 3
    with torch.no_grad():
        next_actions = td3.smoothed_target_actions(actor_target, next_obs, unit_noise, 0.2, 0.5)
        target = td3.td_target(rewards, terminations, qf_target(next_obs, next_actions).min(0).values, 0.99)
    scale, mid = (np.array(HIGH) - np.array(LOW)) / 2, (np.array(HIGH) + np.array(LOW)) / 2
    for i in range(3):
        mu = mid + scale * np.tanh(actor_target.net(next_obs[i]).detach().numpy())
        noise = np.clip(unit_noise[i].numpy() * 0.2, -0.5, 0.5) * scale
        action = np.clip(mu + noise, LOW, HIGH)
        x = np.concatenate([next_obs[i].numpy(), action])
        q = min(plain_mlp(x, member(qf_target, 0))[0], plain_mlp(x, member(qf_target, 1))[0])
        expected = rewards[i].item() + 0.99 * (1 - terminations[i].item()) * q
        assert target[i].item() == pytest.approx(expected, abs=1e-4)


def test_ddpg_target_matches_plain_reference():
    torch.manual_seed(1)
    actor_target = ddpg.Actor(4, 3, LOW, HIGH, (16,))
    qf_target = ddpg.QEnsemble(4, 3, (16, 16), num_q=1)
    rewards, terminations, next_obs = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), torch.randn(2, 4)
    with torch.no_grad():
        target = ddpg.td_target(rewards, terminations, qf_target(next_obs, actor_target(next_obs))[0], 0.9)
    scale, mid = (np.array(HIGH) - np.array(LOW)) / 2, (np.array(HIGH) + np.array(LOW)) / 2
    for i in range(2):
        action = mid + scale * np.tanh(actor_target.net(next_obs[i]).detach().numpy())
        q = plain_mlp(np.concatenate([next_obs[i].numpy(), action]), member(qf_target, 0))[0]
        assert target[i].item() == pytest.approx(rewards[i].item() + 0.9 * (1 - terminations[i].item()) * q, abs=1e-4)
    assert target[1].item() == pytest.approx(3.0)  # terminated: no bootstrap


def test_smoothing_noise_is_clipped_per_dimension():
    actor_target = td3.Actor(2, 3, LOW, HIGH, (8,))
    with torch.no_grad():
        for p in actor_target.net.parameters():
            p.zero_()  # mu(s) = the middle of each dimension: [1, 0.5, 3.5]
    obs = torch.zeros(2, 2)
    huge = torch.tensor([[100.0, 100.0, 100.0], [-100.0, -100.0, -100.0]])
    actions = td3.smoothed_target_actions(actor_target, obs, huge, policy_noise=0.2, noise_clip=0.5)
    # the clip is 0.5 times each dimension's own half-range [2, 0.5, 1.5], not the first dimension's
    torch.testing.assert_close(actions, torch.tensor([[2.0, 0.75, 4.25], [0.0, 0.25, 2.75]]))
    small = torch.tensor([[1.0, -1.0, 0.5]])
    torch.testing.assert_close(td3.smoothed_target_actions(actor_target, obs[:1], small, 0.2, 0.5),
                               torch.tensor([[1.0 + 0.2 * 2.0, 0.5 - 0.2 * 0.5, 3.5 + 0.1 * 1.5]]))


@pytest.mark.parametrize("module", [ddpg, td3])
def test_exploration_noise_stays_within_bounds(module):
    actor = module.Actor(3, 3, LOW, HIGH, (16,), exploration_noise=0.5)
    torch.testing.assert_close(actor.exploration_std, torch.tensor([1.0, 0.25, 0.75]))
    obs = torch.randn(5000, 3) * 5
    actions = actor.act(obs)
    assert (actions >= torch.tensor(LOW)).all() and (actions <= torch.tensor(HIGH)).all()
    assert (actions != actor.act(obs, deterministic=True)).any(1).float().mean() > 0.9  # the noise is there
    torch.testing.assert_close(actor.act(obs, deterministic=True), actor(obs))
    mu = torch.tensor([[2.9, 0.95, 4.9]])
    clipped = module.explore(mu.expand(1000, 3), torch.randn(1000, 3) * 10, actor.exploration_std, actor.action_low, actor.action_high)
    assert (clipped <= torch.tensor(HIGH)).all() and (clipped >= torch.tensor(LOW)).all()
    assert (clipped == torch.tensor(HIGH)).any()


def test_ou_noise_is_correlated_stationary_and_resets():
    torch.manual_seed(0)
    noise = ddpg.OUNoise(num_envs=2, act_dim=1, device=torch.device("cpu"))
    samples = torch.stack([noise.sample().clone() for _ in range(20_000)])[1000:, 0, 0]
    assert 0.8 < samples.std().item() < 1.3
    lag1 = torch.corrcoef(torch.stack([samples[:-1], samples[1:]]))[0, 1].item()
    assert lag1 == pytest.approx(0.85, abs=0.03)  # 1 - theta: temporally correlated, unlike Gaussian noise
    noise.sample()
    noise.reset(np.array([True, False]))
    assert noise.state[0, 0] == 0 and noise.state[1, 0] != 0


@pytest.mark.parametrize("module", [ddpg, td3])
def test_ou_noise_of_each_episode_starts_from_zero(module, tmp_path, monkeypatch):
    """In the training loop, the OU process is at zero when it draws the noise of the first action of each episode,
    not of the ignored action of the autoreset step (which would put the first real action two steps from zero)."""
    zero_before = []

    class Recording(module.OUNoise):
        def sample(self):
            zero_before.append(bool((self.state == 0).all()))
            return super().sample()

    monkeypatch.setattr(module, "OUNoise", Recording)
    argv = ["--env-id", "Pendulum-v1", "--total-timesteps", 450, "--learning-starts", 100, "--noise-type", "ou",
            "--eval-every", 0, "--eval-episodes", 1, "--runs-dir", tmp_path, "--run-name", "ou", *SMALL]
    monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, argv)])
    module.main()
    # Pendulum's episodes are 200 steps: steps 0-199 and 201-400 (0-based), step 200 and 401 are autoresets;
    # the noise starts at step 100 (learning_starts), so its k-th draw is step 100 + k
    assert [k for k, zero in enumerate(zero_before) if zero] == [0, 101, 302]


@pytest.mark.parametrize("module", [ddpg, td3])
def test_actor_update_raises_q(module):
    torch.manual_seed(0)
    actor = module.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (32,))
    qf = module.QEnsemble(3, 2, (32,), num_q=2)
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    obs = torch.randn(64, 3)
    before = qf(obs, actor(obs))[0].mean().item()
    updater = module.Updater(1, contextlib.nullcontext)
    for _ in range(50):
        updater((lambda batch, nets: module.actor_loss(*batch, *nets), (obs,), (actor, qf), [optimizer]))
    assert qf(obs, actor(obs))[0].mean().item() > before
    assert all(p.grad is None for p in qf.parameters())


def critic_half(module, data, nets, optimizers):
    """The critics' half of an Updater call as the script passes it (TD3: the smoothing noise drawn here)."""
    extra = (0.2, 0.5) if module is td3 else ()
    batch = (*data, torch.randn(len(data[0]), data[1].shape[1])) if module is td3 else data
    return (lambda batch, nets: module.critic_loss(*batch, *nets, 0.99, *extra), batch, nets, optimizers)


def deterministic_updates(module, threads, steps=12, every=1, batch=64):
    """`steps` updates of `module` through an Updater with `threads` threads, the actor's every `every`-th (TD3
    delays it: 2); returns every parameter afterwards."""
    torch.manual_seed(0)
    actor, qf = module.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (32, 32)), module.QEnsemble(3, 2, (32, 32), num_q=2)
    actor_target, qf_target = module.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (32, 32)), module.QEnsemble(3, 2, (32, 32), num_q=2)
    q_optimizer, actor_optimizer = torch.optim.Adam(qf.parameters(), lr=1e-2), torch.optim.Adam(actor.parameters(), lr=1e-2)
    obs = torch.randn(batch, 3)
    data = (obs, torch.rand(batch, 2) * 2 - 1, obs.sum(-1), torch.randn(batch, 3), torch.zeros(batch))
    updater, qf_frozen = module.Updater(threads, contextlib.nullcontext), module.frozen(qf)
    try:
        for step in range(steps):
            updater(critic_half(module, data, (actor_target, qf, qf_target), [q_optimizer]),
                    (lambda: module.actor_loss(obs, actor, qf_frozen), [actor_optimizer]) if step % every == every - 1 else None)
            module.polyak_update(list(qf_target.parameters()), list(qf.parameters()), 0.1)
            module.polyak_update(list(actor_target.parameters()), list(actor.parameters()), 0.1)
    finally:
        updater.close()
    return [p.detach().clone() for m in (actor, qf, actor_target, qf_target) for p in m.parameters()]


@pytest.mark.parametrize("module", [ddpg, td3])
def test_two_threads_give_the_one_thread_result_bit_for_bit(module):
    one = deterministic_updates(module, 1)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(one, deterministic_updates(module, 2)))


@pytest.mark.parametrize("module", [ddpg, td3])
def test_split_batches_give_the_one_thread_result_up_to_rounding(module):
    """Updates without an actor half split the critics' batch between the two threads: the same result up to the
    order of a sum, and the same bit for bit from one run to the next."""
    one = deterministic_updates(module, 1, every=2, batch=63)
    two = deterministic_updates(module, 2, every=2, batch=63)
    assert not all(torch.equal(a, b) for a, b in zip(one, two))  # the split ran: rounding differs
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(two, deterministic_updates(module, 2, every=2, batch=63)))


@pytest.mark.parametrize("module", [ddpg, td3])
@pytest.mark.parametrize("batch", [32, 33])
def test_a_split_batch_steps_by_the_whole_batch_gradient(module, batch):
    """SGD with lr 1: the critic's step is minus the gradient of the loss of the whole batch, computed by hand, and
    the metrics are the whole batch's, for an even batch and an odd one (shares 17/33 and 16/33)."""
    torch.manual_seed(0)
    actor, qf = module.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (16,)), module.QEnsemble(3, 2, (16, 16), num_q=2)
    qf_target = copy.deepcopy(qf)
    obs = torch.randn(batch, 3)
    data = (obs, torch.rand(batch, 2) * 2 - 1, obs.sum(-1), torch.randn(batch, 3), torch.zeros(batch))
    q = copy.deepcopy(qf)
    updater = module.Updater(2, contextlib.nullcontext)
    torch.manual_seed(1)
    metrics, actor_metrics = updater(critic_half(module, data, (actor, q, qf_target), [torch.optim.SGD(q.parameters(), lr=1.0)]))
    updater.close()
    torch.manual_seed(1)
    loss_of, whole, nets, _ = critic_half(module, data, (actor, qf, qf_target), [])
    loss, expected = loss_of(whole, nets)
    grads = torch.autograd.grad(loss, list(qf.parameters()))
    assert actor_metrics is None
    for after, before, grad in zip(q.parameters(), qf.parameters(), grads):
        torch.testing.assert_close(after - before, -grad)
    for value, reference in zip(metrics, expected):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize("failing", ["first", "second", "both"])
def test_an_error_in_either_part_of_a_split_batch_is_raised(failing):
    """The first part (10 rows of 19) runs on this thread, the second (9) on the worker; where both fail, this
    thread's error is the one raised. Afterwards the same Updater steps by the gradient again."""
    qf = td3.QEnsemble(3, 2, (8,), num_q=2)
    updater = td3.Updater(2, contextlib.nullcontext)
    batch = (torch.randn(19, 3), torch.randn(19, 2))

    def loss_of(batch, nets):
        part = "first" if len(batch[0]) == 10 else "second"
        if failing in (part, "both"):
            raise RuntimeError(f"{part} part failed")
        return nets[0](*batch).sum(), ()

    with pytest.raises(RuntimeError, match=f"{'first' if failing == 'both' else failing} part failed"):
        updater((loss_of, batch, (qf,), [torch.optim.SGD(qf.parameters(), lr=0.1)]))
    before = [p.detach().clone() for p in qf.parameters()]
    grads = torch.autograd.grad(qf(*batch).sum() / 19, list(qf.parameters()))
    updater((lambda batch, nets: (nets[0](*batch).sum() / len(batch[0]), ()), batch, (qf,), [torch.optim.SGD(qf.parameters(), lr=1.0)]))
    updater.close()
    for after, old, grad in zip(qf.parameters(), before, grads):
        torch.testing.assert_close(after - old, -grad)


def test_a_split_batch_follows_networks_built_anew():
    """Copies for the second thread are kept per set of networks; networks built anew (whose ids Python may reuse
    for garbage-collected ones) must get copies of their own, not another network's."""
    updater = td3.Updater(2, contextlib.nullcontext)
    batch = (torch.randn(8, 3), torch.randn(8, 2))
    try:
        for _ in range(30):
            qf = td3.QEnsemble(3, 2, (8,), num_q=2)
            before = [p.detach().clone() for p in qf.parameters()]
            grads = torch.autograd.grad(qf(*batch).mean(1).sum(), list(qf.parameters()))
            updater((lambda batch, nets: (nets[0](*batch).mean(1).sum(), ()), batch, (qf,), [torch.optim.SGD(qf.parameters(), lr=1.0)]))
            for after, old, grad in zip(qf.parameters(), before, grads):
                torch.testing.assert_close(after - old, -grad)
    finally:
        updater.close()


@pytest.mark.parametrize("module", [ddpg, td3])
def test_many_two_thread_updates_do_not_deadlock(module):
    """Each thread on tensors of its own (frozen): with the actor's half indexing the critic's own parameters while the
    critic's half records gradient edges to them, this hung within a few hundred updates (holding the GIL: hence a
    separate process)."""
    code = (f"import sys; sys.path[:0] = [{os.path.dirname(__file__)!r}]; import test_ddpg_td3 as t; "
            f"t.deterministic_updates(t.{module.__name__.split('_')[0]}, 2, steps=1500, every=2)")
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("1500 two-thread updates did not finish in 120 s: deadlock")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("module", [ddpg, td3])
def test_the_actor_steps_through_the_critic_of_before_the_update(module):
    """A simultaneous update: the actor's gradient goes through the critic as it was before this update's critic
    step (SGD, lr 1: the step is minus the gradient, computed by hand on copies)."""
    torch.manual_seed(0)
    actor, qf = module.Actor(3, 2, [-1.0, -1.0], [1.0, 1.0], (16,)), module.QEnsemble(3, 2, (16, 16), num_q=2)
    obs = torch.randn(32, 3)
    data = (obs, torch.rand(32, 2) * 2 - 1, obs.sum(-1), torch.randn(32, 3), torch.zeros(32))
    grads = torch.autograd.grad(module.actor_loss(obs, actor, qf)[0], list(actor.parameters()))
    for threads in (1, 2):
        a, q = copy.deepcopy(actor), copy.deepcopy(qf)
        updater = module.Updater(threads, contextlib.nullcontext)
        q_frozen = module.frozen(q)
        updater(critic_half(module, data, (actor, q, qf), [torch.optim.SGD(q.parameters(), lr=1.0)]),
                (lambda: module.actor_loss(obs, a, q_frozen), [torch.optim.SGD(a.parameters(), lr=1.0)]))
        updater.close()
        assert not all(torch.equal(x, y) for x, y in zip(q.parameters(), qf.parameters()))  # the critic did step
        for after, before, grad in zip(a.parameters(), actor.parameters(), grads):
            torch.testing.assert_close(after - before, -grad)


def test_first_member_alone_matches_the_ensemble():
    """TD3's actor loss evaluates only the first critic: same values and action gradients as the full ensemble's first row."""
    torch.manual_seed(0)
    qf = td3.QEnsemble(3, 2, (16, 8), num_q=2)
    obs = torch.randn(10, 3)
    actions = torch.randn(10, 2, requires_grad=True)
    full = qf(obs, actions, detach_params=True)
    (full_grad,) = torch.autograd.grad(full[0].sum(), actions, retain_graph=True)
    first = qf(obs, actions, detach_params=True, members=1)
    assert first.shape == (1, 10)
    torch.testing.assert_close(first[0], full[0])
    (first_grad,) = torch.autograd.grad(first[0].sum(), actions)
    torch.testing.assert_close(first_grad, full_grad)
    (second_grad,) = torch.autograd.grad(full[1].sum(), actions)
    assert not torch.allclose(first_grad, second_grad)  # the first member, not the second


@pytest.fixture(scope="module", params=SCRIPTS)
def smoke_run(request, tmp_path_factory):
    """A short Pendulum run with --policy-frequency 3, which divides neither the log interval nor the steps."""
    cwd = tmp_path_factory.mktemp(request.param.split("_")[0])
    result = run_script(request.param, "--env-id", "Pendulum-v1", "--total-timesteps", 1000, "--learning-starts", 250,
                        "--policy-frequency", 3, "--eval-every", 500, "--eval-episodes", 2, "--log-every", 100,
                        "--checkpoint-every", 500, "--run-name", "smoke", *SMALL, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return request.param, cwd / "runs" / "smoke"


def test_smoke_logs_every_loss_and_checkpoints(smoke_run):
    script, run = smoke_run
    scalars = read_scalars(str(run))
    assert {"charts/episodic_return", "charts/SPS", "losses/qf_loss", "losses/actor_loss", "eval/return_mean", "eval/return_std"} <= set(scalars)
    expected = list(range(300, 1001, 100))
    assert [step for step, _ in scalars["losses/qf_loss"]] == expected
    assert [step for step, _ in scalars["losses/actor_loss"]] == expected  # CleanRL's crashes here
    ckpt = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert ckpt["algo"] == script[:-3] and ckpt["global_step"] == 1000 and ckpt["obs_rms"] is None
    assert ckpt["resume_state"]["num_updates"] == 1000 - 250 + 1
    assert {"latest.pt", "best.pt", "buffer_1000.pt"} <= set(os.listdir(run / "checkpoints"))


def test_enjoy_replays_ddpg_and_td3(smoke_run, tmp_path):
    script, run = smoke_run
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    result = run_script("enjoy.py", run, "--episodes", 2, "--seed", 100_001, "--video", tmp_path / "out.mp4", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{script[:-3]} on Pendulum-v1" in result.stdout and os.path.getsize(tmp_path / "out.mp4") > 10_000
    mean = float(result.stdout.split("mean return ")[1].split(" ")[0])
    assert mean == pytest.approx(best["resume_state"]["best_return"], abs=0.01)  # no exploration noise in the replay
    noisy = run_script("enjoy.py", run, "--episodes", 2, "--seed", 100_001, "--stochastic", cwd=tmp_path, timeout=300)
    assert noisy.returncode == 0 and float(noisy.stdout.split("mean return ")[1].split(" ")[0]) != mean


def test_ddpg_ou_noise_run(tmp_path):
    result = run_script("ddpg_continuous.py", "--env-id", "Pendulum-v1", "--total-timesteps", 500, "--learning-starts", 200,
                        "--noise-type", "ou", "--eval-episodes", 1, "--log-every", 100, "--run-name", "ou", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [step for step, _ in read_scalars(str(tmp_path / "runs" / "ou"))["losses/actor_loss"]] == [200, 300, 400, 500]


@pytest.mark.parametrize("script", SCRIPTS)
def test_learns_pendulum_within_15k_steps(script, tmp_path):
    evals = train_evals(script, tmp_path, "--env-id", "Pendulum-v1", "--total-timesteps", 15_000, "--learning-starts", 1000,
                        "--eval-every", 5000, "--eval-episodes", 10, "--seed", 1,
                        "--hidden-sizes", 64, 64)  # 256-wide (the default) learns it too, at twice the suite time
    assert evals[-1][0] == 15_000
    assert evals[-1][1] >= -250, evals


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input(script, tmp_path):
    for args, message in [(["--exploration-noise", -0.1], "--exploration-noise must be >= 0"),
                          (["--policy-frequency", 0], "--policy-frequency must be positive"),
                          (["--env-id", "CartPole-v1"], "is not a Box")]:
        result = run_script(script, *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


@pytest.mark.parametrize("script", ["sac_continuous.py", *SCRIPTS])
def test_compile_path_trains(script, tmp_path):
    """--compile puts the updates through torch.compile (inductor on the CPU): the run trains, logs and saves."""
    result = run_script(script, "--env-id", "Pendulum-v1", "--total-timesteps", 400, "--learning-starts", 200, "--eval-episodes", 1,
                        "--log-every", 100, "--compile", "--run-name", "compiled", *SMALL, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = read_scalars(str(tmp_path / "runs" / "compiled"))["losses/qf_loss"]
    assert [step for step, _ in losses] == [200, 300, 400] and all(np.isfinite(value) for _, value in losses)
