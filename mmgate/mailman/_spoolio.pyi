"""The native file system half of the spool writer (mmgate/mailman/_spoolio.c)."""

from collections.abc import Sequence

from typing_extensions import Buffer

def write_files(files: Sequence[tuple[str, Sequence[Buffer]]], fsync: bool, /) -> list[int]: ...
def rename_files(pairs: Sequence[tuple[str, str]], /) -> list[int]: ...
