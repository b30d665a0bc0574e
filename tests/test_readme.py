"""Every `cnnlab` command line the docs show composes as written (`--cfg job`), so examples cannot rot."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/style.md", "pipelines/README.md")


def commands() -> list[str]:
    """Lines of the docs' code blocks that run cnnlab, without comments, prompts or `...` placeholders."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), re.S):
            for line in block.splitlines():
                line = re.sub(r"\s+#.*$", "", line)
                if m := re.search(r"(?:^|\s)(cnnlab\s+\w+.*)$", line.replace("$(which cnnlab)", "cnnlab")):
                    out.append(m.group(1))
    return out


def test_the_docs_show_commands():
    assert len(commands()) > 30


@pytest.mark.parametrize("line", commands())
def test_command_line_composes(line, monkeypatch, capsys):
    """In-process, as `cnnlab <line> --cfg job` would run: a process per line cost 4 s of imports each."""
    from cnnlab import cli

    args = [a for a in shlex.split(line)[1:] if a != "..." and not a.endswith("=...")]
    if "-m" in args:  # Hydra prints one job's config: the first value of each swept key
        args = [re.sub(r"=([^\[,]+),.*", r"=\1", a) for a in args if a != "-m"]
    monkeypatch.setattr(sys, "argv", ["cnnlab", *args])  # the CLI hands sys.argv to Hydra
    try:
        cli.main([*args, "--cfg", "job"])
    except SystemExit as e:  # a refusal: exit 2 and its one line on stderr
        pytest.fail(f"{line}: exit {e.code}: {capsys.readouterr().err.strip()}")
    assert "_target_" in capsys.readouterr().out  # the composed config was printed
