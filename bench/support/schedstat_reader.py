"""Reads per-thread CPU time for bench/support/cpu.exs, in a process of its
own so that reading costs the measured processes nothing.

Each line on stdin is a list of OS process ids; the answer is one line of
``pid tid ns`` triples, ns being the first field of
``/proc/<pid>/task/<tid>/schedstat`` (time on a CPU). A process or thread
that is gone is left out. Standard library only: any python3 runs it.
"""

from __future__ import annotations

import os
import sys


def threads(pid: str) -> list[str]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                out.append(f"{pid} {tid} {fh.read().split(b' ', 1)[0].decode()}")
        except OSError:
            pass  # the thread ended after the listing
    return out


def main() -> None:
    for line in sys.stdin:
        sys.stdout.write(" ".join(t for pid in line.split() for t in threads(pid)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
