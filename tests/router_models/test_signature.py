from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from router_models.signature import MAX_ENTRIES, N_BUCKETS, Signature, signature, with_digest

MSGS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Explain photosynthesis in plants, briefly please."},
]


def test_round_trip_is_exact() -> None:
    sig = signature(MSGS)
    back = Signature.from_json(json.loads(json.dumps(sig.to_json())))
    assert np.array_equal(back.ids, sig.ids) and np.array_equal(back.counts, sig.counts)
    assert np.array_equal(back.dense, sig.dense)
    assert back.digest == sig.digest and back.n_chars == sig.n_chars
    assert sig.ids.size and np.all(np.diff(sig.ids) > 0) and sig.ids.max() < N_BUCKETS


def test_roles_tools_and_duplicates() -> None:
    as_user = signature([{"role": "user", "content": "You are terse."}])
    as_system = signature([{"role": "system", "content": "You are terse."}])
    assert not np.array_equal(as_user.ids, as_system.ids)
    with_tools = signature(MSGS, tools=[{"type": "function", "function": {"name": "lookup"}}])
    assert with_tools.ids.size > signature(MSGS).ids.size
    spaced = [{"role": m["role"], "content": "  " + m["content"].upper() + " "} for m in MSGS]
    assert signature(spaced).digest == signature(MSGS).digest
    assert signature(MSGS[1:]).digest != signature(MSGS).digest


def test_size_bound_and_no_words() -> None:
    rng = np.random.default_rng(0)
    words = ["alpha", "photosynthesis", "chlorophyll", "quantum", "integral", "banana"]
    text = " ".join(rng.choice(words, 2000))[:10000]
    sig = signature([{"role": "user", "content": text}])
    blob = json.dumps(sig.to_json())
    assert len(blob) <= 4200 and sig.ids.size <= MAX_ENTRIES
    for w in words:
        assert w not in blob.lower()


def test_deterministic_across_processes() -> None:
    code = (
        "import json; from router_models.signature import signature; "
        f"print(json.dumps(signature({MSGS!r}).to_json(), sort_keys=True))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == json.loads(json.dumps(signature(MSGS).to_json()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("ids"),
        lambda o: o.update(v=4),
        lambda o: o.update(v=0),
        lambda o: o.update(v=True),
        lambda o: o.update(v="2"),
        lambda o: o.update(v=1.0),
        lambda o: o.update(v=2.0),
        lambda o: o.update(v=3.0),
        lambda o: o.update(ids="***"),
        lambda o: o.update(ids="gA=="),  # truncated varint
        lambda o: o.update(dense=o["dense"][:-1]),
        lambda o: o.update(dense=[float("nan")] * len(o["dense"])),
        lambda o: o.update(n_chars=-1),
        lambda o: o.update(digest="XYZ"),
        lambda o: o.update(more="AQ=="),
        lambda o: o.update(extra=1),
        lambda o: o.update(ids="/////w=="),  # out of range
    ],
)
def test_malformed_json_is_rejected(mutate: object) -> None:
    obj = signature(MSGS).to_json()
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(ValueError):
        Signature.from_json(obj)


def test_odd_messages_do_not_raise() -> None:
    for msgs in (
        [],
        [{"role": "user", "content": None}],
        [1, "x"],
        [{"content": [{"text": "hi"}]}],
    ):
        sig = signature(msgs)
        Signature.from_json(sig.to_json())
    assert Signature.from_json(signature([]).to_json()).ids.size == 0
    with pytest.raises(ValueError):
        Signature.from_json([1, 2])


def test_scoring_without_the_digest_sees_the_same_request() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum 2+2?"}]
    full, bare = signature(msgs), signature(msgs, digest=False)
    assert bare.digest == "" and len(full.digest) == 16
    assert np.array_equal(full.ids, bare.ids) and np.array_equal(full.counts, bare.counts)
    assert np.array_equal(full.dense, bare.dense) and full.n_chars == bare.n_chars
    # the request log adds the digest to the scorer's signature: the same as a full one
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for m, t in ((msgs, None), (msgs, tools), ("not messages", None)):
        done = with_digest(signature(m, t, digest=False), m, t)
        assert done.to_json() == signature(m, t).to_json()


def test_distinct_buckets_are_numpy_unique() -> None:
    from router_models.signature import _distinct

    rng = np.random.default_rng(3)
    cases = [np.zeros(0, np.uint64), np.array([7], np.uint64), np.full(5, N_BUCKETS - 1, np.uint64)]
    cases += [rng.integers(0, n, size=n * 3).astype(np.uint64) for n in (2, 50, 3000, N_BUCKETS)]
    for ids in cases:
        uniq, counts = _distinct(ids)
        want_u, want_c = np.unique(ids.astype(np.int64), return_counts=True)
        assert uniq.dtype == np.int64 and counts.dtype == np.int64
        assert np.array_equal(uniq, want_u) and np.array_equal(counts, want_c)


PINNED: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]] = [
    # version 2's mapping, as records and trained heads hold it (version 1's, apart from the
    # dense part of the first, which has a system message, and "v")
    (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Explain photosynthesis briefly. (a) one\n(b) two?"},
        ],
        None,
        "f3c6529decaca443533a0df1",
    ),
    (
        [{"role": "user", "content": "def f(x):\n    return x == 3.14  # héllo wörld " * 200}],
        None,
        "c60becefd5c564ee0d8315f6",
    ),
    (
        [
            {"role": "user", "content": "call it"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "content": "42"},
        ],
        [{"type": "function", "function": {"name": "lookup"}}],
        "e393c08c5e9abf0e2dd38d2a",
    ),
    # more than MAX_ENTRIES distinct buckets: the consistent sample decides which stay
    (
        [{"role": "user", "content": " ".join(f"w{i * 7919 % 10007}" for i in range(700))}],
        None,
        "434e264cfa30168726e7a475",
    ),
    # one segment, counts past MAX_COUNT (clipped)
    ([{"role": "user", "content": "ab " * 1300}], None, "ad521482a2f0dc3fe764bce3"),
]


def test_version_2_mapping_is_pinned() -> None:
    """A request maps to the same signature as version 2 always did: records and trained
    heads depend on it. A change that fails this needs a new SIGNATURE_VERSION. (Version 3
    differs only in the digest of a text segment over DIGEST_CAP characters, which no
    pinned case has: the hashes are taken with the version field set back to 2.)"""
    import hashlib

    from router_models.signature import DIGEST_CAP, SIGNATURE_VERSION, _segments

    assert SIGNATURE_VERSION == 3
    for k, (messages, tools, want) in enumerate(PINNED):
        assert sum(len(t) for _, t in _segments(messages, tools)) <= DIGEST_CAP
        sig = signature(messages, tools)
        blob = json.dumps({**sig.to_json(), "v": 2}, sort_keys=True).encode()
        assert hashlib.sha256(blob).hexdigest()[:24] == want, (k, sig.ids.size, sig.digest)
    big = signature(PINNED[3][0])
    assert big.ids.size == MAX_ENTRIES  # the cases reach what they are there for
    assert signature(PINNED[4][0]).counts.max() == 255


def test_version_1_records_still_load() -> None:
    """Stored version-1 signatures keep their labels: they parse as they were written, dense
    part included (feature version 5's, which differs only where a system prompt was sent)."""
    obj = signature(PINNED[0][0]).to_json()  # it has a system prompt
    assert obj["v"] == 3
    obj["v"] = 1
    obj["dense"] = [round(x + 0.5, 6) for x in obj["dense"]]  # as version 5 might have read it
    back = Signature.from_json(obj)
    assert np.array_equal(back.ids, signature(PINNED[0][0]).ids)
    assert back.dense.tolist() == obj["dense"]


def test_the_digest_normalises_a_request_s_first_digest_cap_characters() -> None:
    """Version 3: past the request's first DIGEST_CAP characters the text is hashed as it
    is, each segment's rest after its length (normalising a megabyte took 20-30 ms on the
    event loop). Identical prompts still share a digest, a difference anywhere still tells
    them apart, and the n-grams and dense part are the ones the whole text gives."""
    import hashlib

    from router_models.signature import DIGEST_CAP, _segments

    def want(msgs: list[dict[str, str]]) -> str:
        parts, budget = [], DIGEST_CAP
        for c, t in _segments(msgs, None):
            head, tail = t[:budget], t[budget:]
            part = f"{c}:{' '.join(head.lower().split())}"
            parts.append(part + (f"\t{len(tail)}:{tail}" if tail else ""))
            budget -= len(head)
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]

    head = "Word  TEXT\n" * (DIGEST_CAP // 11 + 5)
    long_text = head + "The   REST\tstays as it is"
    msgs = [{"role": "system", "content": "Be  brief."}, {"role": "user", "content": long_text}]
    sig = signature(msgs)
    assert len(long_text) > DIGEST_CAP and sig.digest == want(msgs)
    assert signature(msgs).digest == sig.digest  # deterministic
    # a change past the cap still changes it, even one normalising would have hidden
    other = [msgs[0], {"role": "user", "content": long_text.replace("REST", "rest")}]
    assert signature(other).digest != sig.digest
    # everything else is what it was: the digest-free signature of the same request
    bare = signature(msgs, digest=False)
    assert np.array_equal(bare.ids, sig.ids) and np.array_equal(bare.dense, sig.dense)
    assert sig.n_chars == sum(len(t) for _, t in _segments(msgs, None))
    # the cap is the request's: many segments, each under it, are cut where it runs out
    turns = [
        {"role": "user" if k % 2 == 0 else "assistant", "content": f"Turn  {k} " * 3000}
        for k in range(6)
    ]
    assert all(len(t["content"]) < DIGEST_CAP < 6 * len(t["content"]) for t in turns)
    assert signature(turns).digest == want(turns)
    # within the cap, the whole request is normalised, as version 2 did
    at_cap = [{"role": "user", "content": ("ab  " * DIGEST_CAP)[:DIGEST_CAP]}]
    (c, t) = _segments(at_cap, None)[0]
    v2 = hashlib.sha256(f"{c}:{' '.join(t.lower().split())}".encode()).hexdigest()[:16]
    assert signature(at_cap).digest == want(at_cap) == v2
    # a short prompt cannot pass for a long one whose normalised head is empty: the tab
    # before the rest's length is whitespace, which normalising leaves only as single spaces
    long_blank = signature([{"role": "user", "content": " " * DIGEST_CAP + "x"}]).digest
    for short in ("\t1:x", "\x001:x", " \t1:x", "1:x"):
        assert signature([{"role": "user", "content": short}]).digest != long_blank


def test_a_scorer_without_heads_hands_back_the_dense_features_a_signature_takes() -> None:
    from router_models import load_estimator
    from router_models.features import extract

    scorer = load_estimator().scorer([("m", "m")])
    requests = [
        [{"role": "user", "content": "What is 12 * 7? Show your work."}],
        [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "List three primes:\n1. two\n2. three"},
        ],
    ]
    for m in requests:
        d, p, dense = scorer.score(m)
        assert isinstance(dense, np.ndarray), "a Signature: the scorer has heads"
        assert p is None and np.array_equal(dense, extract(m).dense)
        assert signature(m, dense=dense).to_json() == signature(m).to_json()
    # not a message list: the given features are not used (the signature reads none)
    assert signature("oops", dense=np.ones(3)).to_json() == signature("oops").to_json()
