"""Keys that appear one at a time: the CSV writer's cost, fabricmetrics' ``CSVLogger`` vs Fabric's.

A per-layer or per-class sweep logs a key that no earlier row had at every step. Each logger logs
``K`` rows, row ``i`` holding the one new key ``layer{i}/acc`` at step ``i``, with the loggers'
default flush every 100 rows (Fabric's logger flushes when ``(step + 1) % 100 == 0``, which steps
0, 1, 2, … meet every 100 rows), then finalizes. Both write the same ``K`` × ``K`` file. Reported:
elapsed time, the number of whole-file rewrites (fabricmetrics' writer counts them) and the final
file size. Fabric's writer parses and re-serialises every earlier row at each rewrite; fabricmetrics'
pads them with one bytes replacement.

Usage: ``python benchmarks/csv_keys.py [--keys 1000 3000] [--fabric-max 2000]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from lightning_fabric.loggers import CSVLogger as FabricCSVLogger

from fabricmetrics.loggers import CSVLogger


def run(logger_cls: type, keys: int) -> tuple[float, int | None, int]:
    root = tempfile.mkdtemp()
    logger = logger_cls(root, name="sweep", version=0)
    start = time.perf_counter()
    for step in range(keys):
        logger.log_metrics({f"layer{step}/acc": step / keys}, step=step)
    writer = logger.experiment
    logger.finalize("success")
    elapsed = time.perf_counter() - start
    size = os.path.getsize(os.path.join(logger.log_dir, "metrics.csv"))
    return elapsed, getattr(writer, "rewrites", None), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--fabric-max", type=int, default=2000, help="largest K run with Fabric's writer (slow)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'keys':>6} {'writer':<14} {'time':>9} {'rewrites':>9} {'file':>9}")
    for keys in args.keys:
        for name, cls in (("fabricmetrics", CSVLogger), ("Fabric", FabricCSVLogger)):
            if cls is FabricCSVLogger and keys > args.fabric_max:
                continue
            elapsed, rewrites, size = run(cls, keys)
            shown = "-" if rewrites is None else str(rewrites)
            print(f"{keys:>6} {name:<14} {elapsed:>8.2f}s {shown:>9} {size / 1e6:>7.1f}MB")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
