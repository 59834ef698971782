"""The exit status every verb returns, and the short console list of the inputs a verb skipped.

A script (or a cron job around `priorclip index`) must tell "finished, but some files are not
in the result" from "finished cleanly" and from "failed" without parsing text (issue #16.5), so:
"""
from __future__ import annotations

import sys
from typing import Iterable

OK = 0           # done; every input was used
SKIPPED = 1      # done, but some inputs were skipped, e.g. unreadable (listed on stderr and in a report)
ERROR = 2        # nothing (trustworthy) done: bad arguments, missing path, disk full, ...
INTERRUPTED = 130

SHOWN = 5  # skipped inputs named on the console; the report holds all of them

EPILOG = """\
exit status:
  0    done, every input used
  1    done, but some inputs were skipped (e.g. unreadable images): the first few are named
       with the reason on stderr, all of them in the verb's report (index: OUT/report.json;
       zeroshot, evaluate: --out; data check / data overlap: --bad-files)
  2    error: bad arguments, a missing path, an unusable model or dataset, a full disk
       (one line on stderr says what is wrong and what to do)
  130  interrupted (Ctrl-C)"""


def report_skipped(verb: str, entries: Iterable[tuple[str, str]], where: str, *, shown: int = SHOWN,
                   file=None) -> int:
    """Name the first `shown` skipped inputs with their reason on stderr and say where the rest
    are (`where`: "see OUT/report.json" or how to get the full list); -> SKIPPED, or OK if none."""
    entries = list(entries)
    if not entries:
        return OK
    file = sys.stderr if file is None else file
    print(f"priorclip {verb}: {len(entries)} input(s) skipped:", file=file)
    for path, reason in entries[:shown]:
        print(f"  {path}: {reason}", file=file)
    if len(entries) > shown:
        print(f"  ... and {len(entries) - shown} more, {where}", file=file)
    else:
        print(f"  ({where})", file=file)
    return SKIPPED
