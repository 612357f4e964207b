"""Learning curve of the per-deployment learner (`router_models.learner`) against baselines.

    python -m benchmarks.learning_curve [--data FILE ...] [--k 100 300 1000 3000 2000]
        [--regime full bandit] [--seeds N] [--json OUT] [--no-tfidf] [--latency-only]
        [--learner NAME=VALUE ...] [--task-tags | --tag-field FIELD] [--system-prompts FILE]
        [--policy-prior]

Protocol, per file, K and seed: draw K labelled prompts at random (seeded), train on them,
evaluate on the rest. Regimes: `full` (every model's label of the K prompts) and `bandit`
(per prompt only the model the current policy would serve: the prior's cheapest priced
model with P >= bar, bar drawn uniformly from 0.05..0.95 per prompt, and with probability
0.1 a model drawn uniformly from all of them instead; a model the prior does not know is
routed by the skill an operator would configure from its published quality, here the skill
at which the prior's mean P over the file is the model's mean score,
`labelled_files.policy_skills`). Reported on the rest:

- APGR of the default strong/weak pair (`routing.default_pair` on the whole file) and the
  mean over the pair table (`routing.pair_candidates`);
- the many-model cost to reach the best single model's quality (cheapest model with
  P >= bar, bars 0.05..0.95, on the upper hull), as a share of that model's cost;
- the Brier score over every labelled pair, of the learner and of the prior it starts from
  (the prior's P for a model it knows; for one it does not, the fallback fitted on the
  model's training labels, `design.prior_offsets`, `curve_learner.prior_p`; a model with
  neither is left out).

Routers: the learner (P(strong ok) - P(weak ok) from its heads), the prior (the shipped
estimator's raw difficulty, and its IRT gain), length, random, and the TF-IDF logistic
baseline (scikit-learn word 1-2-grams + char_wb 3-5-grams, 50,000 features each, sublinear
tf, LogisticRegression(C=2) on strong score > weak score; full regime, pairs only).
Also the serving latency of signature + heads for 8 models on typical requests.

`--learner NAME=VALUE` (repeatable) overrides one `router_models.learner.LearnerParams`
field for every fit (e.g. `--learner select=1`: rank and lam_model chosen per fit by inner
grouped CV on that fit's training draw; the choice is reported as `params`).

`--task-tags`: the learner also sees each row's `task` as the request's workflow tag, as a
deployment whose clients send `x-effgate-task` would (training and evaluation alike); the
other routers never see it. Without it (the default) every router sees the prompt only.
`--tag-field FIELD` takes the tag from another field of the file's rows: `task` (the same as
`--task-tags`) or `meta.KEY` (e.g. `meta.src`, mmlu_pro's source dataset: how much knowing
the exact workflow would be worth).

`--system-prompts FILE.json`: every row is sent with its task's system prompt (a JSON object
of task -> text; `"*"` for every other task, with `{task}` filled in), as a deployment whose
workflows each have their own system prompt would send it; every router sees it (the length
router and the cost estimate still read the user prompt's length). `benchmarks/system_prompts/`
holds one file per shared data file.

`--policy-prior`: a model the shipped prior does not know starts, in the learner and in the
prior's Brier score, from the skill the bandit policy routes it by (`policy_skills`) instead of
its training labels, as `effgate train --policy` starts it from the skill: an operator set in
the policy. That skill comes from the model's mean score over the whole file, the rest
included: it stands for an operator's published-quality figure, and is off by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.curve_learner import fit_learner, learner_p, prior_p, training_examples
from benchmarks.labelled_files import (
    FileData,
    add_system_prompts_option,
    draw,
    meta_key,
    system_prompts_from,
    typical_prompts,
)

DEFAULT_DATA = (
    Path("/work/shared/data/mmlu_pro.jsonl"),
    Path("/work/shared/data/llmrouter_train.jsonl"),
)
F64 = npt.NDArray[np.float64]


def _quiet_threads() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


class Tfidf:
    """The TF-IDF + logistic baseline (benchmark only)."""

    def __init__(self, texts: Sequence[str]) -> None:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.word = TfidfVectorizer(ngram_range=(1, 2), max_features=50000, sublinear_tf=True)
        self.char = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), max_features=50000, sublinear_tf=True
        )
        self._hstack = hstack
        self.x = self._hstack(
            [self.word.fit_transform(texts), self.char.fit_transform(texts)]
        ).tocsr()

    def transform(self, texts: Sequence[str]) -> Any:
        return self._hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def pair_score(self, ys: F64, yw: F64, sel: npt.NDArray[np.bool_], x_eval: Any) -> F64 | None:
        from sklearn.linear_model import LogisticRegression

        target = (ys[sel] > yw[sel]).astype(int)
        if target.min() == target.max():
            return None
        clf = LogisticRegression(C=2.0, max_iter=1000)
        clf.fit(self.x[sel], target)
        out: F64 = clf.predict_proba(x_eval)[:, 1]
        return out


def _apgr(score: F64, ys: F64, yw: F64) -> float:
    from router_models import routing

    return routing.pair_result(score, ys, yw).apgr


def many_models(
    fd: FileData, rest: npt.NDArray[np.intp], p_rest: F64, d_rest: F64, rand: F64
) -> dict[str, float | None]:
    """Per router, the many-model cost to reach the best single model's quality on the rest,
    as a share of its cost (None where no bar reaches it, and for every router where the
    file has fewer than two priced models scored on the same prompts)."""
    from router_models import metrics, routing

    names = ("learner", "prior", "length", "random")
    tab = fd.table
    used_rest = tab.used[rest]
    if len(tab.models) < 2 or int(used_rest.sum()) < 2:
        return dict.fromkeys(names)
    pos = np.cumsum(tab.used) - 1  # row -> position in the table
    trows = pos[rest[used_rest]]
    cost, score = tab.cost[trows], tab.score[trows]
    mc, mq = cost.mean(axis=0), score.mean(axis=0)
    best = int(np.argmax(mq))
    cols = [list(fd.labels.models).index(m) for m in tab.models]
    hit = metrics.cost_share_to_match_best(p_rest[used_rest][:, cols], cost, score)
    many: dict[str, float | None] = {"learner": None if hit is None else round(hit, 4)}
    sub_tab = routing.CostTable(tab.models, cost, score, tab.left_out, np.ones(len(trows), bool))
    for name, dd in (
        ("prior", d_rest[used_rest]),
        ("length", routing.standardise(fd.length[rest][used_rest])),
        ("random", routing.standardise(rand[used_rest])),
    ):
        m = routing.multi_result(dd, fd.est.discrimination, sub_tab).cost_to_match_best
        many[name] = None if m is None else round(m / float(mc[best]), 4)
    return many


def evaluate(
    fd: FileData, k: int, regime: str, seed: int, tfidf: bool, params: Any = None
) -> dict[str, Any]:
    from router_models import metrics, routing
    from router_models.data import LabelMatrix

    train, rest = draw(fd, k, seed)
    t0 = time.perf_counter()
    exs = training_examples(fd, train, regime, seed)
    heads, used = fit_learner(fd, train, exs, seed, params)
    fit_s = time.perf_counter() - t0
    lab = fd.labels
    rest_labels = LabelMatrix(lab.models, lab.scores[rest], lab.mask[rest])
    all_models = list(lab.models)
    p_rest = learner_p(fd, heads, rest, all_models)
    d_rest = fd.d[rest]
    rand = np.random.default_rng(seed + 7).random(rest.size)
    tf = Tfidf([fd.texts[int(i)] for i in train]) if tfidf and regime == "full" else None
    x_eval = tf.transform([fd.texts[int(i)] for i in rest]) if tf is not None else None

    def pair(weak: str) -> dict[str, float]:
        """APGR per router on the rest's rows that score both (NaN for each where fewer
        than routing.MIN_PAIR_ROWS do)."""
        js, jw = all_models.index(fd.strong), all_models.index(weak)
        sel = rest_labels.mask[:, js] & rest_labels.mask[:, jw]
        if int(sel.sum()) < routing.MIN_PAIR_ROWS:
            return dict.fromkeys(("learner", "prior", "prior_gain", "length", "random"), math.nan)
        sub = LabelMatrix(lab.models, rest_labels.scores[sel], rest_labels.mask[sel])
        ys, yw = sub.scores[:, js], sub.scores[:, jw]
        res = {
            "learner": _apgr(p_rest[sel, js] - p_rest[sel, jw], ys, yw),
            "prior": _apgr(d_rest[sel], ys, yw),
            "prior_gain": _apgr(
                routing.gain_score(
                    routing.standardise(d_rest[sel]), fd.est.discrimination, sub, fd.strong, weak
                ),
                ys,
                yw,
            ),
            "length": _apgr(fd.length[rest][sel], ys, yw),
            "random": _apgr(rand[sel], ys, yw),
        }
        if tf is not None and x_eval is not None:
            tsel = lab.mask[train, js] & lab.mask[train, jw]
            sc = tf.pair_score(lab.scores[train, js], lab.scores[train, jw], tsel, x_eval[sel])
            if sc is not None:
                res["tfidf"] = _apgr(sc, ys, yw)
        return {kk: round(v, 4) for kk, v in res.items()}

    default = pair(fd.weak)
    table = [t for t in (pair(w) for w in fd.partners) if not math.isnan(t["learner"])]
    mean_table = {
        name: round(float(np.mean([t[name] for t in table if name in t])), 4)
        for name in default
        if any(name in t for t in table)
    }
    many = many_models(fd, rest, p_rest, d_rest, rand)
    # calibration on the rest: every labelled pair, against the prior the learner started from
    p_prior = prior_p(fd, train, exs, rest)
    known = np.isfinite(p_prior) & rest_labels.mask
    brier = {
        "learner": round(metrics.brier(p_rest[known], rest_labels.scores[known]), 4),
        "prior": round(metrics.brier(p_prior[known], rest_labels.scores[known]), 4),
    }
    return {
        "file": fd.name,
        "k": k,
        "regime": regime,
        "seed": seed,
        "task_tags": any(e.tag for e in fd.examples),
        "fit_s": round(fit_s, 2),
        "params": used,
        "labels": int(heads.label_counts.sum()),
        "pair": {"strong": fd.strong, "weak": fd.weak, **default},
        "pair_table_mean": mean_table,
        "many_cost_share": many,
        "brier": brier,
    }


def latency(fd_list: Sequence[FileData], n: int = 2000, params: Any = None) -> dict[str, Any]:
    """signature + heads (8 models) on typical (1-2k character) requests, ms."""
    from router_models.learner import LearnerParams
    from router_models.signature import signature

    fd = fd_list[0]
    train, _ = draw(fd, min(2000, len(fd.rows) // 2), 0)
    # serving cost does not depend on rank or lam_model: no selection here
    base = params or LearnerParams()
    exs = training_examples(fd, train, "full", 0)
    heads, _ = fit_learner(fd, train, exs, 0, dataclasses.replace(base, select=0))
    # what a route's scorer holds: its 8 candidates' heads (router_models.estimator.Scorer)
    route = heads.subset(np.arange(min(8, len(heads.models)), dtype=np.intp))
    prompts = typical_prompts([r for f in fd_list for r in f.rows])
    rng = np.random.default_rng(0)
    system = {"role": "system", "content": "You are a helpful assistant."}
    reqs = [
        [system, {"role": "user", "content": prompts[int(rng.integers(len(prompts)))]}]
        for _ in range(n)
    ]
    est = fd.est
    for m in reqs[:200]:
        route.p(signature(m), 0.0)
    sig_t, all_t = [], []
    for m in reqs:
        t0 = time.perf_counter()
        s = signature(m)
        t1 = time.perf_counter()
        d = est._compiled.difficulty(s.dense)  # the prior from the signature's features
        route.p(s, d)
        t2 = time.perf_counter()
        sig_t.append(t1 - t0)
        all_t.append(t2 - t0)

    def pct(xs: list[float]) -> dict[str, float]:
        a = np.array(xs) * 1e3
        return {
            q: round(float(np.percentile(a, v)), 4)
            for q, v in (("p50", 50), ("p90", 90), ("p99", 99))
        }

    return {
        "requests": n,
        "models": len(route.models),
        "signature_ms": pct(sig_t),
        "signature_prior_heads_ms": pct(all_t),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_results(results: Sequence[Mapping[str, Any]]) -> str:
    routers = ("learner", "prior", "prior_gain", "length", "random", "tfidf")
    head = "file            regime  K     | default pair APGR: " + " ".join(
        f"{r:>8}" for r in routers
    )
    lines = [head]
    for r in results:
        p, t, m = r["pair"], r["pair_table_mean"], r["many_cost_share"]
        lines.append(
            f"{r['file'][:15]:15} {r['regime']:7} {r['k']:<5} | default "
            + " ".join(f"{_fmt(p.get(x)):>8}" for x in routers)
            + f" | table mean {' '.join(_fmt(t.get(x)) for x in routers)}"
            + " | many cost share "
            + " ".join(f"{x}={_fmt(m.get(x))}" for x in ("learner", "prior", "length", "random"))
            + f" | brier {r['brier']['learner']:.4f}/{r['brier']['prior']:.4f} fit {r['fit_s']}s"
        )
    return "\n".join(lines)


def aggregate(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (file, K, regime)."""
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["file"], r["k"], r["regime"]), []).append(r)
    out = []
    for (f, k, reg), rs in groups.items():

        def mean(block: str, rs: Sequence[Mapping[str, Any]] = rs) -> dict[str, float | None]:
            keys = {x for r in rs for x in r[block] if isinstance(r[block][x], float | int)}
            res: dict[str, float | None] = {}
            for x in keys:
                vals = [r[block].get(x) for r in rs]
                nums = [v for v in vals if isinstance(v, float | int)]
                res[x] = round(float(np.mean(nums)), 4) if len(nums) == len(vals) else None
            return res

        out.append(
            {
                "file": f,
                "k": k,
                "regime": reg,
                "seeds": len(rs),
                "fit_s": round(float(np.mean([r["fit_s"] for r in rs])), 2),
                "pair": {
                    "strong": rs[0]["pair"]["strong"],
                    "weak": rs[0]["pair"]["weak"],
                    **mean("pair"),
                },
                "pair_table_mean": mean("pair_table_mean"),
                "many_cost_share": mean("many_cost_share"),
                "brier": mean("brier"),
            }
        )
    return out


def main(argv: list[str]) -> int:
    _quiet_threads()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", action="append", type=Path)
    parser.add_argument("--k", nargs="+", type=int, default=[100, 300, 1000, 2000, 3000])
    parser.add_argument(
        "--regime", nargs="+", default=["full", "bandit"], choices=["full", "bandit"]
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-tfidf", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument(
        "--task-tags",
        action="store_true",
        help="the learner sees each row's task as the workflow tag (x-effgate-task)",
    )
    parser.add_argument(
        "--tag-field",
        default="",
        metavar="FIELD",
        help="the workflow tag from this field instead: task or meta.KEY (e.g. meta.src)",
    )
    add_system_prompts_option(parser)
    parser.add_argument(
        "--policy-prior",
        action="store_true",
        help="a model the shipped prior does not know starts from the skill the bandit "
        "policy routes it by, as `effgate train --policy` starts it from the policy's skill:",
    )
    parser.add_argument(
        "--learner",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one router_models.learner.LearnerParams field (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        from router_models.adapt import learner_params

        params = learner_params(args.learner)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    if args.task_tags and args.tag_field:
        parser.error("--task-tags is --tag-field task: give one of them")
    tag_field = args.tag_field or ("task" if args.task_tags else "")
    try:
        if tag_field:
            meta_key(tag_field)
    except ValueError:
        parser.error(f"--tag-field must be task or meta.KEY, not {tag_field!r}")
    system = system_prompts_from(parser, args.system_prompts)
    files = [
        FileData(p, tag_field, system, args.policy_prior) for p in (args.data or list(DEFAULT_DATA))
    ]
    print(f"prepared {len(files)} files in {time.perf_counter() - start:.1f}s", flush=True)
    results: list[dict[str, Any]] = []
    if not args.latency_only:
        for fd in files:
            for k in args.k:
                if k >= len(fd.rows) - 100:
                    continue
                for regime in args.regime:
                    for seed in range(args.seeds):
                        res = evaluate(fd, k, regime, seed, not args.no_tfidf, params)
                        results.append(res)
                        print(format_results([res]), flush=True)
    lat = latency(files, params=params)
    agg = aggregate(results)
    print("\nmean over seeds")
    print(format_results(agg))
    print("\nlatency (ms):", json.dumps(lat))
    total = round(time.perf_counter() - start, 1)
    print(f"total {total}s")
    if args.json:
        out = {"runs": results, "mean": agg, "latency": lat, "total_s": total}
        out["learner"] = args.learner
        out["task_tags"] = args.task_tags
        out["tag_field"] = tag_field
        out["system_prompts"] = str(args.system_prompts or "")
        out["policy_prior"] = args.policy_prior
        args.json.write_text(
            json.dumps(out, indent=1),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
