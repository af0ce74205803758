"""The plumbing the scripts share is identical line for line, so that a diff between two scripts shows only the algorithm."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFF_POLICY = ["sac_continuous.py", "td3_continuous.py", "ddpg_continuous.py"]
ON_POLICY = ["ppo_continuous.py", "a2c_continuous.py"]


def section(script: str, start: str, end: str) -> str:
    with open(os.path.join(ROOT, script)) as f:
        text = f.read()
    assert text.count(start) == 1 and text.count(end) >= 1, f"{script}: cannot find {start!r} ... {end!r}"
    begin = text.index(start)
    return text[begin:text.index(end, begin)]


@pytest.mark.parametrize("start, end, groups", [
    ("def frozen(module", "# checkpoints and evaluation", [OFF_POLICY]),  # frozen copies and the Updater
    ("# checkpoints and evaluation", "def main()", [OFF_POLICY, ON_POLICY]),  # load_policy builds Actor or Agent
])
def test_shared_sections_are_identical(start, end, groups):
    for group in groups:
        first = section(group[0], start, end)
        for script in group[1:]:
            assert section(script, start, end) == first, f"{script} differs from {group[0]} in {start!r} ... {end!r}"
