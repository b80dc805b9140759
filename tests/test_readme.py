"""Every command of README's tour runs, as written, through the installed ``miga`` console script."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_commands() -> list[str]:
    section = README.read_text().split("## A one-minute tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("   #")[0].strip() for line in block.splitlines() if line.startswith("miga ")]


def test_readme_tour_runs_as_written(tmp_path):
    miga = shutil.which("miga")
    assert miga, "the project must be installed (pip install -e .) so `miga` is on PATH"
    commands = tour_commands()
    assert len(commands) == 6
    outputs = []
    for command in commands:
        argv = [miga, *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        outputs.append(done.stdout)
    first, again = outputs[0].strip(), outputs[1].strip()
    assert first == again and (tmp_path / first).is_file()
    assert json.loads(outputs[3])["status"] == "done"
    assert "subject_consistency" in json.loads(outputs[4])["vbench"]
    assert (tmp_path / "calls.jsonl").stat().st_size > 0
    assert "model calls per output latent" in outputs[5]
