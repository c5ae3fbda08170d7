"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_exactly_two_commands() -> None:
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(section)
    assert len(blocks) == 2, blocks
    assert all("\n" not in b for b in blocks), "each command must be one line"
    assert "sbikit run" in blocks[0]
    assert "pytest" in blocks[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1]
    test_command = _bash_blocks(section)[1]
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_main_job_config_exists_and_torch_is_pinned_first() -> None:
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1]
    main = _bash_blocks(section)[0]
    config = re.search(r"sbikit run (\S+)", main).group(1)
    assert (ROOT / config).is_file()
    for cmd in _bash_blocks(section):
        assert cmd.index("pip install torch==2.13.0") < cmd.index("pip install -e")


def test_pyproject_torch_range_admits_2_13_0() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("torch"))
    from packaging.specifiers import SpecifierSet

    assert "2.13.0" in SpecifierSet(spec[len("torch") :])
