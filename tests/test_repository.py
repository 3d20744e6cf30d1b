"""The repository keeps its promises: the README's test command is what CI runs, and the core
never imports Qt or napari."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_two_commands_and_ci_runs_the_test_one_verbatim():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    assert "neurt demo" in main and "pytest" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_core_modules_import_neither_qt_nor_napari():
    code = (
        "import sys, napari_neurt, napari_neurt.io, napari_neurt.extraction, napari_neurt.simulate\n"
        "import napari_neurt.plugin.readers, napari_neurt.plugin.samples\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui'})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
