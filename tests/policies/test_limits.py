"""Input limits in the policy: ``limits`` at the top (the default) and per route, merged
field by field; bad values are located errors like any other field."""

from __future__ import annotations

import pytest

from policies.compiled import NO_LIMITS, Limits, limits_for, resolve
from tests.policies.conftest import MINIMAL, the_error

WITH_LIMITS = MINIMAL.replace(
    "routes:\n  - name: auto\n    candidates: [small, big]\n",
    "limits: {max_messages: 256, max_chars: 400000, max_tokens: 16384}\n"
    "routes:\n  - name: auto\n    candidates: [small, big]\n"
    "    limits: {max_tokens: 1024}\n"
    "  - name: open\n    candidates: [small]\n",
)


def test_route_limits_override_the_default_field_by_field(compile_text):
    policy = compile_text(WITH_LIMITS)
    assert policy.limits == Limits(256, 400000, 16384)
    assert policy.routes["auto"].limits == Limits(256, 400000, 1024)
    assert policy.routes["open"].limits == Limits(256, 400000, 16384)
    assert policy.any_limits
    # a route (or auto) gets its route's; a catalog model or an unknown name the default
    assert limits_for(policy, resolve(policy, "auto")).max_tokens == 1024
    assert limits_for(policy, resolve(policy, "small")) == policy.limits
    assert limits_for(policy, resolve(policy, "nope")) == policy.limits


def test_no_limits_anywhere_is_nothing_to_check(compile_text):
    policy = compile_text(MINIMAL)
    assert policy.limits is NO_LIMITS and not NO_LIMITS.active
    assert policy.routes["auto"].limits is NO_LIMITS
    assert not policy.any_limits


def test_a_route_alone_may_set_limits(compile_text):
    text = MINIMAL.replace("    candidates: [small, big]\n", "    candidates: [small, big]\n"
                           "    limits: {max_messages: 3}\n")  # fmt: skip
    policy = compile_text(text)
    assert policy.any_limits and policy.limits is NO_LIMITS
    assert policy.routes["auto"].limits == Limits(max_messages=3)


def test_tighter_takes_the_stricter_cap_of_each_field():
    route = Limits(max_messages=10, max_chars=None, max_tokens=4096)
    tenant = Limits(max_messages=None, max_chars=500, max_tokens=1024)
    assert route.tighter(tenant) == Limits(10, 500, 1024)
    assert tenant.tighter(route) == Limits(10, 500, 1024)
    assert route.tighter(None) is route
    assert NO_LIMITS.tighter(NO_LIMITS) is NO_LIMITS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{max_tokens: 0}", "limits.max_tokens: Input should be greater than 0"),
        ('{max_chars: "10"}', "limits.max_chars: Input should be a valid integer"),
        ("{max_message: 3}", "limits.max_message: unknown field"),
    ],
)
def test_bad_limits_name_the_file_line_and_field(value, message):
    text = MINIMAL.replace("default_route: auto\n", f"default_route: auto\nlimits: {value}\n")
    error = the_error(text)
    assert error.startswith(f"policy.yaml:9: {message}"), error


def test_a_bad_route_limit_is_located_in_its_route():
    text = MINIMAL.replace("    candidates: [small, big]\n", "    candidates: [small, big]\n"
                           "    limits: {max_messages: -1}\n")  # fmt: skip
    error = the_error(text)
    assert error.startswith("policy.yaml:8: routes[0].limits.max_messages: "), error
