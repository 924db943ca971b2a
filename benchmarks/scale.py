"""Scale benchmark: the whole `mtrank run` on simulated logs, as a new user
runs it (inferred config), with wall time and peak memory per component.

    .venv/bin/python benchmarks/scale.py [--impressions 2000000] [--days 14]
        [--seed 0] [--work DIR] [--out FILE.json] [-- MTRANK_RUN_ARGS...]

The logs are written once under --work/logs (as benchmarks/simulator.py
writes them) and reused; every call runs the pipeline in a fresh work
directory, so nothing is cached. `mtrank run` is a child process; a sampler
reads the resident memory of it and its children (Beam workers, if any)
every SAMPLE_S seconds. Each component's window is its execution's
start and end as ML Metadata records them, and its peak is the largest
sample inside that window or just before or after it. Arguments after `--` go to `mtrank run`
(e.g. `--beam-arg=--direct_num_workers=2`).

Prints a Markdown table; --out writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402
import simulator  # noqa: E402

SAMPLE_S = 0.5
TOTAL = "total (mtrank run)"


class MemorySampler(threading.Thread):
    """(time, RSS bytes) of a process and its descendants, sampled until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: List[Tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop_event.is_set():
            try:
                processes = [root] + root.children(recursive=True)
                rss = 0
                for process in processes:
                    try:
                        rss += process.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.time(), rss))
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        """The highest sample from `start` to `end`, with the samples just
        before and just after: a component shorter than SAMPLE_S (the
        Pusher of a small model takes milliseconds) may hold none of its
        own, and the process's RSS then lies between those two."""
        before = [(t, rss) for t, rss in self.samples if t < start][-1:]
        after = [(t, rss) for t, rss in self.samples if t > end][:1]
        inside = [(t, rss) for t, rss in self.samples if start <= t <= end]
        return max((rss for _, rss in before + inside + after), default=0)


def component_windows(work_dir: str) -> List[Tuple[str, float, float]]:
    """(component, start, end) in seconds since the epoch, in run order."""
    from mtrank.reporting import metadata

    store = metadata.open_store(work_dir)
    return [(metadata.node_id(store, e.id), e.create_time_since_epoch / 1000,
             e.last_update_time_since_epoch / 1000)
            for e in sorted(store.get_executions(), key=lambda e: e.id)]


def run(work_dir: str, impressions: int, days: int, seed: int, run_args: List[str]) -> dict:
    work_dir = os.path.abspath(work_dir)
    log_glob = simulator.ensure_logs(work_dir, impressions, days, seed)
    run_dir = os.path.join(work_dir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [os.path.join(os.path.dirname(sys.executable), "mtrank"), "run",
               "--logs", log_glob, "--work-dir", run_dir, *run_args]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    started = time.time()
    process = subprocess.Popen(command, env=env)
    sampler = MemorySampler(process.pid)
    sampler.start()
    returncode = process.wait()
    wall_s = time.time() - started
    sampler.stop()
    if returncode:
        raise SystemExit(f"mtrank run failed ({returncode}): {' '.join(command)}")
    rows: Dict[str, Dict[str, float]] = {}
    for component, start, end in component_windows(run_dir):
        # Milliseconds, as ML Metadata stores them: a Pusher on a small model
        # takes less than the 0.1 s a table shows.
        rows[component] = {"wall_s": round(end - start, 3),
                           "peak_rss_gb": round(sampler.peak(start, end) / 1e9, 2)}
    rows[TOTAL] = {"wall_s": round(wall_s, 1), "peak_rss_gb": round(sampler.peak() / 1e9, 2)}
    with open(os.path.join(run_dir, "run_summary.json")) as f:
        summary = json.load(f)
    return {"components": rows, "impressions": impressions, "days": days, "seed": seed,
            "examples": summary.get("examples"), "tasks": summary.get("tasks"),
            "run_args": run_args, "code": quality.code_version()}


def format_table(result: dict) -> str:
    rows = [[name, f"{r['wall_s']:.1f}", f"{r['peak_rss_gb']:.2f}"]
            for name, r in result["components"].items()]
    return "\n".join([
        quality.markdown_table(["component", "wall s", "peak RSS GB"], rows),
        "",
        f"`mtrank run` on {result['impressions']:,} simulated impressions over "
        f"{result['days']} days, inferred config, fresh work directory"
        + (f", run args {' '.join(result['run_args'])}" if result["run_args"] else "") + ".",
    ])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impressions", type=int, default=2000000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join(quality.ROOT, "work", "scale_benchmark"))
    parser.add_argument("--out", help="JSON file: the rows and the run's parameters")
    args = parser.parse_args(argv)
    result = run(args.work, args.impressions, args.days, args.seed, run_args)
    table = format_table(result)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
