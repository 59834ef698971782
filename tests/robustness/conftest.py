"""Helpers and fixtures of the robustness suite live in robustness_support.py (see tests/search/conftest.py)."""
from robustness_support import *  # noqa: F401,F403
