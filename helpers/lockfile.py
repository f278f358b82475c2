"""Rewrite ``requirements/constraints.txt`` and ``requirements/torch.txt`` from a venv (``make lock``).

The torch family goes to its own file so that a machine which already has torch
(a GPU image) keeps it; everything else is pinned in the one constraints file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .paths import repo_root

TORCH_FAMILY = re.compile(r"^(torch|torchvision|triton|nvidia-|cuda-)", re.IGNORECASE)
HEADER = """# The kit's working set of versions: the one place they are recorded.
# Installed with: pip install -c requirements/constraints.txt -e .[dev]
# (Makefile 'install'). pip check clean.
# The torch family lives in requirements/torch.txt, installed only where no torch is present.
# Update: make lock (re-resolves in a scratch venv and rewrites both files).
"""


def split_freeze(lines: list[str]) -> tuple[list[str], list[str]]:
    """Split ``pip freeze`` lines into (constraints, torch pins); editable and local lines dropped."""
    pins = [line for line in lines if "==" in line and not line.startswith(("-e", "#"))]
    rest = [line for line in pins if not TORCH_FAMILY.match(line) and not line.lower().startswith("kolors-story-kit")]
    torch = [line for line in pins if re.match(r"^(torch|torchvision)==", line, re.IGNORECASE)]
    return rest, torch


def main(argv: list[str] | None = None) -> int:
    venv = Path((argv or sys.argv[1:])[0])
    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    rest, torch = split_freeze(frozen)
    req = repo_root() / "requirements"
    (req / "constraints.txt").write_text(HEADER + "\n".join(rest) + "\n")
    (req / "torch.txt").write_text("# torch family, installed by 'make install' only when the interpreter has no torch.\n"
                                   "# (A GPU image's own torch, if in pyproject's range, is kept.)\n" + "\n".join(torch) + "\n")
    print(f"pinned {len(rest)} packages + {len(torch)} torch packages in {req}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
