"""Every Python block of the README runs, on a tiny checkpoint standing in for the demo's."""

import re
import shutil
from pathlib import Path

import pytest
import soundfile

from tiny_models import voice_like

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, saved_checkpoint, tmp_path, monkeypatch):
    shutil.copytree(saved_checkpoint, tmp_path / "outputs" / "demo" / "final")
    soundfile.write(tmp_path / "question.wav", voice_like(1.5, 1), 16000)
    soundfile.write(tmp_path / "other.flac", voice_like(1.875, 2), 22050)
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
