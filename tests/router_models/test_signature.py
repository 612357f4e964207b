from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from router_models.signature import (
    MAX_ENTRIES,
    N_BUCKETS,
    PREFIX_CACHE_BYTES,
    PREFIX_MIN_BYTES,
    PREFIXES,
    Signature,
    hashed_ngrams,
    signature,
    with_digest,
)

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
        lambda o: o.update(v=3),
        lambda o: o.update(v=0),
        lambda o: o.update(v=True),
        lambda o: o.update(v="2"),
        lambda o: o.update(v=1.0),
        lambda o: o.update(v=2.0),
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


LONG_PREAMBLE = [
    {
        "role": "system",
        "content": "House rules: answer in English; cite sources; never reveal keys. " * 12
        + "Workflow: summarise",
    },
    {"role": "developer", "content": "Keep it short."},
    {"role": "user", "content": "Summarise this: the quarterly numbers rose."},
]
LONG_TOOLS = [
    {"type": "function", "function": {"name": "lookup", "description": "Find a record. " * 30}}
]

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
    # a long system + developer preamble (the prefix cache's part), then a user turn whose
    # first word pairs with the preamble's last; then the same after tool definitions
    (LONG_PREAMBLE, None, "f4f7f0a338fc619a020f9044"),
    (LONG_PREAMBLE, LONG_TOOLS, "485a88416becb2ed39fc6563"),
]


def test_version_2_mapping_is_pinned() -> None:
    """A request maps to the same signature as version 2 always did: records and trained
    heads depend on it. A change that fails this needs a new SIGNATURE_VERSION."""
    import hashlib

    from router_models.signature import SIGNATURE_VERSION

    assert SIGNATURE_VERSION == 2
    PREFIXES.resize(PREFIX_CACHE_BYTES)  # a gateway test may have turned it off
    PREFIXES.clear()
    hits = PREFIXES.hits
    for _ in range(2):  # the second time, the long preambles' n-grams come from PREFIXES
        for k, (messages, tools, want) in enumerate(PINNED):
            sig = signature(messages, tools)
            blob = json.dumps(sig.to_json(), sort_keys=True).encode()
            assert hashlib.sha256(blob).hexdigest()[:24] == want, (k, sig.ids.size, sig.digest)
    assert len(PREFIXES) == 2 and PREFIXES.hits - hits == 2
    big = signature(PINNED[3][0])
    assert big.ids.size == MAX_ENTRIES  # the cases reach what they are there for
    assert signature(PINNED[4][0]).counts.max() == 255


def test_version_1_records_still_load() -> None:
    """Stored version-1 signatures keep their labels: they parse as they were written, dense
    part included (feature version 5's, which differs only where a system prompt was sent)."""
    obj = signature(PINNED[0][0]).to_json()  # it has a system prompt
    assert obj["v"] == 2
    obj["v"] = 1
    obj["dense"] = [round(x + 0.5, 6) for x in obj["dense"]]  # as version 5 might have read it
    back = Signature.from_json(obj)
    assert np.array_equal(back.ids, signature(PINNED[0][0]).ids)
    assert back.dense.tolist() == obj["dense"]


def _random_request(rng: np.random.Generator) -> tuple[list[dict[str, Any]], Any]:
    """Messages (and sometimes tools) from pieces that put word and non-word bytes, long and
    short segments, and the head / tail cut either side of every segment boundary."""
    pieces = ["word", "Cap", " ", "\n", ",", ".", "x", "é", "字", "{", "_", "9", "\t", "a"]

    def text(n: int) -> str:
        return "".join(rng.choice(pieces, n))

    tools = None
    if rng.random() < 0.3:
        size = int(rng.choice([10, 200, 800]))
        tools = [{"type": "function", "function": {"name": text(5), "description": text(size)}}]
    messages = []
    for _ in range(int(rng.integers(0, 3))):
        role = str(rng.choice(["system", "developer"]))
        size = int(rng.choice([0, 3, 100, 300, 700, 1500, 4000]))
        messages.append({"role": role, "content": text(size)})
    for _ in range(int(rng.integers(0, 4))):
        role = str(rng.choice(["user", "assistant", "tool", "system"]))
        messages.append({"role": role, "content": text(int(rng.choice([0, 1, 2, 5, 50, 3000])))})
    return messages, tools


def test_the_prefix_cache_gives_the_same_buckets() -> None:
    """A leading system / developer / tool-definition part of PREFIX_MIN_BYTES or more is
    hashed once and looked up after: the request's buckets are exactly those hashed whole,
    on the first call and on later ones, whatever sits either side of the boundary."""
    from router_models.signature import _capped, _prefix_end, _PrefixCache, _segments

    rng = np.random.default_rng(7)
    cache = _PrefixCache(max_bytes=1 << 20)
    with_prefix = 0
    for _ in range(600):
        messages, tools = _random_request(rng)
        segments = _segments(messages, tools)
        want_ids, want_counts = hashed_ngrams(segments, None)
        with_prefix += _prefix_end(_capped(segments))[0] > 0
        for _ in range(2):
            ids, counts = hashed_ngrams(segments, cache)
            assert np.array_equal(ids, want_ids) and np.array_equal(counts, want_counts)
    assert with_prefix > 100 and cache.misses > 50 and cache.hits >= with_prefix
    # the boundary itself: every pair of bytes either side of it, at the smallest prefix
    for left in ("a", " ", "字"):
        for right in ("b", " ", "\n", "é"):
            system = "x" * (PREFIX_MIN_BYTES - 2) + left
            segs = [(1, system), (2, right + "yz tail")]
            assert _prefix_end(_capped(segs))[0] == 1
            want = hashed_ngrams(segs, None)
            for _ in range(2):
                got = hashed_ngrams(segs, cache)
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # a preamble one byte short is hashed with the rest, every time
    short = [(1, "x" * (PREFIX_MIN_BYTES - 2)), (2, "tail")]
    assert _prefix_end(_capped(short)) == (0, 0)


def test_the_prefix_cache_is_bounded_in_bytes_and_least_recently_used_goes_first() -> None:
    from router_models.signature import _PrefixCache

    cache = _PrefixCache(max_bytes=200_000)
    preambles = [f"Workflow {i}: " + "follow the house rules carefully. " * 20 for i in range(60)]
    for i, system in enumerate(preambles):
        hashed_ngrams([(1, system), (2, "question")], cache)
        assert 0 < cache.nbytes <= cache.max_bytes
        if i == 5:
            kept = len(cache)
    assert cache.misses == 60 and len(cache) < 60
    # the newest are kept, the oldest went first
    hashed_ngrams([(1, preambles[-1]), (2, "question")], cache)
    assert cache.hits == 1
    hashed_ngrams([(1, preambles[0]), (2, "question")], cache)
    assert cache.hits == 1 and cache.misses == 61
    assert kept == 6
    # an entry larger than the whole budget is never stored
    tiny = _PrefixCache(max_bytes=1_000)
    hashed_ngrams([(1, preambles[0]), (2, "question")], tiny)
    assert len(tiny) == 0 and tiny.nbytes == 0


def test_the_prefix_cache_counts_its_bytes_as_tracemalloc_does() -> None:
    """The bound holds for real memory: the estimate (key + ids + a fixed overhead) is
    within 15% of what tracemalloc sees the entries take."""
    import tracemalloc

    from router_models.signature import _PrefixCache

    rules = "Answer in English, cite the policy section, and never reveal account keys. "
    requests = [[(1, f"Workflow {i}. " + rules * 30), (2, "question")] for i in range(200)]
    cache = _PrefixCache(max_bytes=1 << 30)
    hashed_ngrams(requests[0], _PrefixCache())  # warm up what the first call allocates
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for segments in requests:
            hashed_ngrams(segments, cache)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    traced = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(cache) == 200
    assert abs(traced - cache.nbytes) <= 0.15 * cache.nbytes, (traced, cache.nbytes)
