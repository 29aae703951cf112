"""Build ``kubeforge-report.pyz``: a standard-library-only zipapp of this package.

``python -m kubeforge_trainer.report.build OUT`` writes the zipapp to OUT (a file, or a folder
that receives ``kubeforge-report.pyz``). Run it as ``python3 kubeforge-report.pyz -- CMD ARGS``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipapp
from pathlib import Path

PACKAGE = "kubeforge_report"  # the name inside the zipapp: no torch-importing parent package
MODULES = ("__init__.py", "channel.py", "parse.py", "cost.py", "cli.py")
MAIN = "from kubeforge_report.cli import main\n\nmain()\n"


def build(out: str | os.PathLike[str]) -> Path:
    """Write the zipapp and return its path."""
    target = Path(out)
    if target.is_dir() or str(out).endswith(os.sep):
        target = target / "kubeforge-report.pyz"
    target.parent.mkdir(parents=True, exist_ok=True)
    src = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / PACKAGE
        pkg.mkdir()
        for name in MODULES:
            (pkg / name).write_bytes((src / name).read_bytes())
        (Path(tmp) / "__main__.py").write_text(MAIN)
        zipapp.create_archive(tmp, target, interpreter="/usr/bin/env python3", compressed=True)
    target.chmod(0o755)
    return target


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kubeforge_trainer.report.build OUT", file=sys.stderr)
        sys.exit(2)
    print(build(args[0]))


if __name__ == "__main__":
    main()
