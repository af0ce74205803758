"""--precision in the off-policy scripts: which machines get bfloat16 updates, and what stays float32 under them."""
import builtins
import io

import pytest
import torch

import ddpg_continuous as ddpg
import sac_continuous as sac
import td3_continuous as td3

MODULES = [sac, td3, ddpg]
LOW, HIGH = [-1.0, 0.0, 2.0], [3.0, 1.0, 5.0]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("flags, native", [("fpu sse2 avx2 avx512f avx512bw", False), ("fpu avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu avx512f amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16x", False),
                                           ("fp asimd sve bf16 i8mm", True)])
def test_native_bfloat16_follows_the_cpu_flags(module, flags, native, monkeypatch):
    """--precision bfloat16 warns where the CPU would emulate bfloat16."""
    real_open = builtins.open
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(cpuinfo) if path == "/proc/cpuinfo" else real_open(path, *a, **k))
    assert module.native_bfloat16() is native


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_no_native_bfloat16_without_cpuinfo(module, monkeypatch):
    def no_cpuinfo(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    assert module.native_bfloat16() is False


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_bfloat16_hidden_layers_float32_outputs(module):
    """Under the autocast the updates run in, the hidden products are bfloat16 (the outputs move) but every network
    output is float32 and close to the float32 one: Q values and actions keep their precision."""
    torch.manual_seed(0)
    qf = module.QEnsemble(4, 3, (256, 256), num_q=2)
    actor = module.Actor(4, 3, LOW, HIGH, (256, 256))
    obs, actions = torch.randn(64, 4) * 3, torch.rand(64, 3)
    with torch.no_grad():
        q32, out32 = qf(obs, actions), actor(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q16, out16 = qf(obs, actions), actor(obs)
    out32, out16 = (out32, out16) if isinstance(out32, tuple) else ((out32,), (out16,))  # SAC: (mean, log_std)
    for full, half in zip((q32, *out32), (q16, *out16)):
        assert half.dtype == torch.float32
        assert not torch.equal(full, half)  # the hidden layers did run in bfloat16
        torch.testing.assert_close(half, full, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_input_and_output_layers_are_float32_under_bfloat16(module):
    """With one hidden layer there is no hidden-to-hidden product: the input layer (raw observations and actions)
    and the output layers (Q values, actions) are all there is, and under the bfloat16 autocast they give the float32
    result bit for bit."""
    torch.manual_seed(0)
    qf = module.QEnsemble(4, 3, (32,), num_q=2)
    actor = module.Actor(4, 3, LOW, HIGH, (32,))
    with torch.no_grad():
        qf.biases[-1].fill_(1000.3)  # bfloat16 would give 1000
        obs, actions = torch.randn(8, 4) * 30, torch.rand(8, 3)
        q32, out32 = qf(obs, actions), actor(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q16, out16 = qf(obs, actions), actor(obs)
    out32, out16 = (out32, out16) if isinstance(out32, tuple) else ((out32,), (out16,))
    for full, half in zip((q32, *out32), (q16, *out16)):
        assert half.dtype == torch.float32 and torch.equal(full, half)
