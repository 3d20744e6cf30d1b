"""The documentation keeps up with the code: every page is reachable, every command documented,
every picture present and small. (`mkdocs build --strict` itself runs in .ci/run.)"""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def cli_hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "_hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_page_is_in_the_nav_and_every_nav_entry_exists(config):
    nav = nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice"
    pages = {p.relative_to(DOCS).as_posix() for p in doc_pages()}
    assert sorted(pages - set(nav)) == [], "pages missing from the nav in mkdocs.yml"
    assert sorted(set(nav) - pages) == [], "nav entries without a page"


def test_every_cli_subcommand_is_in_the_reference_and_in_the_guides():
    from napari_neurt.cli import build_parser

    hook = cli_hook()
    names = [name for name, _, _ in hook.subcommands(build_parser())]
    assert {"demo", "reconstruct", "classify", "pretrain", "finetune", "import-weights"} <= set(names)
    reference = hook.cli_reference()
    guides = "\n".join(p.read_text() for p in doc_pages())
    for name in names:
        assert f"## `neurt {name}`" in reference
        assert f"neurt {name}" in guides, f"no page explains `neurt {name}`"
    # every option of every command is in the generated tables
    for _, _, sub in hook.subcommands(build_parser()):
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in reference, option
    assert hook.MARKER in (DOCS / "reference" / "cli.md").read_text()


def test_pictures_exist_are_small_and_come_from_the_script():
    script = (ROOT / "scripts" / "make_screenshots.py").read_text()
    texts = [p.read_text() for p in doc_pages()] + [(ROOT / "README.md").read_text()]
    used = {Path(m).name for t in texts for m in re.findall(r"images/([\w.-]+\.png)", t)}
    assert used, "no screenshots are used"
    for name in sorted(used):
        path = DOCS / "images" / name
        assert path.is_file(), f"docs/images/{name} is used but missing"
        assert path.stat().st_size < 300 * 1024, f"docs/images/{name} is over 300 KB"
        assert f'"{name}"' in script, f"{name} is not made by scripts/make_screenshots.py"


def test_readme_links_point_at_files():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?:docs/)[^)#]+)", readme)
    assert any(t.endswith(".png") for t in targets), "the README shows no screenshot"
    for target in targets:
        assert (ROOT / target).exists(), target
    assert "early development" not in readme


def test_docs_mention_the_real_environment_variables():
    from napari_neurt.model.published import CACHE_DIR_ENV, WEIGHTS_DIR_ENV

    troubleshooting = (DOCS / "troubleshooting.md").read_text()
    assert WEIGHTS_DIR_ENV in troubleshooting and CACHE_DIR_ENV in troubleshooting


def test_the_site_builds_strictly(tmp_path):
    """What .ci/run does after the tests; here too where the docs extra is installed, so that a
    docstring mkdocstrings cannot render shows up in the test run of whoever wrote it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
