from __future__ import annotations

import time

import numpy as np

from router_models.features import DENSE_NAMES, N_DENSE, extract, prompt_text, user_text


def _dense(messages) -> dict[str, float]:
    return dict(zip(DENSE_NAMES, extract(messages).dense.tolist(), strict=True))


def test_prompt_text_joins_prompt_roles_and_parts():
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "what is it?"},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "developer", "content": "no markdown"},
        {"role": "tool", "content": "tool output"},
    ]
    assert prompt_text(messages) == "Be brief.\nLook:\nwhat is it?\nno markdown"


def test_odd_messages_never_raise():
    odd = [
        [],
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": None}],
        [{"role": "user"}],
        [{"content": "no role"}],
        ["not a dict", 3, None],
        [{"role": "user", "content": [None, 5, {"type": "text"}, {"type": "text", "text": 7}]}],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "a bare string",
        None,
    ]
    for messages in odd:
        feats = extract(messages)  # type: ignore[arg-type]
        assert feats.dense.shape == (N_DENSE,)
        assert np.isfinite(feats.dense).all()


def test_empty_and_none_content_measure_nothing():
    for messages in ([{"role": "user", "content": ""}], [{"role": "user", "content": None}]):
        dense = _dense(messages)
        assert dense["log_chars"] == dense["log_words"] == dense["log_numbers"] == 0.0


def test_structure_signals():
    code = _dense([{"role": "user", "content": "```python\ndef f(x):\n    return x\n```"}])
    assert code["log_code_marks"] > 0 and code["indented_frac"] > 0
    mcq = _dense([{"role": "user", "content": "Pick one\nA. red\nB. blue\nC. green"}])
    assert mcq["has_options"] == 1.0 and mcq["log_options"] > 1.0
    maths = _dense([{"role": "user", "content": "Solve $x^2 = 4.5$ and compute 3/7."}])
    assert maths["log_latex"] > 0 and maths["log_reasoning_words"] > 0
    assert maths["log_decimals"] > 0
    turns = _dense(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
        ]
    )
    assert (turns["n_user_turns"], turns["n_assistant_turns"], turns["has_system"]) == (2, 1, 1)
    assert turns["n_images"] == 1.0
    cjk = _dense([{"role": "user", "content": "これは何ですか"}])
    assert cjk["cjk_frac"] > 0.5 and cjk["non_ascii_frac"] > 0.5


def test_deterministic():
    msg = [{"role": "user", "content": "The Quick brown fox jumps over 3.5 lazy dogs?"}]
    assert extract(msg).dense.tolist() == extract(msg).dense.tolist()


def test_huge_input_is_capped_but_measured():
    text = "word " * 400_000
    start = time.perf_counter()
    feats = extract([{"role": "user", "content": text}])
    elapsed = time.perf_counter() - start
    dense = dict(zip(DENSE_NAMES, feats.dense.tolist(), strict=True))
    assert dense["log_chars"] == np.log1p(len(text))
    # pattern passes read a bounded head and tail: 2 MB costs about what 6 kB does
    assert dense["log_words"] < np.log1p(2_000)
    assert elapsed < 0.05


def test_text_features_read_the_user_turns_not_the_system_prompt():
    """Feature version 6: a system (or developer) prompt, the same on every request of a
    workflow and often long, counts only through has_system and log_system_chars."""
    user = {"role": "user", "content": "What is 12 * 7? Answer briefly."}
    rules = "Follow these rules.\n1. Be accurate.\n2. Be brief.\n" + "Never reveal $secrets. " * 80
    bare = _dense([user])
    with_system = _dense([{"role": "system", "content": rules}, user])
    with_developer = _dense([{"role": "developer", "content": rules}, user])
    for name in DENSE_NAMES:
        if name not in ("has_system", "log_system_chars"):
            assert with_system[name] == bare[name], name
            assert with_developer[name] == bare[name], name
    assert (with_system["has_system"], bare["has_system"]) == (1.0, 0.0)
    assert with_system["log_system_chars"] > 7
    # no user turn: the system text is the request's text
    alone = _dense([{"role": "system", "content": "What is 12 * 7? Answer briefly."}])
    assert alone["log_chars"] == bare["log_chars"] and alone["log_numbers"] > 0
    assert user_text([{"content": "no role"}, {"role": "assistant", "content": "x"}]) == "no role"


def test_a_user_turn_without_text_does_not_make_the_system_prompt_the_request():
    """Only a request with no user turn at all is read whole: an image-only user turn has no
    text of its own, and the system prompt still counts only as has_system and its length."""
    rules = {"role": "system", "content": "Describe what you see. 1. Be exact. 2. Be brief. " * 20}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    only_image = _dense([rules, {"role": "user", "content": [image]}])
    bare_image = _dense([{"role": "user", "content": [image]}])
    for name in DENSE_NAMES:
        if name not in ("has_system", "log_system_chars"):
            assert only_image[name] == bare_image[name], name
    assert only_image["log_chars"] == 0.0 and only_image["n_images"] == 1.0
