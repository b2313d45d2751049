"""Generated datasets in a cache folder: complete or absent, never half-written.

A generator writes its completion marker (its spec and version, as JSON) last, into a
temporary sibling that is renamed into place, so an interrupted run never leaves a
folder that looks complete and a changed spec or generator version regenerates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence


def spec_digest(spec, version: int) -> str:
    """16 hex digits naming a generated folder: any change of spec or version renames it."""
    blob = json.dumps({"spec": dataclasses.asdict(spec), "version": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def marker_contents(spec, version: int) -> dict:
    return {"spec": dataclasses.asdict(spec), "generator_version": version}


def write_jobs(write_one: Callable[[Any], object], jobs: Sequence, workers: int) -> None:
    """`write_one(job)` for every job: in this process, or in `workers` spawned ones
    (forking a process that runs JAX can deadlock; spawning needs an importable
    `__main__`). Jobs write disjoint files, so the output is the same either way."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            write_one(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        list(pool.map(write_one, jobs))


def mark_complete(root: pathlib.Path, marker_file: str, contents: dict) -> None:
    """Written last: its presence, with matching contents, is what makes a folder complete."""
    (pathlib.Path(root) / marker_file).write_text(json.dumps(contents, indent=2, sort_keys=True))


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


def ensure_for_spec(cache_root, name: str, spec, version: int, marker_file: str,
                    write: Callable[[pathlib.Path], object]) -> pathlib.Path:
    """``<cache_root>/<name>_<digest>/`` for a generator's spec and version, written by
    `write(folder)` (which ends with `mark_complete`) only if absent or incomplete."""
    target = pathlib.Path(cache_root).expanduser() / f"{name}_{spec_digest(spec, version)}"
    expected = marker_contents(spec, version)
    return ensure_generated(target, lambda path: marker_matches(path, marker_file, expected), write)
