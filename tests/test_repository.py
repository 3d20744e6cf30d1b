"""The repository keeps its promises: the README's test command is what CI runs, and the core
never imports Qt or napari."""

import os
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


def test_demo_without_a_qt_binding_says_how_to_install_one():
    """`pip install napari-neurt` brings napari but no Qt binding: `neurt demo` then says what to
    install, instead of qtpy's bare "No Qt bindings could be found"."""
    code = (
        "import sys, importlib.abc\n"
        "class NoQt(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'PyQt6', 'PyQt5', 'PySide6', 'PySide2'}:\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, NoQt())\n"
        "from napari_neurt.cli import main\n"
        "sys.exit(main(['demo', '--screenshot', 'unused.png']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QT_API"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            check=False)  # its exit status is asserted below
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'pip install "napari[pyqt6]"' in result.stderr, result.stderr
