"""Python logging as the worker forwards it to Elixir: one SNAKEPIT_LOG
line of JSON per record, at or above the configured level."""

from __future__ import annotations

import io
import json
import logging
import warnings

from snakepit_bridge._internal import log_forward


def _records(stream: io.StringIO) -> list[dict]:
    lines = [line for line in stream.getvalue().splitlines() if line]
    assert all(line.startswith(log_forward.PREFIX) for line in lines), lines
    return [json.loads(line[len(log_forward.PREFIX) :]) for line in lines]


def test_records_become_one_json_line_each_with_their_place_and_traceback() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        log_forward.configure("info", stream)
        log = logging.getLogger("tests.forward")
        log.debug("hidden")
        log.info("two\nlines %s", "é")
        try:
            raise KeyError("k")
        except KeyError:
            log.exception("failed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("mind this", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)

    info, failed, warned = _records(stream)
    assert info["level"] == "INFO" and info["logger"] == "tests.forward"
    assert info["message"] == "two\nlines é"
    assert info["file"].endswith("test_log_forward.py") and isinstance(info["line"], int)
    assert info["correlation_id"] == ""
    assert failed["level"] == "ERROR" and "KeyError: 'k'" in failed["message"]
    assert warned["logger"] == "py.warnings" and "mind this" in warned["message"]


def test_levels_and_none() -> None:
    assert log_forward.level_of("DEBUG") == logging.DEBUG
    assert log_forward.level_of("none") > logging.CRITICAL
    assert log_forward.level_of("bogus") == logging.WARNING
