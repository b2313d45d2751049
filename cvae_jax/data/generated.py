"""Generated datasets in a cache folder: complete or absent, never half-written.

A generator writes its completion marker (its spec and version, as JSON) last, into a
temporary sibling that is renamed into place, so an interrupted run never leaves a
folder that looks complete and a changed spec or generator version regenerates.
`GeneratedDataset` is the skeleton a generator fills with its own layout and rendering.
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


def check_spec_fields(spec, least: dict[str, int]) -> None:
    """A one-line ValueError unless every field of the dataclass `spec` is an int (not a
    bool) and each field named in `least` is at least its bound."""
    kind = type(spec).__name__
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{kind}.{field.name} must be an int, got {value!r}")
    for name, bound in least.items():
        if getattr(spec, name) < bound:
            raise ValueError(f"{kind}.{name} must be >= {bound}, got {getattr(spec, name)}")


@dataclasses.dataclass(frozen=True)
class GeneratedDataset:
    """One generator's output: the spec it takes, how its folders are named and marked
    complete, and the top-level folders it writes."""

    name: str  # cached as <cache_root>/<name>_<digest>/, marked complete by <name>.json
    spec_type: type
    version: int  # bumped whenever the output changes, so cached folders regenerate
    top_folders: tuple[str, ...]

    @property
    def marker_file(self) -> str:
        return f"{self.name}.json"

    def digest(self, spec) -> str:
        return spec_digest(spec, self.version)

    def generate(self, root, spec, write: Callable[[pathlib.Path], object]) -> pathlib.Path:
        """``root`` after `write(root)` has written the data of `spec` into it, marked complete.

        Refuses a root that already holds one of the top folders, since leftovers of
        another spec would silently join the new data."""
        if not isinstance(spec, self.spec_type):
            raise TypeError(f"spec must be a {self.spec_type.__name__}, got {type(spec).__name__}")
        root = pathlib.Path(root)
        for folder in self.top_folders:
            if (root / folder).exists():
                raise FileExistsError(f"{root / folder} already exists; generate into an empty folder")
        write(root)
        mark_complete(root, self.marker_file, marker_contents(spec, self.version))
        return root

    def ensure(self, cache_root, spec, generate: Callable[[pathlib.Path], object]) -> pathlib.Path:
        """``<cache_root>/<name>_<digest>/``, written by `generate(folder)` only if absent or
        incomplete (`ensure_for_spec`)."""
        return ensure_for_spec(cache_root, self.name, spec, self.version, self.marker_file, generate)
