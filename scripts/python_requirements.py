#!/usr/bin/env python3
"""Prints the bridge's requirements from python/pyproject.toml, the one list
of them: the run-time `dependencies`, plus the optional groups named on the
command line (e.g. `dev`). scripts/setup.sh installs its output.

    python3 scripts/python_requirements.py dev > /tmp/requirements.txt
"""

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "python" / "pyproject.toml"


def requirements(groups: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = list(project["dependencies"])
    for group in groups:
        found += project["optional-dependencies"][group]
    return list(dict.fromkeys(found))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
