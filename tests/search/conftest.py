"""Fixtures and stand-ins of the search tests live in search_support.py, imported by name there
(a module called `conftest` is ambiguous when several test folders are collected together)."""
from search_support import *  # noqa: F401,F403
