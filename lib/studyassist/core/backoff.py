"""The one exponential back-off formula: the launcher's restart delays (studyassist.core.supervision)
and the gateway's sign-in waits (gateway.backoff) both wait ``first_s * factor ** step``, at most
``cap_s``; they differ only in what they count (failures in a row, attempts past the free ones).
"""

from __future__ import annotations


def exponential_delay(step: int, first_s: float, cap_s: float, factor: float = 2.0) -> float:
    """The delay ``step`` growths after the first: ``first_s * factor ** step``, at most ``cap_s``
    (``step`` 0 is ``first_s``)."""
    if step < 0:
        raise ValueError(f"step must be at least 0, not {step}")
    try:
        return min(cap_s, first_s * factor**step)
    except OverflowError:  # a count running for days: factor ** step is past any float, so past the cap
        return cap_s
