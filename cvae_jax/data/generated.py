"""Generated datasets in a cache folder: complete or absent, never half-written.

A generator writes its completion marker (its spec and version, as JSON) last, into a
temporary sibling that is renamed into place, so an interrupted run never leaves a
folder that looks complete and a changed spec or generator version regenerates.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Callable


def marker_matches(path: pathlib.Path, marker_file: str, expected: dict) -> bool:
    try:
        return json.loads((path / marker_file).read_text()) == expected
    except (OSError, ValueError):
        return False


def ensure_generated(target: pathlib.Path, is_complete: Callable[[pathlib.Path], bool],
                     write: Callable[[pathlib.Path], object]) -> pathlib.Path:
    """`target`, after `write(folder)` has generated it unless it is already complete."""
    target = pathlib.Path(target).expanduser()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        write(tmp / "data")
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)  # a folder without the marker is a broken leftover
        try:
            os.rename(tmp / "data", target)
        except OSError:
            if not is_complete(target):  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
