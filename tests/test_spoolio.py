"""The spool writer's native file system calls (mmgate/mailman/_spoolio.c)
against their Python reference in mmgate/mailman/spool.py: the same files
on disk and the same errno for every file, written or failing."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mmgate.mailman import spool
from tests.harness import can_build_native


def test_the_native_spool_calls_are_built_wherever_they_can_be():
    """Where a C compiler and Python's headers are, the install built them,
    so the comparisons below run and are not skipped unseen."""
    if not can_build_native():
        pytest.skip("no C compiler or no Python headers: the Python calls are the ones")
    assert spool._spoolio is not None


native = pytest.mark.skipif(spool._spoolio is None, reason="the native calls were not built")


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root: a file's content, None for a directory."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def _write_case(root: Path) -> list[tuple[str, list[bytes | bytearray | memoryview]]]:
    (root / "q").mkdir()
    (root / "q" / "a-directory").mkdir()
    (root / "q" / "old").write_bytes(b"longer text that truncation must remove")
    return [
        (str(root / "q" / "one.pck.tmp"), [b"pickled message", b"pickled metadata"]),
        (str(root / "q" / "empty"), []),
        (str(root / "q" / "old"), [b"short"]),
        (str(root / "q" / "views"), [memoryview(b"x" * 70000), bytearray(b"y" * 3), b""]),
        (str(root / "missing" / "file"), [b"lost"]),
        (str(root / "q" / "a-directory"), [b"refused"]),
        (str(root / "q" / "na\u00efve"), [b"a non-ASCII name"]),
    ]


@native
@pytest.mark.parametrize("fsync", [False, True])
def test_native_and_python_writes_leave_the_same_files_and_errors(tmp_path: Path, fsync: bool):
    results = {}
    for name, write in (("native", spool._spoolio.write_files), ("python", spool.py_write_files)):
        root = tmp_path / name
        root.mkdir()
        errors = write(_write_case(root), fsync)
        results[name] = (errors, _tree(root))
    assert results["native"] == results["python"]
    errors, tree = results["python"]
    assert errors == [0, 0, 0, 0, errno.ENOENT, errno.EISDIR, 0]
    assert tree["q/old"] == b"short"
    assert tree["q/views"] == b"x" * 70000 + b"yyy"


@native
def test_native_and_python_renames_do_the_same_and_say_why_one_failed(tmp_path: Path):
    results = {}
    calls: dict[str, Callable[..., list[int]]] = {
        "native": spool._spoolio.rename_files,
        "python": spool.py_rename_files,
    }
    for name, rename in calls.items():
        root = tmp_path / name
        (root / "q").mkdir(parents=True)
        (root / "q" / "a.tmp").write_bytes(b"a")
        (root / "q" / "b.tmp").write_bytes(b"b")
        (root / "q" / "full").mkdir()
        (root / "q" / "full" / "x").write_bytes(b"x")
        errors = rename(
            [
                (str(root / "q" / "a.tmp"), str(root / "q" / "a")),
                (str(root / "q" / "gone.tmp"), str(root / "q" / "gone")),
                (str(root / "q" / "b.tmp"), str(root / "q" / "full")),
            ]
        )
        results[name] = (errors, _tree(root))
    assert results["native"] == results["python"]
    errors, tree = results["python"]
    assert errors[:2] == [0, errno.ENOENT] and errors[2] in (errno.EISDIR, errno.ENOTEMPTY)
    assert tree["q/a"] == b"a" and "q/b.tmp" in tree


@native
def test_native_calls_refuse_what_is_not_a_path_or_bytes(tmp_path: Path):
    with pytest.raises(TypeError):
        spool._spoolio.write_files([(str(tmp_path / "f"), ["text, not bytes"])], False)
    with pytest.raises(TypeError):
        spool._spoolio.rename_files([(str(tmp_path / "f"), 7)])
    with pytest.raises(ValueError):
        spool._spoolio.write_files([(str(tmp_path) + "\0x", [b""])], False)
    assert os.listdir(tmp_path) == []


@native
def test_native_and_python_file_system_syncs_agree_on_what_is_and_is_not_a_directory(
    tmp_path: Path,
):
    (tmp_path / "a-file").write_bytes(b"")
    paths = [str(tmp_path), str(tmp_path / "missing"), str(tmp_path / "a-file")]
    native_errors = [spool._spoolio.sync_file_system(p) for p in paths]
    python_errors = [spool.py_sync_file_system(p) for p in paths]
    assert native_errors == python_errors == [0, errno.ENOENT, errno.ENOTDIR]
