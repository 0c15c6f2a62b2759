"""`udaseg demo`: the domain gap on the embedded toy benchmark, on a laptop CPU.

Generates the toy benchmark if it is not cached, trains a source-only model (labelled source
images only) and a target-oracle model (labelled target images: the ceiling no UDA method is
expected to pass), evaluates both on the target val split and prints their per-class IoUs side
by side. With several seeds it reports the mean and standard deviation of each mIoU.

On a CPU the runs train concurrently, one process per core with one thread each: small models
keep two threads busy poorly, so two single-threaded runs finish sooner than two runs in a row.
A finished run in the output folder is reused and an interrupted one resumed, so running the
demo twice costs the second time only the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_RUNS = {
    # column title -> packaged config
    "source-only": "toy/source_only.yaml",
    "target oracle": "toy/oracle.yaml",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)"
    )
    parser.add_argument(
        "--toy-dir",
        help="an existing toy benchmark (udaseg make-toy --out DIR) instead of the cached default",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs trained at once on a CPU (default: the number of cores, at most the runs)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key=value",
        help="override for every run, e.g. train.steps=200",
    )


@dataclass
class Job:
    title: str
    seed: int
    config_name: str
    run_dir: Path
    overrides: list[str]
    steps: int

    @property
    def finished(self) -> bool:
        from udaseg.engine.checkpoint import step_checkpoints

        found = step_checkpoints(self.run_dir / "checkpoints")
        final = self.run_dir / "eval" / "final.json"
        return final.is_file() and bool(found) and found[-1][0] >= self.steps

    @property
    def started(self) -> bool:
        from udaseg.engine.checkpoint import LAST

        return (self.run_dir / "checkpoints" / LAST).exists()


def run(args: argparse.Namespace) -> int:
    import torch

    from udaseg.config import load_config
    from udaseg.evaluation.metrics import EvaluationResult
    from udaseg.evaluation.report import format_table, write_json

    started = time.time()
    out = Path(args.out)
    jobs = []
    for seed in args.seeds:
        for title, config_name in DEMO_RUNS.items():
            run_dir = out / f"seed{seed}" / Path(config_name).stem
            overrides = [*args.overrides, f"seed={seed}", f"run_dir={run_dir}"]
            config = load_config(config_name, overrides)
            overrides += _root_overrides(config, args.toy_dir)
            jobs.append(Job(title, seed, config_name, run_dir, overrides, config.train.steps))

    _prepare_toy(jobs, args.toy_dir)
    pending = [job for job in jobs if not job.finished]
    for job in jobs:
        if job.finished:
            print(f"[demo] {job.title}, seed {job.seed}: reusing {job.run_dir}", file=sys.stderr)
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    cores = os.cpu_count() or 1
    parallel = max(1, min(args.parallel or cores, len(pending))) if on_cpu else 1
    if pending:
        if parallel > 1:
            _train_concurrently(
                pending, parallel, threads=max(1, cores // parallel), device=args.device
            )
        else:
            _train_in_process(pending, args.device)

    results: dict[str, list[EvaluationResult]] = {title: [] for title in DEMO_RUNS}
    for job in jobs:
        final = job.run_dir / "eval" / "final.json"
        results[job.title].append(
            EvaluationResult.from_dict(json.loads(final.read_text(encoding="utf-8")))
        )

    columns = {title: _mean_result(runs) for title, runs in results.items()}
    print()
    print(format_table(columns))
    print()
    for title, runs in results.items():
        for subset in runs[0].miou:
            values = [100 * result.miou[subset] for result in runs]
            spread = ""
            if len(values) > 1:
                listed = ", ".join(f"{value:.2f}" for value in values)
                spread = (
                    f" ± {statistics.stdev(values):.2f} (std over {len(values)} seeds: {listed})"
                )
            print(f"{title:>14} {subset}: {statistics.fmean(values):.2f}{spread}")
    gap = {
        subset: 100 * (columns["target oracle"].miou[subset] - columns["source-only"].miou[subset])
        for subset in columns["source-only"].miou
    }
    gaps = ", ".join(f"{name} {value:.1f} points" for name, value in gap.items())
    print(f"\ndomain gap (oracle - source-only): {gaps}")
    print(f"demo finished in {time.time() - started:.0f} s; runs in {out}")
    write_json(
        out / "demo.json", {title: [r.to_dict() for r in runs] for title, runs in results.items()}
    )
    return 0


def _root_overrides(config, toy_dir: str | None) -> list[str]:
    """Overrides pointing the config's `toy://` dataset roots into `toy_dir`."""
    from udaseg.data.datasets.base import TOY_SCHEMES

    if toy_dir is None:
        return []
    overrides = []
    for role in ("source", "target", "val"):
        section = getattr(config.data, role)
        for scheme in TOY_SCHEMES:
            if section is not None and section.root.startswith(scheme):
                overrides.append(f"data.{role}.root={Path(toy_dir) / section.root[len(scheme) :]}")
    return overrides


def _prepare_toy(jobs: list[Job], toy_dir: str | None) -> None:
    """Generate the cached toy benchmark once, before concurrent runs would each ask for it."""
    from udaseg.data.datasets.base import resolve_root

    if toy_dir is None and any(not job.finished for job in jobs):
        started = time.time()
        resolve_root("toy://")
        elapsed = time.time() - started
        if elapsed > 1:
            print(f"[demo] toy benchmark ready in {elapsed:.0f} s", file=sys.stderr)


def _train_in_process(jobs: list[Job], device: str) -> None:
    from udaseg.config import load_config
    from udaseg.engine.trainer import train

    for job in jobs:
        print(
            f"[demo] {job.title}, seed {job.seed}: training {job.steps} steps -> {job.run_dir}",
            file=sys.stderr,
        )
        train(
            load_config(job.config_name, job.overrides), resume=job.started or None, device=device
        )


def _train_concurrently(jobs: list[Job], parallel: int, threads: int, device: str) -> None:
    """Train jobs as `udaseg train` subprocesses, `parallel` at a time, with one progress bar."""
    from tqdm import tqdm

    from udaseg.errors import UdasegError

    names = ", ".join(f"{job.title} (seed {job.seed})" for job in jobs)
    print(
        f"[demo] training {names}: {parallel} at a time, {threads} thread(s) each", file=sys.stderr
    )
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    waiting = list(jobs)
    running: list[tuple[Job, subprocess.Popen, object]] = []
    progress = tqdm(
        total=sum(job.steps for job in jobs),
        desc="demo",
        unit="step",
        file=sys.stderr,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                job = waiting.pop(0)
                job.run_dir.mkdir(parents=True, exist_ok=True)
                log = open(job.run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115
                command = [sys.executable, "-m", "udaseg", "train", job.config_name, *job.overrides]
                command += ["train.progress_bar=false", f"--device={device}"]
                if job.started:
                    command.append("--resume")
                process = subprocess.Popen(
                    command, env=environment, stdout=log, stderr=subprocess.STDOUT
                )
                running.append((job, process, log))
            time.sleep(0.5)
            progress.update(sum(_steps_done(job) for job in jobs) - progress.n)
            for entry in list(running):
                job, process, log = entry
                if process.poll() is None:
                    continue
                log.close()
                running.remove(entry)
                if process.returncode != 0:
                    tail = (
                        (job.run_dir / "train.log").read_text(encoding="utf-8").strip().splitlines()
                    )
                    reason = tail[-1] if tail else f"exit status {process.returncode}"
                    raise UdasegError(
                        f"{job.title} (seed {job.seed}) failed: {reason} (log: {job.run_dir / 'train.log'})"
                    )
    finally:
        for _, process, log in running:
            process.terminate()
            log.close()
        progress.close()


def _steps_done(job: Job) -> int:
    """The last training step logged in the run's metrics.jsonl (0 before the first log)."""
    path = job.run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text(encoding="utf-8").splitlines()[-5:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            step = max(step, int(record["step"]))
    return min(step, job.steps)


def _mean_result(runs):
    """One EvaluationResult whose IoUs are the per-class means over seeds."""
    from udaseg.evaluation.metrics import EvaluationResult

    if len(runs) == 1:
        return runs[0]
    per_class = []
    for index in range(len(runs[0].per_class_iou)):
        values = [
            run.per_class_iou[index] for run in runs if not math.isnan(run.per_class_iou[index])
        ]
        per_class.append(statistics.fmean(values) if values else math.nan)
    data = runs[0].to_dict()
    data["per_class_iou"] = [None if math.isnan(value) else value for value in per_class]
    data["miou"] = {name: statistics.fmean(run.miou[name] for run in runs) for name in runs[0].miou}
    return EvaluationResult.from_dict(data)
