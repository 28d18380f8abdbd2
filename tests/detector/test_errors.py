"""``one_line``: the one line of an error that says what went wrong."""

from __future__ import annotations

import pytest

from detector.errors import one_line


class _Wrapped(Exception):
    """Like Ray's RayTaskError: the task's own exception is ``cause``."""

    def __init__(self, text: str, cause: BaseException) -> None:
        super().__init__(text)
        self.cause = cause


def test_a_plain_message_gives_its_first_non_empty_line() -> None:
    assert one_line(ValueError("\n  bad header  \nmore detail\n")) == "bad header"


def test_a_traceback_gives_its_last_line_without_the_qualified_name() -> None:
    text = (
        "ray::decode_shard() (pid=1, ip=127.0.0.1)\nTraceback (most recent call last):\n"
        '  File "decode.py", line 3, in decode_shard\n'
        "jobs.pipeline.decode.DecodeError: cam.mp4: decoding failed at frame 24 (EOF)"
    )
    assert one_line(RuntimeError(text)) == "cam.mp4: decoding failed at frame 24 (EOF)"


def test_the_innermost_cause_is_used() -> None:
    inner = OSError("disk full")
    assert one_line(_Wrapped("Traceback (most recent call last):\nwrapper noise", _Wrapped("x", inner))) == "disk full"


def test_rays_own_errors_give_their_last_line() -> None:
    ray_error = type("RayActorError", (Exception,), {"__module__": "ray.exceptions"})
    text = "The actor died unexpectedly before finishing this task.\n\tclass_name: DetectorActor\nWorker exit type: OOM"
    assert one_line(ray_error(text)) == "Worker exit type: OOM"


@pytest.mark.parametrize(("error", "want"), [(KeyError(), "KeyError"), ("", "no message"), ("  \n", "no message")])
def test_an_empty_message_names_the_type(error: BaseException | str, want: str) -> None:
    assert one_line(error) == want


def test_the_limit_cuts_the_line() -> None:
    assert one_line(ValueError("x" * 500), limit=10) == "x" * 10 and len(one_line(ValueError("y" * 500))) == 200
