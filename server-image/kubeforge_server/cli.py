"""``kubeforge-server`` entry point."""

from __future__ import annotations

import logging
import sys

from .config import ConfigError, load_config
from .server import EXIT_CONFIG, run_server, write_termination_message


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
    except ConfigError as exc:
        print(f"kubeforge-server: {exc}", file=sys.stderr)
        write_termination_message("/dev/termination-log", f"bad configuration: {exc}")
        return EXIT_CONFIG
    logging.basicConfig(
        level=getattr(logging, cfg.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run_server(cfg)


if __name__ == "__main__":
    sys.exit(main())
