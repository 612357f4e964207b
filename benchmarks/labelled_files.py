"""The labelled files the learning curve runs on (`benchmarks.learning_curve`).

`FileData` prepares one shared-format file once: rows, labels, signatures, the prior's
difficulty, the default pair and the many-model cost table. Around it, what dresses its rows
as a deployment's traffic (each task's system prompt, a workflow tag from a field of the
rows), the draws of K labelled prompts, the bandit regime's one label per prompt, and the
typical prompts the latency step times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
EXPLORE = 0.1


class FileData:
    """One labelled file, prepared once: rows, labels, signatures, prior difficulty."""

    def __init__(
        self,
        path: Path,
        tag_field: str = "",
        system_prompts: Mapping[str, str] | None = None,
        policy_prior: bool = False,
    ) -> None:
        from router_models import load_estimator, routing
        from router_models.data import label_matrix, load_dataset
        from router_models.features import prompt_text
        from router_models.learner import examples_from_rows

        ds = load_dataset([path])
        self.name = path.stem
        self.rows = ds.rows
        if system_prompts:
            self.rows = with_system_prompts(self.rows, system_prompts)
        self.prices = ds.prices
        self.labels = label_matrix(self.rows)
        self.est = load_estimator()
        self.d = self.est.difficulties([list(r.messages) for r in self.rows])
        self.examples = examples_from_rows(self.rows)
        if tag_field:
            tags = row_tags(path, self.rows, tag_field)
            self.examples = [
                dataclasses.replace(e, tag=t) for e, t in zip(self.examples, tags, strict=True)
            ]
        self.texts = [prompt_text(list(r.messages)) for r in self.rows]
        self.length = np.log1p(np.array([r.prompt_chars for r in self.rows], dtype=np.float64))
        self.strong, self.weak = routing.default_pair(self.labels, self.prices)
        self.partners = routing.pair_candidates(self.labels, self.strong, self.prices)
        self.table = routing.cost_table(self.rows, self.labels, self.prices)
        self.policy_skills = policy_skills(self.labels, self.d, self.est)
        # the learner's prior of a model the shipped prior does not know: none (it starts
        # from its labels), or with policy_prior the skill the policy routes it by, as
        # `effgate train --policy` gives it the policy's skill:
        self.policy_prior = policy_prior

    def prior_logit(self, model: str, idx: npt.NDArray[np.intp]) -> F64 | None:
        s = self.est.skills.get(model)
        if s is None and self.policy_prior:
            s = self.policy_skills.get(model)
        return None if s is None else self.est.discrimination * (s - self.d[idx])


def with_system_prompts(rows: Sequence[Any], prompts: Mapping[str, str]) -> tuple[Any, ...]:
    """The rows, each sent with its task's system prompt: ``prompts[task]``, else
    ``prompts["*"]`` with ``{task}`` replaced by the task; rows with neither are unchanged.
    Their prompt_chars (the length router's input, and the cost estimate's where the file has
    no token counts) stay the user prompt's."""
    out = []
    for r in rows:
        text = system_prompt_for(str(r.task), prompts)
        if text:
            r = dataclasses.replace(r, messages=({"role": "system", "content": text}, *r.messages))
        out.append(r)
    return tuple(out)


def system_prompt_for(task: str, prompts: Mapping[str, str]) -> str | None:
    """``prompts[task]``, else ``prompts["*"]`` with ``{task}`` replaced by the task, else
    None."""
    text = prompts.get(task)
    if text is None and "*" in prompts:
        text = prompts["*"].replace("{task}", task)
    return text


def load_system_prompts(path: Path) -> dict[str, str]:
    """A JSON object of task -> system prompt ("*": every other task, "{task}" filled in)."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in obj.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of task -> system prompt text")
    return obj


def add_system_prompts_option(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' ``--system-prompts FILE.json`` (read with `system_prompts_from`)."""
    parser.add_argument(
        "--system-prompts",
        type=Path,
        metavar="FILE.json",
        help="send each request (each row, each row heads are fitted on) with its task's system "
        "prompt (task -> text; '*' for the rest; benchmarks/system_prompts/)",
    )


def system_prompts_from(
    parser: argparse.ArgumentParser, path: Path | None
) -> dict[str, str] | None:
    """`load_system_prompts` of ``--system-prompts`` (None without it); a file that cannot be
    read is the parser's usage error."""
    if path is None:
        return None
    try:
        return load_system_prompts(path)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))


def meta_key(field: str) -> str | None:
    """A tag field's key in the rows' ``meta`` (None for ``task``); ValueError for anything
    else."""
    if field == "task":
        return None
    if not field.startswith("meta.") or len(field) == len("meta."):
        raise ValueError(f"tag field must be 'task' or 'meta.KEY', not {field!r}")
    return field[len("meta.") :]


def row_tags(path: Path, rows: Sequence[Any], field: str) -> list[str]:
    """Each row's workflow tag from ``field``: ``task``, or ``meta.KEY`` read from the file
    (rows without it get "", no tag)."""
    key = meta_key(field)
    if key is None:
        return [str(r.task) for r in rows]
    meta: dict[str, str] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict):
                continue
            # the row id as router_models.data.parse_row gives it (its place when it has none)
            row_id = obj.get("id", f"{path}:{lineno}")
            found = obj.get("meta")
            value = found.get(key) if isinstance(found, dict) else None
            meta[row_id if isinstance(row_id, str) else str(row_id)] = (
                "" if value is None else str(value)
            )
    return [meta.get(r.id, "") for r in rows]


def policy_skills(labels: Any, d: F64, est: Any) -> dict[str, float]:
    """The skills the bandit regime's policy routes by: the prior's, and for a model it does
    not know, what an operator would configure from the model's published quality: the
    skill at which the prior's mean P over the file's prompts is the model's mean score."""
    from router_models.routing import skill_from_mean

    out = {}
    for j, m in enumerate(labels.models):
        s = est.skills.get(m)
        if s is None:
            seen = labels.mask[:, j]
            s = skill_from_mean(d[seen], est.discrimination, float(labels.scores[seen, j].mean()))
        out[m] = float(s)
    return out


def bandit_labels(
    fd: FileData, idx: npt.NDArray[np.intp], rng: np.random.Generator
) -> list[dict[str, float]]:
    """One label per prompt: the prior policy's pick at a random bar, or 10% exploration."""
    from router_models.irt import irt_p

    priced = [m for m in fd.labels.models if m in fd.prices]
    price = np.array(
        [fd.prices[m].input_usd_per_mtok + fd.prices[m].output_usd_per_mtok for m in priced]
    )
    order = np.argsort(price, kind="stable")
    a = fd.est.discrimination
    skills = fd.policy_skills
    out = []
    for i in idx:
        row = fd.rows[int(i)]
        models = list(row.results)
        if rng.random() < EXPLORE or not priced:
            pick = models[int(rng.integers(len(models)))]
        else:
            bar = float(rng.choice(np.arange(1, 20) * 0.05))
            pick = None
            best, best_p = None, -1.0
            for j in order:
                m = priced[int(j)]
                if m not in row.results:
                    continue
                p = float(irt_p(a, skills[m], float(fd.d[int(i)])))
                if p >= bar:
                    pick = m
                    break
                if p > best_p:
                    best, best_p = m, p
            pick = pick or best or models[0]
        out.append({str(pick): row.results[str(pick)].score})
    return out


def draw(fd: FileData, k: int, seed: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    perm = np.random.default_rng(seed).permutation(len(fd.rows))
    return np.sort(perm[:k]), np.sort(perm[k:])


def typical_prompts(rows: Sequence[Any]) -> list[str]:
    """The user prompts of 1,000 to 2,000 characters (all of them where none is), whatever
    system prompt `--system-prompts` gave the rows."""
    from router_models.features import user_text

    texts = [user_text(list(r.messages)) for r in rows]
    return [t for t in texts if 1000 <= len(t) <= 2000] or [t for t in texts if t] or ["?"]
