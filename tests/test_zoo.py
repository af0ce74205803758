"""Every agent in zoo/ replays on a fresh clone with the return zoo/README.md lists for it."""

import os

import pytest
from conftest import ROOT, run_script


def listed_agents():
    """(file, first-episode return) of each row of zoo/README.md's table."""
    rows = []
    with open(os.path.join(ROOT, "zoo", "README.md")) as f:
        for line in f:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) == 8 and cells[0].startswith("`") and cells[0].endswith(".pt`"):
                rows.append((cells[0].strip("`"), float(cells[6])))
    return rows


def test_every_zoo_file_is_listed_and_every_listed_file_exists():
    files = {name for name in os.listdir(os.path.join(ROOT, "zoo")) if name.endswith(".pt")}
    assert files and files == {name for name, _ in listed_agents()}


@pytest.mark.parametrize("name, first_episode", listed_agents())
def test_a_zoo_agent_replays_its_listed_return(tmp_path, name, first_episode):
    result = run_script("enjoy.py", os.path.join(ROOT, "zoo", name), "--episodes", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    replayed = float(result.stdout.split("episode 1: return ")[1].split(",")[0])
    assert replayed == pytest.approx(first_episode, rel=0.05)  # zoo/README.md says why 5%


def test_a_small_gif_of_a_fast_task_keeps_every_fifth_frame(tmp_path):
    """Hopper renders at 125 frames a second; browsers play GIF frames under 20 ms at 100 ms, so enjoy.py keeps every
    fifth frame (40 ms each) and --video-scale shrinks them (README's gallery)."""
    from PIL import Image

    out = tmp_path / "hopper.gif"
    argv = ["--episodes", 1, "--max-steps", 50, "--video-scale", 0.25, "--video", out]
    result = run_script("enjoy.py", os.path.join(ROOT, "zoo", "ppo_Hopper-v4_1M_seed1.pt"), *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(10 frames)" in result.stdout
    gif = Image.open(out)
    assert gif.size == (120, 120) and gif.n_frames == 10 and gif.info["duration"] == 40
