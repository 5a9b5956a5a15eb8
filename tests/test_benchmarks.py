"""The benchmark code runs (on tiny sizes) and reports what it measured."""

import json

import numpy as np
import pytest

from benchmarks import cases, report


@pytest.mark.parametrize("kernel", cases.KERNELS)
def test_every_case_runs_and_agrees(kernel):
    inputs = cases.make_inputs(8, 16)
    values = {}
    for impl in ("jaxdiv", "optax", "numpy", "scipy"):
        if impl not in cases.FORWARD[kernel]:
            assert cases.callables(kernel, impl, "fwd", inputs) is None
            continue
        if impl in ("numpy", "scipy"):
            values[impl] = np.asarray(cases.callables(kernel, impl, "fwd", inputs)[0]())
        else:
            values[impl] = np.asarray(cases.jitted(kernel, impl, "fwd")(*cases._args(kernel, inputs, 0)))
    np.testing.assert_allclose(values["jaxdiv"], values["optax"], rtol=1e-4, atol=1e-6)
    for impl in set(values) - {"jaxdiv", "optax"}:
        np.testing.assert_allclose(values["jaxdiv"], values[impl], rtol=1e-4, atol=1e-6)
    for impl in ("jaxdiv", "optax", "roofline"):
        assert cases.median_time(cases.callables(kernel, impl, "fwd+bwd", inputs), 1) > 0
        assert cases.temp_bytes(kernel, impl, "fwd+bwd", inputs) is not None
    assert cases.callables(kernel, "numpy", "fwd+bwd", inputs) is None


def test_report_writes_json_and_markdown(tmp_path, capsys):
    report.main(["--rows", "4", "--classes", "8", "--gaussian-batch", "4", "--gaussian-dims", "3",
                 "--repeats", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["impl"] for r in data["results"]} == {"jaxdiv", "optax", "numpy", "scipy", "roofline"}
    assert len(data["kl_accuracy_sweep"]) == len(cases.CLOSENESS)
    table = (tmp_path / "results.md").read_text()
    assert "| kl | 4x8 | fwd | jaxdiv |" in table and "| gaussian_kl | 4x3 | fwd+bwd |" in table
    assert "| js | 4x8 | fwd | scipy |" in table and "| hellinger | 4x8 | fwd | hand-written JAX |" in table
    assert "KL accuracy as Q approaches P" in table
    assert "| ce_options | 4x8 | fwd+bwd | optax + one-hot + mask |" in table and "| distill | 4x8 | fwd |" in table
    assert "Cross-entropy options (smoothing + z-loss + ignore index)" in table
    assert "jaxdiv speed-up" in capsys.readouterr().out


def test_accuracy_sweep_shows_the_textbook_failure():
    sweep = {row["eps"]: row for row in cases.kl_accuracy_sweep(rows=8, classes=256)}
    assert sweep[1e-6]["jaxdiv"] < 1e-5
    assert sweep[1e-4]["numpy"] > 1e-2
