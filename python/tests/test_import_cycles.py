"""No import circle among the bridge's modules (scripts/check_import_cycles.py),
and the checker sees the circles it is there to see."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHECKER = Path(__file__).resolve().parents[2] / "scripts" / "check_import_cycles.py"


def check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / next(iter(files)).split("/")[0]


def test_the_bridge_has_no_import_circle():
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("no import circle among ")


def test_a_circle_hidden_in_a_function_is_found(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": """
                def later():
                    from .top import value  # hidden in a function, still a circle
                    return value
            """,
            "pkg/top.py": "from pkg import low\nvalue = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/leaf.py": "from .. import top\n",
        },
    )
    result = check(str(package))
    assert result.returncode == 1, result.stdout
    assert "pkg.low\n  -> pkg.top    (" in result.stdout
    assert "pkg/low.py:3)" in result.stdout
    assert "  -> pkg.low    (" in result.stdout
    assert "pkg.sub.leaf" not in result.stdout


def test_type_checking_imports_and_submodules_count(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from . import a\n",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b.c\n",
            "pkg/b/__init__.py": "",
            "pkg/b/c.py": "from pkg.a import something\n",
        },
    )
    result = check(str(package))
    assert result.returncode == 1, result.stdout
    assert "pkg.a\n  -> pkg.b.c" in result.stdout
    # The package's own __init__ is not part of a submodule's imports.
    assert "-> pkg    (" not in result.stdout


def test_edges_from_another_language():
    edges = textwrap.dedent(
        """\
        # from to where
        grpc::channel grpc::unary src/grpc/channel.rs:3
        grpc::unary grpc::channel
        lane grpc::unary
        """
    )
    result = check("--edges", "-", stdin=edges)
    assert result.returncode == 1, result.stdout
    assert "grpc::channel\n  -> grpc::unary    (src/grpc/channel.rs:3)\n  -> grpc::channel\n" in result.stdout
    assert check("--edges", "-", stdin="lane wire\ngrpc wire\n").returncode == 0
