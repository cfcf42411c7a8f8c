"""The callable every submitted job runs: a submitit ``Checkpointable`` whose only state is the run directory.

``JobRunner(kind, cpus)(run_dir)`` (DESIGN.md practice 6; submitit docs, dinov2, lingua):

1. returns at once when ``<run_dir>/DONE`` exists (a requeued or resubmitted job that already finished);
2. publishes the torch.distributed variables from the submitit/SLURM environment
   (:func:`launcher.submit.export_distributed_env`) and joins the process group
   (:func:`ecg_core.distributed.init_distributed`: NCCL on GPU, gloo on CPU, or one local process);
3. reads the job's typed config from ``<run_dir>/config.yaml`` and calls ``jobs.<kind>.run(cfg, run_dir)``;
4. when every rank has returned, rank 0 writes ``DONE`` (JSON: kind, time, host, job id, world size).

Preemption and time limits: SLURM sends ``USR2`` (``--signal``) before the limit or on preemption. For
kinds whose loop checkpoints (:data:`jobs.RESUMABLE`) the runner replaces submitit's handler by one that
only sets :mod:`ecg_core.preemption`'s flag; the loop saves collectively at the next step and raises
:class:`~ecg_core.preemption.Preempted`; the runner then hands over to submitit's own handler, which calls
:meth:`checkpoint` (a resubmission of this same callable) and requeues the job (``scontrol requeue``).
The requeued job finds the checkpoint and resumes. Other kinds keep submitit's handler: they requeue at
once and start again (they are short and idempotent). An external ``scontrol requeue`` kills the job
(submitit ignores SIGTERM) and the requeued job resumes from the last periodic checkpoint.

torch 2.13 CPU processes sometimes abort in C++ static destructors at exit ("terminate called without an
active exception"), which SLURM would record as a failed job even though it finished: after ``DONE`` and
submitit's result file are written, a job process leaves with ``os._exit(0)`` (only inside a submitit job).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ecg_core.atomic import write_json_atomic
from launcher.submit import Checkpointable, export_distributed_env, job_id_in_job

__all__ = ["DONE", "JobRunner", "read_done"]

DONE = "DONE"
log = logging.getLogger(__name__)


def read_done(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``DONE`` marker's content, or None when the job has not finished (a damaged marker still counts
    as finished: it is written last, after the job's outputs)."""
    path = Path(run_dir) / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"kind": "unknown", "note": f"{path} is not JSON"}


class JobRunner(Checkpointable):
    """Runs one job kind in a run directory; requeue-safe (see the module docstring)."""

    def __init__(self, kind: str, cpus: int = 1) -> None:
        self.kind = kind
        self.cpus = int(cpus)

    def __call__(self, run_dir: str) -> dict[str, Any]:
        # Imports here: the launcher process does not need torch to plan and submit.
        import torch

        from ecg_core import distributed as D
        from ecg_core import preemption
        from ecg_core.config import from_yaml
        from jobs import RESUMABLE, job_function
        from jobs.config import JOB_CONFIGS, JOB_ID_ENV

        path = Path(run_dir)
        done = read_done(path)
        if done is not None:
            return done
        in_submitit = job_id_in_job() is not None
        os.environ[JOB_ID_ENV] = job_id_in_job() or ""
        export_distributed_env()
        torch.set_num_threads(max(1, self.cpus))
        cfg = from_yaml(JOB_CONFIGS[self.kind], path / "config.yaml")
        run = job_function(self.kind)

        submitit_handler = signal.getsignal(signal.SIGUSR2)
        own_handler = in_submitit and self.kind in RESUMABLE and callable(submitit_handler)
        if own_handler:
            preemption.clear()
            signal.signal(signal.SIGUSR2, preemption.request_stop)
        info = D.init_distributed()
        try:
            run(cfg, path)
            D.barrier()
            if info.is_main:
                marker = {"kind": self.kind, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "host": socket.gethostname(), "job_id": job_id_in_job(), "world_size": info.world_size}
                write_json_atomic(path / DONE, marker)
            D.barrier()
        except preemption.Preempted as stop:
            log.warning("%s: %s; requeueing", path, stop)
            D.teardown()
            if own_handler:
                sys.stdout.flush()
                sys.stderr.flush()
                if info.is_main:
                    submitit_handler(signal.SIGUSR2, None)   # checkpoint() + scontrol requeue + exit
                time.sleep(300)   # other ranks wait to be stopped by the requeue
            raise
        finally:
            D.teardown()
        if in_submitit:
            atexit.register(_leave_now)
        return read_done(path) or {"kind": self.kind}


def _leave_now() -> None:
    """Skip interpreter/C++ teardown once the job's result is safely written (see module docstring)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(0)
