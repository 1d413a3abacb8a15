"""Size rules of task args, results and errors: one home, `akita.tasks.sizes`."""

from __future__ import annotations

import msgpack

from akita.tasks import sizes
from akita.tasks.registry import Refusal
from workers.executor import admission, delegation, taskproc
from workers.executor import worker as executor_worker


def _encoded(value: object) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def test_args_fit_up_to_the_limit_and_are_refused_past_it() -> None:
    args = ["x" * 100]
    size = _encoded(args)
    assert sizes.payload_bytes(args) == size
    assert sizes.too_large(args, size) is None
    refusal = sizes.too_large(args, size - 1)
    assert refusal == Refusal("too_large", f"the args are {size} bytes; [tasks] "
                                           f"max_payload_bytes is {size - 1}")


def test_a_returned_result_is_held_to_the_smaller_limit_named_by_its_key() -> None:
    assert sizes.result_limit(100, 200) == (100, "max_payload_bytes")
    assert sizes.result_limit(300, 200) == (200, "max_result_bytes")
    assert sizes.result_limit(200, 200) == (200, "max_payload_bytes")
    assert sizes.result_too_large(500, 200, "max_result_bytes") == {
        "type": "ResultTooLarge", "traceback": "",
        "message": "the result is 500 bytes; [tasks] max_result_bytes is 200"}


def test_a_capped_error_fits_and_keeps_the_end_of_its_traceback() -> None:
    error = {"type": "E", "message": "m" * 5000, "traceback": "t" * 5000 + "RAISED HERE"}
    capped = sizes.cap_error(error, 1000)
    assert _encoded(capped) <= 1000
    assert capped["traceback"].endswith("RAISED HERE")
    assert capped["message"].startswith("mmm")


def test_a_task_process_reports_an_oversized_result_by_the_same_rule() -> None:
    ok, error, _size = taskproc.check_result(["y" * 400], 100)
    assert not ok
    assert error == sizes.cap_error(sizes.result_too_large(_encoded(["y" * 400]), 100,
                                                           "max_result_bytes"), 100)


def test_the_executor_uses_the_one_home_of_the_rules() -> None:
    assert admission.too_large is sizes.too_large  # local submits and tasks run for peers
    assert executor_worker.result_too_large is sizes.result_too_large
    assert delegation.cap_error is sizes.cap_error
    assert taskproc.cap_error is sizes.cap_error
