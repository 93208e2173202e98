"""math-verify in a worker process with a deadline, and the number notation rules of its text."""

from __future__ import annotations

import time

import pytest

from tic_grpo_cli.data import verify
from tic_grpo_cli.data.verify import TIMED_OUT, MathVerifier, Verdict


@pytest.mark.parametrize(
    "completion,text",
    [
        ("It is \u22123, so 8\u22123 = 5", "It is -3, so 8-3 = 5"),
        ("From 3\u20135 it is \u20132", "From 3\u20135 it is -2"),  # a dash is a sign only
        ("So 75,00 or 1,2345, not 1,000", "So \\(75,00\\) or \\(1,2345\\), not 1,000"),
        ("$75,00$ and (1,2) and [1,5)", "$75,00$ and (1,2) and [1,5)"),  # LaTeX, tuples kept
        ("\\boxed{\u22129\\,500}", "\\boxed{-9500}"),
    ],
)
def test_math_text_gets_the_number_notation_rules(completion, text):
    assert verify.math_answer_text(completion) == text


def test_a_runaway_verification_times_out_from_any_thread():
    """2003^(2002^2001) has billions of digits: math-verify's own timeout is off outside the
    main thread, so before the worker process this call never returned."""
    from concurrent.futures import ThreadPoolExecutor

    verifier = MathVerifier(timeout=0.5)
    huge = [("\\boxed{2003^{2002^{2001}}}", "1"), ("\\boxed{1}", "1")]
    with ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        verdicts = pool.submit(verifier, huge).result()
    assert verdicts[0] == TIMED_OUT and verdicts[1].correct
    assert time.monotonic() - start < 30  # worker start-up (a loaded machine) + 0.5 s
    verifier.close()


def test_a_worker_stuck_in_c_code_is_killed_and_replaced(monkeypatch):
    # A fake worker whose verification sleeps past the deadline with its own timer disabled,
    # as a huge integer power computed in one C call would.
    monkeypatch.setattr(
        verify,
        "_WORKER",
        "from tic_grpo_cli.data import verify; import time; "
        "verify.signal.setitimer = lambda *a: None; "
        "verify.verify_math = lambda c, r: time.sleep(60) if c == 'hang' else "
        "verify.Verdict(True, c, c); verify.serve",
    )
    verifier = MathVerifier(timeout=0.2)
    start = time.monotonic()
    verdicts = verifier([("hang", "1"), ("ok", "1")])
    assert verdicts == [TIMED_OUT, Verdict(True, "ok", "ok")]
    assert time.monotonic() - start < 30
    verifier.close()
