"""A compact, non-reversible signature of a chat request, for per-deployment learning.

The gateway keeps a `Signature` in its request records instead of the prompt text; the
learner (`router_models.learner`) reads only signatures. One signature holds:

- `dense`: the estimator's dense features (`router_models.features.extract`), rounded to
  DENSE_DIGITS decimals;
- `ids` / `counts`: hashed n-gram buckets, sorted, with their counts. Word 1- and 2-grams
  go to buckets [0, WORD_BUCKETS), character 3- to 5-grams (on lowered bytes) to
  [WORD_BUCKETS, N_BUCKETS). Every n-gram hash is seeded by the role of the text it came
  from (system, user, assistant, tool, tool call, tool definitions), so the same word in a
  system prompt and in a user turn lands in different buckets. Only a fixed quarter of
  the character n-gram space is kept (by a second hash), and at most MAX_ENTRIES distinct
  buckets (the ones with the lowest priority hash: a consistent sample), so the JSON stays
  under ~4 KB whatever the prompt length;
- `n_chars`: the length of all message text; `digest`: 16 hex of sha256 of the
  normalised (lowered, whitespace runs collapsed), role-tagged text, a grouping key for
  duplicate prompts; past the request's first DIGEST_CAP characters the text is hashed as
  it is, so a prompt of megabytes costs milliseconds, not the 20-30 ms per MB of
  normalising it.

Hashes are polynomial hashes over uint8 arrays with uint64 wraparound (numpy only,
deterministic across processes; never Python's `hash()`). The text read is capped like the
features' TEXT_CAP: the first HEAD_CAP and last TAIL_CAP bytes. Bump SIGNATURE_VERSION
whenever anything here changes what a request maps to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models.features import N_DENSE, _content_text, extract

SIGNATURE_VERSION = 3
# Version 2 differs only in the digest of a request with more than DIGEST_CAP characters of
# text (it normalised all of it); version 1 also in the dense part of requests
# with a system or developer message (feature version 5 read their text with the user's).
# Their records still load, so the labels they carry are kept.
READABLE_SIGNATURE_VERSIONS = (1, 2, 3)
DIGEST_CAP = 1 << 16  # characters of a request normalised for the digest
WORD_BUCKETS = 1 << 16
CHAR_BUCKETS = 1 << 16
N_BUCKETS = WORD_BUCKETS + CHAR_BUCKETS
MAX_ENTRIES = 1200
MAX_COUNT = 255
CHAR_KEEP_SHIFT = 2  # keep 1 / 2**CHAR_KEEP_SHIFT of the character n-gram space
HEAD_CAP = 3000
TAIL_CAP = 1000
DENSE_DIGITS = 6  # decimals

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_P = np.uint64(0x100000001B3)  # odd: invertible mod 2**64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_PAIR = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_WORD_SHIFT = np.uint64(64 - 16)
_CHAR_SHIFT = np.uint64(64 - 16)
_ROLE_CODE = {"system": 1, "developer": 1, "user": 2, "assistant": 3, "tool": 4, "function": 4}
_TOOL_CALL, _TOOLS_DEF = 5, 6
_CAP = HEAD_CAP + TAIL_CAP + 16
_ROLE_OFFSET = np.arange(8, dtype=np.uint64) << np.uint64(8)
_LOW = np.uint64(0xFF)
_KEEP = np.uint64(0x9FB21C651E98DF25)
_KEEP_BELOW = np.uint64(1 << (64 - CHAR_KEEP_SHIFT))
_WORD_BUCKETS_U = np.uint64(WORD_BUCKETS)

_POW = np.ones(_CAP + 1, dtype=np.uint64)
_IPOW = np.ones(_CAP + 1, dtype=np.uint64)
with np.errstate(over="ignore"):
    _POW[1:] = np.cumprod(np.full(_CAP, _P, dtype=np.uint64), dtype=np.uint64)
    _IPOW[1:] = np.cumprod(np.full(_CAP, _P_INV, dtype=np.uint64), dtype=np.uint64)
# [a-z0-9_] and non-ASCII bytes form words (as the features' word table)
_IS_WORD = np.array(
    [(97 <= b <= 122 or 48 <= b <= 57 or b == 95 or b >= 128) for b in range(256)], dtype=np.bool_
)
_IS_WORD_BYTES = _IS_WORD.astype(np.uint8).tobytes()  # bytes.translate table: 1 for a word byte
_WS = re.compile(r"\s+")


def _mix_in_place(h: U64) -> U64:
    """splitmix64's finaliser, applied to ``h`` itself (and returned): every input bit
    reaches the top bits."""
    t = h >> _S30
    h ^= t
    h *= _MIX1
    np.right_shift(h, _S27, out=t)
    h ^= t
    h *= _MIX2
    np.right_shift(h, _S31, out=t)
    h ^= t
    return h


# a fixed pseudo-random priority per bucket, _mix_in_place(id ^ _PRIORITY_SEED): the capped sample
# keeps the lowest ones (computed for the request's buckets, not looked up in a 1 MB table)
_PRIORITY_SEED = np.uint64(0x3C6EF372FE94F82B)


def _segments(messages: Sequence[Any], tools: Sequence[Any] | None) -> list[tuple[int, str]]:
    """(role code, text) for every message part the signature reads, in order."""
    out: list[tuple[int, str]] = []
    if tools:
        out.append((_TOOLS_DEF, json.dumps(list(tools), sort_keys=True, default=str)))
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        role = m.get("role", "user")
        code = _ROLE_CODE.get(role if isinstance(role, str) else "user", 2)
        text = _content_text(m.get("content"))
        if text:
            out.append((code, text))
        calls = m.get("tool_calls")
        if calls:
            out.append((_TOOL_CALL, json.dumps(calls, sort_keys=True, default=str)))
    return out


def _bucket_ids(b: U64, isw: npt.NDArray[np.bool_]) -> npt.NDArray[np.int32]:
    """Bucket ids (int32, with repeats, unordered) of the word 1-2-grams and kept character
    3-5-grams of `b`: lowered bytes plus 256 * role code, so the role is part of every
    n-gram's hash; `isw` marks word bytes. Polynomial hashes, then multiply-shift (the top
    16 bits of h * odd).

    A word's hash is that of b[i:j] for consecutive edges i < j of the word mask: the byte
    before the word through its second-to-last byte (so "cat" and "cap" share a word bucket,
    as does every one-letter word after a space; character n-grams tell them apart). That is
    what versions 1 and 2 define, and records and heads depend on it: a fix waits for a new
    SIGNATURE_VERSION (measured at K = 2,000: no change in the learner's figures,
    docs/learner.md)."""
    n = b.shape[0]
    # prefix sums g[k] = sum_{t<k} b[t] P^-t; the hash of b[i:j] is P^(j-1) (g[j] - g[i])
    g = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(b * _IPOW[:n], out=g[1:])
    edge = (isw[1:] != isw[:-1]).nonzero()[0]
    starts, ends = edge[0::2], edge[1::2]
    wh = _POW[ends - 1] * (g[ends] - g[starts])
    words = (np.concatenate((wh, wh[:-1] * _PAIR + wh[1:])) * _MIX1) >> _WORD_SHIFT
    # the character 3-, 4- and 5-grams side by side in one buffer, kept and mixed in one pass
    sizes = [max(0, n - k + 1) for k in (3, 4, 5)]
    h = np.empty(sum(sizes), dtype=np.uint64)
    at = 0
    for k, size in zip((3, 4, 5), sizes, strict=True):
        if size:
            part = h[at : at + size]
            np.subtract(g[k:], g[:size], out=part)
            part *= _POW[k - 1 : n]
            at += size
    h = np.compress((h * _KEEP) < _KEEP_BELOW, h)  # h[mask], faster on a few thousand
    h *= _MIX2
    h >>= _CHAR_SHIFT
    h += _WORD_BUCKETS_U
    out = np.empty(words.size + h.size, dtype=np.int32)  # every id is below 2^17
    out[: words.size] = words
    out[words.size :] = h
    return out


def _distinct(ids: npt.NDArray[np.integer[Any]]) -> tuple[I64, I64]:
    """``np.unique(ids, return_counts=True)`` for bucket ids (< 2^17), a few times faster on
    a request's couple of thousand: an int32 sort, and each run's start from one comparison
    of neighbours. A writeable int32 ``ids`` is sorted in place (``_bucket_ids``' own array)."""
    s = ids if ids.dtype == np.int32 and ids.flags.writeable else ids.astype(np.int32)
    s.sort()
    edge = np.empty(s.size + 1, dtype=np.bool_)
    edge[0] = edge[-1] = True
    np.not_equal(s[1:], s[:-1], out=edge[1:-1])
    at = edge.nonzero()[0].astype(np.int64, copy=False)
    return s[at[:-1]].astype(np.int64), at[1:] - at[:-1]


def _capped(segments: list[tuple[int, str]]) -> list[tuple[int, bytes]]:
    """The segments' bytes, cut to the first HEAD_CAP and last TAIL_CAP bytes overall."""
    raw = [(c, t.encode("utf-8", "replace")) for c, t in segments]
    total = sum(len(r) for _, r in raw)
    if total <= HEAD_CAP + TAIL_CAP:
        return raw
    out: list[tuple[int, bytes]] = []
    pos = 0
    for c, r in raw:
        lo, hi = pos, pos + len(r)
        pos = hi
        head = r[: max(0, HEAD_CAP - lo)]
        tail = r[max(0, total - TAIL_CAP - lo) :] if hi > total - TAIL_CAP else b""
        if head and tail and len(head) + len(tail) >= len(r):
            out.append((c, r))
            continue
        if head:
            out.append((c, head))
        if tail:
            out.append((c, tail))
    return out


def _normalised(segments: list[tuple[int, str]]) -> str:
    """Role-tagged segments, lowered and whitespace-collapsed, for the first DIGEST_CAP
    characters of the request; past them each segment's text as it is, after its length
    (a request within the cap reads as version 2 read it)."""
    parts = []
    budget = DIGEST_CAP
    for c, t in segments:
        if len(t) <= budget:
            parts.append(f"{c}:{' '.join(t.lower().split())}")
            budget -= len(t)
        else:
            head, tail = t[:budget], t[budget:]
            # a tab, which normalised text never holds, then the rest's length: no request
            # within the cap, and no other split of this one, reads the same
            parts.append(f"{c}:{' '.join(head.lower().split())}\t{len(tail)}:{tail}")
            budget = 0
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class Signature:
    """What the learner sees of one request (no text)."""

    dense: F64  # (N_DENSE,)
    ids: I64  # sorted distinct bucket ids in [0, N_BUCKETS)
    counts: I64  # same length, in [1, MAX_COUNT]
    n_chars: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        ids, more = _encode(self.ids, self.counts)
        return {
            "v": SIGNATURE_VERSION,
            "dense": np.round(self.dense, DENSE_DIGITS).tolist(),
            "ids": ids,
            "more": more,
            "n_chars": int(self.n_chars),
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Signature:
        """Parse an untrusted JSON object; ValueError on anything malformed."""
        if not isinstance(obj, Mapping):
            raise ValueError("signature must be a JSON object")
        expected = {"v", "dense", "ids", "more", "n_chars", "digest"}
        if set(obj) != expected:
            raise ValueError(f"signature keys must be {sorted(expected)}")
        if type(obj["v"]) is not int or obj["v"] not in READABLE_SIGNATURE_VERSIONS:
            raise ValueError(f"unsupported signature version {obj['v']!r}")
        dense_raw = obj["dense"]
        if not isinstance(dense_raw, list) or len(dense_raw) != N_DENSE:
            raise ValueError(f"dense must be a list of {N_DENSE} numbers")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in dense_raw):
            raise ValueError("dense must hold numbers")
        dense = np.array(dense_raw, dtype=np.float64)
        if not np.isfinite(dense).all():
            raise ValueError("dense must be finite")
        if not isinstance(obj["ids"], str) or not isinstance(obj["more"], str):
            raise ValueError("ids and more must be base64 strings")
        ids, counts = _decode(obj["ids"], obj["more"])
        n_chars = obj["n_chars"]
        if not isinstance(n_chars, int) or isinstance(n_chars, bool) or n_chars < 0:
            raise ValueError("n_chars must be a non-negative integer")
        digest = obj["digest"]
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{16}", digest):
            raise ValueError("digest must be 16 lowercase hex characters")
        return cls(dense=dense, ids=ids, counts=counts, n_chars=n_chars, digest=digest)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"bad base64: {exc}") from None


def _varints(values: I64) -> bytes:
    """LEB128 varints of non-negative integers, vectorised: every value's (at most three,
    here: ids and counts stay below 2^21) 7-bit groups side by side, the continuation bit
    on all but a value's last, the groups it has taken in order."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if v.size and int(v.max()) >= 1 << 21:
        out = bytearray()  # wider values (never in a signature): one at a time
        for x in v.tolist():
            while x >= 0x80:
                out.append((x & 0x7F) | 0x80)
                x >>= 7
            out.append(x)
        return bytes(out)
    two, three = v >= 0x80, v >= 0x4000
    groups = np.empty((v.size, 3), dtype=np.uint8)
    groups[:, 0] = (v & 0x7F) | (two << 7)
    groups[:, 1] = ((v >> 7) & 0x7F) | (three << 7)
    groups[:, 2] = v >> 14
    taken = np.empty((v.size, 3), dtype=bool)
    taken[:, 0] = True
    taken[:, 1] = two
    taken[:, 2] = three
    return groups[taken].tobytes()


def _parse_varints(text: str, limit: int) -> I64:
    """LEB128 varints of at most 3 bytes each, base64-encoded."""
    data = _b64(text)
    if len(data) > 3 * limit:
        raise ValueError("encoded list too long")
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size and arr[-1] & 0x80:
        raise ValueError("truncated varint")
    ends = np.flatnonzero((arr & 0x80) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    if np.any(ends - starts >= 3):
        raise ValueError("varint too long")
    low = (arr & 0x7F).astype(np.int64)
    values = np.zeros(ends.size, dtype=np.int64)
    for k in range(3):
        pos = starts + k
        has = pos <= ends
        values[has] += low[pos[has]] << (7 * k)
    return values


def _encode(ids: I64, counts: I64) -> tuple[str, str]:
    """(ids, more): varints of gap << 2 | min(count, 4) - 1 (first gap from 0), then the
    varints of count - 4 for the entries whose count is at least 4; both base64."""
    gaps = ids.copy()
    gaps[1:] -= ids[:-1]
    packed = (gaps << 2) | (np.minimum(counts, 4) - 1)
    more = counts[counts >= 4] - 4
    enc = base64.b64encode
    return enc(_varints(packed)).decode(), enc(_varints(more)).decode()


def _decode(ids_text: str, more_text: str) -> tuple[I64, I64]:
    packed = _parse_varints(ids_text, MAX_ENTRIES)
    if packed.size > MAX_ENTRIES:
        raise ValueError(f"more than {MAX_ENTRIES} ids")
    gaps, counts = packed >> 2, (packed & 3) + 1
    if gaps.size > 1 and gaps[1:].min() < 1:
        raise ValueError("ids must be strictly increasing")
    ids = np.cumsum(gaps)
    if ids.size and ids[-1] >= N_BUCKETS:
        raise ValueError("bucket id out of range")
    more = _parse_varints(more_text, MAX_ENTRIES)
    big = counts == 4
    if more.size != int(big.sum()):
        raise ValueError("counts do not match ids")
    counts[big] += more
    if counts.size and counts.max() > MAX_COUNT:
        raise ValueError("count out of range")
    return ids, counts


def hashed_ngrams(segments: list[tuple[int, str]]) -> tuple[I64, I64]:
    """(sorted distinct bucket ids, counts) of (role code, text) segments' n-grams."""
    capped = _capped(segments)
    if not capped:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # bytes with a word-boundary pad each side, plus 256 * the role code of their segment
    raw = b" " + b"\n".join(r for _, r in capped).lower() + b" "
    low = np.frombuffer(raw, dtype=np.uint8)
    b = low.astype(np.uint64)
    if len(capped) == 1:
        b += _ROLE_OFFSET[capped[0][0]]
    else:
        lengths = [len(r) + 1 for _, r in capped]
        lengths[0] += 1
        b += np.repeat(_ROLE_OFFSET[[c for c, _ in capped]], lengths)
    isw = np.frombuffer(raw.translate(_IS_WORD_BYTES), dtype=np.bool_)
    uniq, counts = _distinct(_bucket_ids(b, isw))
    if uniq.size > MAX_ENTRIES:
        priority = uniq.astype(np.uint64)
        priority ^= _PRIORITY_SEED
        _mix_in_place(priority)
        # the finaliser is a bijection, so the priorities are distinct: the MAX_ENTRIES
        # lowest are those at or below the MAX_ENTRIES-th, in the ids' order
        keep = priority <= np.partition(priority, MAX_ENTRIES - 1)[MAX_ENTRIES - 1]
        uniq, counts = np.compress(keep, uniq), np.compress(keep, counts)
    return uniq, np.minimum(counts, MAX_COUNT, out=counts)


def signature(
    messages: Sequence[Any],
    tools: Sequence[Any] | None = None,
    *,
    digest: bool = True,
    dense: F64 | None = None,
) -> Signature:
    """The signature of one chat request (OpenAI messages, optional tool definitions).

    ``digest=False`` (scoring on the request path: only records need the grouping key)
    leaves ``digest`` empty and skips normalising and hashing the text. ``dense``: these
    messages' ``features.extract(messages).dense``, where the caller already has it (the
    prior's scorer computed it for the difficulty), so it is not computed again."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        messages = []
        dense = None
    segments = _segments(messages, tools)
    ids, counts = hashed_ngrams(segments)
    dense = (extract(messages).dense if dense is None else dense).round(DENSE_DIGITS)
    key = _digest(segments) if digest else ""
    n_chars = sum(len(t) for _, t in segments)
    return Signature(dense=dense, ids=ids, counts=counts, n_chars=n_chars, digest=key)


def _digest(segments: list[tuple[int, str]]) -> str:
    return hashlib.sha256(_normalised(segments).encode("utf-8", "replace")).hexdigest()[:16]


def with_digest(sig: Signature, messages: Sequence[Any], tools: Sequence[Any] | None) -> Signature:
    """``sig`` (made with ``digest=False`` from these messages and tools, as the request path
    makes it for scoring) with its digest: what ``signature(messages, tools)`` would give,
    for a fraction of its cost."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        messages = []
    return replace(sig, digest=_digest(_segments(messages, tools)))
