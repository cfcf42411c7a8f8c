"""The job types of a grid's DAG: ``JOBS[kind]`` names the module whose ``run(cfg, run_dir)`` does the work.

Each job reads its typed config (``jobs.config.JOB_CONFIGS[kind]``) from ``<run_dir>/config.yaml``, keeps
all of its state under ``run_dir`` and is idempotent: run again, it resumes (or redoes) its work; the
runner (:mod:`launcher.runner`) writes the ``DONE`` marker when ``run`` returns on every rank.
Modules are imported when a job runs, so the launcher does not pay for torch/matplotlib imports it
does not need.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["JOBS", "RESUMABLE", "job_function"]

JOBS: dict[str, str] = {
    "pretrain": "jobs.pretrain",
    "linear_eval": "jobs.linear_eval",
    "finetune": "jobs.finetune",
    "frozen_attention": "jobs.frozen_attention",
    "robustness": "jobs.robustness",
    "aggregate": "jobs.aggregate",
}
"""Stage kind -> module defining ``run(cfg, run_dir)``."""

RESUMABLE = frozenset({"pretrain", "finetune", "frozen_attention"})
"""Kinds whose loop checkpoints at the next step after a preemption signal and resumes from it. The
others are short; a signal requeues them at once and they start again."""


def job_function(kind: str) -> Callable[[Any, Path], None]:
    """The ``run`` function of a job kind (ValueError naming the known kinds for an unknown one)."""
    if kind not in JOBS:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(JOBS)}")
    return importlib.import_module(JOBS[kind]).run
