"""Hypothesis settings for the property and fuzz tests: a short run by default, a
long one on demand.

``IPCBIND_HYPOTHESIS_PROFILE`` picks the profile: ``default`` (unset) keeps every
property test to a fraction of a second to a few seconds; ``long`` runs each with
many times more examples and longer operation sequences. Each test states its own
example count for the default run (:func:`budget`), which the profile scales, so
that a cheap fuzz target gets more examples than a test making system calls.

The settings are handed to each test explicitly; nothing here changes hypothesis's
global default profile, so other hypothesis tests in the suite keep theirs.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from hypothesis import HealthCheck, settings

PROFILE_ENV = "IPCBIND_HYPOTHESIS_PROFILE"

# profile name -> (factor for max_examples, factor for stateful_step_count)
_SCALES: Dict[str, "tuple[int, int]"] = {"default": (1, 1), "long": (40, 3)}

for _name in _SCALES:
    settings.register_profile(
        f"ipcbind-{_name}",
        # A shared 2-core machine makes single examples slow at random: time is
        # bounded per test by the example count, never by a per-example deadline.
        deadline=None,
        # Each run explores afresh; a failure prints the blob that replays it.
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def profile_name() -> str:
    """The profile chosen by ``IPCBIND_HYPOTHESIS_PROFILE`` (``default`` when unset).

    Raises:
        ValueError: the variable names no profile.
    """
    name = os.environ.get(PROFILE_ENV, "") or "default"
    if name not in _SCALES:
        raise ValueError(f"{PROFILE_ENV}={name!r}: the profiles are "
                         f"{', '.join(sorted(_SCALES))}")
    return name


def budget(max_examples: int, stateful_step_count: int = 50, **overrides: Any) -> settings:
    """Settings for one test: its default-run budget, scaled by the chosen profile.

    Args:
        max_examples: how many examples the default run tries.
        stateful_step_count: most steps per example of a state machine, default run.
        overrides: any other hypothesis setting for this test.
    """
    name = profile_name()
    examples, steps = _SCALES[name]
    return settings(settings.get_profile(f"ipcbind-{name}"),
                    max_examples=max_examples * examples,
                    stateful_step_count=stateful_step_count * steps, **overrides)
