"""napari_neurt.io.atomic: whole files or none, with the permissions of a plain write."""

from __future__ import annotations

import os

import pytest

from napari_neurt.io.atomic import atomic_path


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stopped halfway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_new_file_gets_plain_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    previous = os.umask(0o022)
    try:
        new = tmp_path / "new.txt"
        with atomic_path(new) as tmp:
            tmp.write_text("x")
        assert new.stat().st_mode & 0o777 == 0o644  # not the 0o600 of a temporary file
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        with atomic_path(kept) as tmp:
            tmp.write_text("new")
        assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)


def test_a_file_its_writer_makes_anew_still_gets_plain_permissions(tmp_path):
    import torch

    from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint

    previous = os.umask(0o022)
    try:
        new = tmp_path / "new.txt"
        with atomic_path(new) as tmp:
            tmp.unlink()  # as safetensors' save_file does: a file of its own, owner-only
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        assert new.stat().st_mode & 0o777 == 0o644
        torch.manual_seed(0)
        config = NeurtConfig(seq_len=16, n_embd=8, n_head=2, n_layer=1, n_ff=16)
        folder = save_checkpoint(tmp_path / "model", Neurt(config))
        assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
            "config.json": 0o644,
            "model.safetensors": 0o644,  # a colleague can load the model too
        }
    finally:
        os.umask(previous)


def test_files_written_together_get_plain_permissions_and_all_or_none_land(tmp_path):
    from napari_neurt.io.atomic import atomic_files

    previous = os.umask(0o022)
    try:
        paths = [tmp_path / "results.csv", tmp_path / "results.traces.csv"]
        with atomic_files(paths) as temps:
            for temp in temps:
                temp.write_text("x")
        assert [p.stat().st_mode & 0o777 for p in paths] == [0o644, 0o644]
        with pytest.raises(RuntimeError), atomic_files(paths) as temps:
            temps[0].write_text("new")
            raise RuntimeError("the second file failed")
        assert [p.read_text() for p in paths] == ["x", "x"]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    finally:
        os.umask(previous)


def test_new_file_permissions_do_not_touch_the_process_umask(tmp_path, monkeypatch):
    # Reading the umask means setting it to 0 for a moment: a file another thread (a napari
    # worker) created meanwhile would be world-writable. The kernel applies it instead.
    previous = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        target = tmp_path / "new.txt"
        with atomic_path(target) as tmp:
            tmp.write_text("x")
        assert target.stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(previous)
