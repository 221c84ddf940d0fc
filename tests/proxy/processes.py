"""Counting a process's children (a guard's stdio upstreams) from /proc, without psutil."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # after "pid (command name)"
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found
