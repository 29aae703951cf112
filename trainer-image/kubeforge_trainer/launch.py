"""``kubeforge-launch TORCHRUN-ARGS... --no-python PROGRAM ARGS...``: torchrun that keeps the
exit codes with meaning.

torchrun turns any worker failure into exit 1, which would hide the trainer's 2 (bad
configuration: the Job's podFailurePolicy fails at once) and 3 (stopped because pruned). This
launcher validates the job document once before any worker starts (a bad one exits 2 in every
pod, at once) and, when workers fail, exits with the most meaningful of their codes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from .cli import EXIT_BAD_CONFIG, EXIT_ERROR, EXIT_STOPPED, EXIT_TERMINATED

# Which worker code wins when ranks disagree: a bad configuration explains everything else, a
# stop request beats the errors it may cause in other ranks, SIGTERM means "retry".
_PRIORITY = (EXIT_BAD_CONFIG, EXIT_STOPPED, EXIT_TERMINATED)


def combined_exit_code(worker_codes: Iterable[int]) -> int:
    """The pod's exit code from its failed workers' codes."""
    codes = set(worker_codes)
    for code in _PRIORITY:
        if code in codes:
            return code
    # A worker killed by signal N reports -N; torch reports it that way too.
    if any(c < 0 and -c == 15 for c in codes):
        return EXIT_TERMINATED
    return EXIT_ERROR if codes else 0


def _validate_builtin_job(program: Sequence[str]) -> int | None:
    if not program or not program[0].endswith("kubeforge-trainer"):
        return None
    from .cli import _err
    from .config import ConfigError, load_document, resolve

    job = None
    if "--job" in program:
        job = program[program.index("--job") + 1]
    try:
        resolve(load_document(job))
    except ConfigError as exc:
        _err(f"bad job document: {exc}")
        return EXIT_BAD_CONFIG
    return None


def run(argv: Sequence[str]) -> int:
    args = list(argv)
    program = args[args.index("--no-python") + 1 :] if "--no-python" in args else []
    bad = _validate_builtin_job(program)
    if bad is not None:
        return bad
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    try:
        torchrun(parse_args(args))
    except ChildFailedError as exc:
        return combined_exit_code(f.exitcode for f in exc.failures.values())
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
