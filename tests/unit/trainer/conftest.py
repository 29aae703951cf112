"""Fixtures of the trainer tests; the helpers live in trainer_support (tests import that module,
never `conftest`, whose name every suite shares)."""

from trainer_support import run_inprocess

__all__ = ["run_inprocess"]
