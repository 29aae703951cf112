"""Fixtures of the real-pod suite; the helpers live in realpods_support (tests import that
module, never `conftest`, whose name every suite shares)."""

from realpods_support import kube, real_node

__all__ = ["kube", "real_node"]
