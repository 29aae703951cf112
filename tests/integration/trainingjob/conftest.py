"""Fixtures for the TrainingJob integration tests: the operator running as a real process.

`OperatorProcess` and the session `operator` fixture live in tests/integration/ (shared with the
other suites); they are re-exported here for the tests that `from conftest import OperatorProcess`.
"""

from __future__ import annotations

from kf_operator_process import ROOT, OperatorProcess, free_port

__all__ = ["ROOT", "OperatorProcess", "free_port"]
