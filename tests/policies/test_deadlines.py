"""A request's deadline in the policy: ``deadline_s`` at the top (the default, also for
requests that name a catalog model) and per route; bad values are located errors."""

from __future__ import annotations

import pytest

from policies.compiled import deadline_for
from tests.policies.conftest import MINIMAL, the_error

WITH_DEADLINES = MINIMAL.replace(
    "routes:\n  - name: auto\n    candidates: [small, big]\n",
    "deadline_s: 120\n"
    "routes:\n  - name: auto\n    candidates: [small, big]\n"
    "    deadline_s: 20.5\n"
    "  - name: open\n    candidates: [small]\n",
)


def test_a_route_deadline_wins_over_the_policy_default(compile_text):
    policy = compile_text(WITH_DEADLINES)
    assert policy.deadline_s == 120.0
    assert policy.routes["auto"].deadline_s == 20.5
    assert policy.routes["open"].deadline_s == 120.0
    assert deadline_for(policy, "auto") == 20.5
    # a catalog model named directly, or no route at all: the policy's
    assert deadline_for(policy, "direct") == deadline_for(policy, None) == 120.0


def test_no_deadline_anywhere_is_none(compile_text):
    policy = compile_text(MINIMAL)
    assert policy.deadline_s is None and policy.routes["auto"].deadline_s is None
    assert deadline_for(policy, "auto") is None and deadline_for(policy, "direct") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "deadline_s: Input should be greater than 0"),
        ('"30"', "deadline_s: Input should be a valid number"),
        (".nan", "deadline_s: Input should be a finite number"),
    ],
)
def test_bad_deadlines_name_the_file_line_and_field(value, message):
    top = MINIMAL.replace("default_route: auto\n", f"default_route: auto\ndeadline_s: {value}\n")
    error = the_error(top)
    assert error.startswith(f"policy.yaml:9: {message}"), error
    route = MINIMAL.replace("    candidates: [small, big]\n", "    candidates: [small, big]\n"
                            f"    deadline_s: {value}\n")  # fmt: skip
    error = the_error(route)
    assert error.startswith(f"policy.yaml:8: routes[0].{message}"), error
