"""Data parallelism without gathering: every public kernel, loss and fused head,
forward and value+grad, compiled with its batch sharded over 4 host devices
(value+grad, which holds the forward, over 8).

Each device count runs in its own process (``tests/many_devices.py``), so the
count does not leak into the rest of the suite; the three run at once.
"""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks import many_devices
from benchmarks.many_devices import CLASSES, HIDDEN, ROWS

COUNTS = (4, 8)
# The fused heads' weight is replicated under data parallelism: its gradient is
# summed over the devices (the all-reduce every data-parallel step makes), and
# every device reads all of it.
WEIGHT = HIDDEN * CLASSES
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reports():
    with ThreadPoolExecutor(3) as pool:
        found = list(pool.map(many_devices.run, (1,) + COUNTS))
    return {r["devices"]: r["programs"] for r in found}


@pytest.mark.slow
def test_data_parallel_programs(reports):
    # One test for the three checks of the compiled programs: as three tests, the
    # xdist workers could each measure them (160-200 s each, twice in one run).
    failures = {check.__name__: check(reports) for check in
                (collectives_growing_with_the_classes, devices_holding_more_than_their_shard,
                 work_that_does_not_divide)}
    assert not any(failures.values()), failures


def collectives_growing_with_the_classes(reports):
    # O(rows) scalars at most; before, an all-gather of the whole [rows, C] logits.
    # With the classes split over a model axis too ("[vocabulary]"), the
    # partitioner combines per-row partial statistics: all-reduces of rows.
    bad = [] if any(name.endswith("[vocabulary]") for name in reports[4]) else ["no [vocabulary] programs"]
    for n in COUNTS:
        for name, entry in reports[n].items():
            for op, elements in entry["collectives"]:
                allowed = WEIGHT + 1 if name.startswith("fused.") and op == "all-reduce" else 2 * ROWS
                if elements > allowed:
                    bad.append((n, name, op, elements))
    return bad


def devices_holding_more_than_their_shard(reports):
    bad = []
    for n in COUNTS:
        for name, entry in reports[n].items():
            # the largest array divides too (the fused heads' replicated weight aside)
            single = reports[1][name.replace(" [vocabulary]", "")]["largest"]
            allowed = max(single // n, WEIGHT if name.startswith("fused.") else 0)
            if entry["largest"] > allowed:
                bad.append((n, name, entry["largest"], allowed))
    return bad


def work_that_does_not_divide(reports):
    # Each device's compiled flops are 1/N of the single-device program's. XLA
    # counts a loop body once whatever its trip count; the CPU's blocks here take
    # the same number of steps on 1, 4 and 8 devices, so the counts compare.
    # Bytes too, but for the fused heads: every device reads the whole weight.
    # JS value+grad's partitioned program repeats some adds and multiplies in
    # its fusions (+14%; its exponentials and logs divide exactly). A few KiB of
    # per-device overhead (scalars, constants) are allowed for the small programs.
    # The Pallas path's programs are left out: each device's part is a program
    # of its own (custom partitioning), whose CPU blocks are sized for its rows,
    # so loop bodies counted once do not compare; their collectives and array
    # sizes are checked above.
    bad = []
    for n in COUNTS:
        for name, entry in reports[n].items():
            if "[pallas]" in name:
                continue
            one = reports[1][name.replace(" [vocabulary]", "")]
            # (the vocabulary split adds the per-row combination of partial sums)
            bound = 1.15 if name.startswith("js_") or name.endswith("[vocabulary]") else 1.10
            if entry["flops"] > bound * one["flops"] / n + 1024:
                bad.append((n, name, "flops", entry["flops"] * n / one["flops"]))
            if not name.startswith("fused.") and entry["bytes"] > 1.10 * one["bytes"] / n + 4096:
                bad.append((n, name, "bytes", entry["bytes"] * n / one["bytes"]))
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vocabulary_parallel_matches_whole_rows(dtype):
    # Inside shard_map on a (data=2, model=2) mesh, every kernel and loss with
    # axis_name="model" against whole rows: values, reverse-mode gradients, and
    # (float32) forward-mode derivatives; -inf entries, masks, labels on the
    # other shard, ties at the maximum across shards, whole shards of -inf, NaN.
    result = subprocess.run([sys.executable, "-m", "tests.vocab_parallel", dtype], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert found["mismatches"] == []
    assert "names no mesh axis here" in found["unbound"]


@pytest.mark.slow
def test_two_processes_on_the_distributed_runtime():
    # Two processes on localhost (jax.distributed, gloo over loopback), each
    # owning half of the vocabulary; every loss and gradient equals the
    # single-process one within float32 rounding, and both processes stop.
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.two_processes", str(i), str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()
    assert sorted(o["process"] for o in outputs) == [0, 1]
    for found in outputs:
        assert found["devices"] == 4
        for name, errors in found["worst"].items():
            assert max(errors) <= 1e-6, (found["process"], name, errors)
