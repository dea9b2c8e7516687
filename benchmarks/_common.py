"""What the benchmark scripts share: the machine's description and the RESULTS.md appender.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, so a
plain ``from _common import ...`` finds it.
"""

from __future__ import annotations

import datetime
import os
import platform

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
    """CPU model, cores, RAM, torch and its threads, Python, and the load when the run started."""
    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or cpu
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = "load average {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg())
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}{gpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; {load}"
    )


def append_results(title: str, command: str, where: str, body: str) -> None:
    """Append a dated section (title, command, machine, body) to RESULTS.md."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as f:
        if new:
            f.write("# Benchmark results\n")
        heading = f"{title}, {stamp}" if title else stamp
        f.write(f"\n## {heading}\n\nCommand: `{command}`\n\nMachine: {where}\n\n{body}\n")
    print(f"\nappended to {RESULTS}")
