"""The layout every algorithm script shares: the algorithm above one banner line, the plumbing below it, identical byte
for byte in every script, so that a diff between two scripts shows only the algorithm."""

import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*_continuous.py")))
BANNER = "# ---- shared plumbing: identical in every script below this line ----\n"
# names the two families may define differently below the banner: none (the plumbing serves both unchanged)
ALLOWED_TO_DIFFER: set = set()


def read(script: str) -> str:
    with open(os.path.join(ROOT, script)) as f:
        return f.read()


def plumbing(script: str) -> str:
    text = read(script)
    assert text.count(BANNER) == 1, f"{script}: the banner line must appear exactly once"
    return text[text.index(BANNER) :]


def test_every_algorithm_script_is_there():
    assert {
        "sac_continuous.py",
        "td3_continuous.py",
        "ddpg_continuous.py",
        "ppo_continuous.py",
        "a2c_continuous.py",
    } <= set(SCRIPTS)


def test_everything_below_the_banner_is_identical_in_every_script():
    first = plumbing(SCRIPTS[0])
    for script in SCRIPTS[1:]:
        if plumbing(script) != first:
            ours = {n.name: ast.unparse(n) for n in ast.parse(plumbing(script)).body if hasattr(n, "name")}
            theirs = {n.name: ast.unparse(n) for n in ast.parse(first).body if hasattr(n, "name")}
            differ = sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))
            assert set(differ) <= ALLOWED_TO_DIFFER, f"{script} and {SCRIPTS[0]} differ below the banner in {differ}"
            pytest.fail(f"{script} and {SCRIPTS[0]} differ below the banner (comments or blank lines)")


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_algorithm_reads_top_down_within_the_budgets(script):
    """One-line docstring, Args first, main() above the banner and within 120 lines, the banner within 400 lines,
    700 lines in all, none over 120 characters; the script imports no other file of the project."""
    text = read(script)
    lines = text.splitlines()
    tree = ast.parse(text)
    assert ast.get_docstring(tree) and "\n" not in ast.get_docstring(tree)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes[0] == "Args"
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    banner_line = lines.index(BANNER.rstrip("\n")) + 1
    assert main.end_lineno < banner_line <= 400
    assert main.end_lineno - main.lineno + 1 <= 120
    assert len(lines) <= 700 and max(map(len, lines)) <= 120
    own = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & own, f"{script} imports {imported & own}"
