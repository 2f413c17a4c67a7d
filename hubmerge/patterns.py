"""Regular expressions from strangers' configs: whether matching one can take exponential time.

PEFT matches ``rank_pattern`` / ``alpha_pattern`` keys against module names with ``re.match``; a
key like ``(a|a)*b`` in a downloaded config could make one match run for hours.
"""

from __future__ import annotations

__all__ = ["backtracks_exponentially"]

try:  # the parser behind re.compile, to look at a pattern's structure before matching with it
    from re import _parser as _regex_parser  # type: ignore[attr-defined]  # Python ≥ 3.11
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _regex_parser

_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def backtracks_exponentially(pattern: str) -> bool:
    """Whether matching a pattern can take exponential (or high polynomial) time: a group that
    repeats something that itself repeats or alternates, like ``(a+)+`` or ``(a|a)*``, or more than
    three open-ended repeats, like ``.*.*.*.*x``.

    Raises:
        re.error, RecursionError, OverflowError: ``pattern`` is not a regular expression Python can compile.
    """
    open_ended = 0

    def walk(items, inside_repeat: bool) -> bool:
        nonlocal open_ended
        for op, arg in items:
            name = str(op)
            if name in _REPEATS:
                low, high, body = arg
                variable = low != high
                open_ended += variable
                if (inside_repeat and variable) or walk(body, inside_repeat or high > 1):
                    return True
            elif name == "BRANCH":
                if inside_repeat or any(walk(branch, inside_repeat) for branch in arg[1]):
                    return True
            elif name in ("SUBPATTERN", "ASSERT", "ASSERT_NOT", "ATOMIC_GROUP"):
                if walk(arg if name == "ATOMIC_GROUP" else arg[-1], inside_repeat):
                    return True
        return False

    return walk(_regex_parser.parse(pattern), False) or open_ended > 3
