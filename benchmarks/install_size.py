"""Disk size of what ``pip install torch==2.13.0 -e ".[EXTRA]"`` puts into a virtual env.

Walks the requirement tree of blase_specutils (from ``setup.cfg``, with the chosen
extras) through the distributions installed in *this* environment and adds up the
files each one's RECORD lists, so it measures without installing anything. Packages a
fresh venv would get that this environment lacks are listed as missing.

    python benchmarks/install_size.py                    # [test]
    python benchmarks/install_size.py --extras test triton-tests
"""

from __future__ import annotations

import argparse
import configparser
import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _own_requirements(extras: list[str]) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = default_environment()
    return any(
        requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras or {""}
    )


def _size(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or ():
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="*", default=["test"])
    parser.add_argument("--top", type=int, default=8, help="largest packages to list")
    args = parser.parse_args()
    todo = [(r, set()) for r in _own_requirements(args.extras)]
    seen: dict[str, int] = {}
    missing = set()
    while todo:
        requirement, extras = todo.pop()
        if not _applies(requirement, extras):
            continue
        name = _canonical(requirement.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        seen[name] = _size(dist)
        for text in dist.requires or ():
            todo.append((Requirement(text), set(requirement.extras)))
    total = sum(seen.values())
    print(f"extras {args.extras}: {len(seen)} distributions, {total / 1e9:.2f} GB installed")
    for name, size in sorted(seen.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {name:24s} {size / 1e6:8.0f} MB")
    if missing:
        print(f"  not installed here (not counted): {', '.join(sorted(missing))}")


if __name__ == "__main__":
    main()
