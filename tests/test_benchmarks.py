"""The benchmark code runs on tiny sizes, compares like with like, and reports what it measured."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import cases, linear_heads, report

SHAPE = (8, 64)


def _value_and_grads(kernel, impl, inputs):
    if impl == "torch":
        value = cases.prepare(kernel, impl, "fwd", inputs).calls[0]().float().numpy()
        grads = cases.prepare(kernel, impl, "fwd+bwd", inputs).calls[0]()
        return value.sum(), [np.asarray(g.float()) for g in grads]
    value, grads = jax.jit(cases.jax_function(kernel, impl, "fwd+bwd"))(*inputs.args[0])
    return float(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("kernel", cases.KERNELS)
def test_every_implementation_computes_the_same_quantity(kernel):
    inputs = cases.make_inputs(kernel, SHAPE)
    ours = np.asarray(jax.jit(cases.KERNELS[kernel].jaxdiv)(*inputs.args[0]))
    impls = [i for i in cases.IMPLS if i not in ("jaxdiv", "roofline") and cases.available(kernel, i, "fwd")]
    assert impls, "every kernel has at least one baseline"
    for impl in impls:
        prepared = cases.prepare(kernel, impl, "fwd", inputs)
        value = prepared.calls[0]()
        value = np.asarray(value.float() if impl == "torch" else value, np.float64)
        np.testing.assert_allclose(value, ours, rtol=2e-4, atol=1e-6, err_msg=impl)
    value, grads = _value_and_grads(kernel, "jaxdiv", inputs)
    for impl in [i for i in impls if i in ("optax", "jax", "torch")]:
        other_value, other_grads = _value_and_grads(kernel, impl, inputs)
        np.testing.assert_allclose(other_value, value, rtol=2e-4, err_msg=impl)
        for g, h in zip(grads, other_grads):
            np.testing.assert_allclose(h, g, rtol=2e-3, atol=1e-6, err_msg=impl)
    for impl in ("jaxdiv", "roofline"):
        for mode in cases.MODES:
            prepared = cases.prepare(kernel, impl, mode, inputs)
            assert prepared.temp_bytes is not None and prepared.peak_bytes > 0
            timing = cases.measure(prepared, min_calls=2, budget=0.0)
            assert timing.seconds > 0 and timing.calls == 2
    assert cases.prepare(kernel, "numpy", "fwd+bwd", inputs) is None


@pytest.mark.parametrize("kernel", cases.KERNELS)
def test_jaxdiv_is_accurate_where_the_accuracy_columns_look(kernel):
    for regime in ("ordinary", "near"):
        assert cases.relative_error(kernel, "jaxdiv", regime, rows=4, classes=256) < 1e-5, regime
    assert cases.relative_error(kernel, "jaxdiv", "near", "bfloat16", rows=4, classes=256) < 1e-5
    assert cases.relative_error(kernel, "roofline", "near") is None


def test_bfloat16_cases_exist_for_jax_and_not_for_numpy():
    inputs = cases.make_inputs("kl", SHAPE, "bfloat16")
    assert inputs.args[0][0].dtype == jnp.bfloat16
    for mode in cases.MODES:
        assert cases.prepare("kl", "jaxdiv", mode, inputs) is not None
        assert cases.prepare("kl", "optax", mode, inputs) is not None
    assert cases.prepare("kl", "numpy", "fwd", inputs) is None


def test_inputs_rotate_through_copies_that_leave_the_cache():
    small = cases.make_inputs("kl", (256, 1024))
    assert len(small.args) * 2 * small.array_bytes >= 32 << 20
    assert not np.array_equal(small.args[0][0], small.args[1][0])


def test_minimal_bytes_count_inputs_and_gradients_once():
    inputs = cases.make_inputs("kl", SHAPE, copies=2)
    array = inputs.array_bytes
    assert cases.minimal_bytes(inputs, "fwd") == 2 * array + 4 * SHAPE[0]
    assert cases.minimal_bytes(inputs, "fwd+bwd") == 4 * array
    labels = cases.make_inputs("ce_labels", SHAPE, copies=2)
    assert cases.minimal_bytes(labels, "fwd+bwd") == 2 * labels.array_bytes + SHAPE[0] * 4


def test_default_plans_cover_the_promised_sweep():
    cpu = report.plan(report.parse_args([]), "cpu")
    kl = {(shape, dtype) for kernel, shape, dtype in cpu if kernel == "kl"}
    assert {s for s, d in kl if d == "float32"} >= {(256, 1024), (4096, 32000), (1024, 128256)}
    assert any(d == "bfloat16" for _, d in kl)
    assert {k for k, _, _ in cpu} == set(cases.KERNELS)
    assert len({s for k, s, _ in cpu if k == "gaussian_kl"}) >= 3
    gpu = {s for k, s, _ in report.plan(report.parse_args([]), "gpu") if k == "ce_labels"}
    # The accelerator issue's shapes.
    assert {(16384, 131072), (8192, 128256)} <= gpu
    only = report.plan(report.parse_args(["--kernels", "js", "--dtypes", "float32"]), "cpu")
    assert only == [("js", (1024, 32000), "float32")]
    with pytest.raises(SystemExit):
        report.parse_args(["--size", "4096by32000"])


@pytest.mark.slow
def test_report_writes_json_markdown_and_plots(tmp_path, capsys):
    report.main(["--quick", "--kernels", "kl", "ce_labels", "gaussian_kl", "bce",
                 "--size", "4x8", "--sweep", "8x16", "--gaussian-size", "4x3", "--linear-sizes", "8x4x50",
                 "--linear-kernels", "linear_ce",
                 "--gaussian-sweep", "2x5", "--repeats", "1", "--budget", "0",
                 "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["platform"] == "cpu" and data["copy_bandwidth"] > 0
    assert not (tmp_path / "results.partial.json").exists()   # written as it went, gone once whole
    rows = data["results"]
    assert {r["impl"] for r in rows} >= {"jaxdiv", "optax", "jax", "numpy", "scipy", "roofline"}
    assert {(r["kernel"], tuple(r["shape"]), r["dtype"]) for r in rows} >= {
        ("kl", (4, 8), "float32"), ("kl", (8, 16), "float32"), ("kl", (4, 8), "bfloat16"),
        ("gaussian_kl", (2, 5), "float32"), ("bce", (4, 8), "float32")}
    kl_fwd = {r["impl"]: r for r in rows if r["kernel"] == "kl" and r["mode"] == "fwd"
              and r["shape"] == [4, 8] and r["dtype"] == "float32"}
    assert kl_fwd["numpy"]["speedup"] > 0 and kl_fwd["jaxdiv"]["vs_roofline"] > 0
    assert kl_fwd["jaxdiv"]["rel_err_near"] < 1e-5 and kl_fwd["optax"]["rel_err_near"] > 1e-2
    assert kl_fwd["numpy"]["peak_bytes"] > 0 and kl_fwd["jaxdiv"]["bandwidth"] > 0
    assert len(data["kl_accuracy_sweep"]) == len(cases.CLOSENESS)
    table = (tmp_path / "results.md").read_text()
    assert "KL forward vs naive NumPy (4x8 float32)" in table
    assert "| kl | 4x8 float32 | fwd |" in table and "| gaussian_kl (jax) | 4x3 float32 | fwd+bwd |" in table
    assert "| kl | 8x16 | float32 | fwd | naive NumPy |" in table
    assert "| kl | 4x8 | bfloat16 | fwd+bwd | optax |" in table
    assert "KL accuracy as Q approaches P" in table
    linear = {(r["kernel"], r["impl"]): r for r in data["linear"]}
    assert set(linear) == {("linear_ce", "fused"), ("linear_ce", "materialised"), ("linear_ce", "optax")}
    fused_ce = linear["linear_ce", "fused"]
    assert fused_ce["shape"] == [8, 4, 50] and fused_ce["time_vs_materialised"] > 0
    assert fused_ce["temp_vs_materialised"] > 0 and fused_ce["rel_err_loss"] < 1e-5
    assert "## Fused linear heads (jaxdiv.fused)" in table and "| linear_ce | 8x4x50 | float32 | fused |" in table
    assert "fused linear CE (8x4x50 float32): time" in table
    for name in ("time_vs_classes.png", "speedup.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "[  1/" in out and "KL forward / roofline proxy" in out


def test_a_case_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    measure = cases.measure

    def failing(prepared, *args):
        if prepared.host:   # stands in for an allocation failure on an accelerator
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return measure(prepared, *args)

    monkeypatch.setattr(cases, "measure", failing)
    report.main(["--quick", "--kernels", "tv", "--size", "4x8", "--repeats", "1", "--budget", "0",
                 "--linear-sizes", "--no-accuracy", "--no-plots", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["impl"] for r in data["results"]} == {"jaxdiv", "jax", "roofline"} | (
        {"torch"} if cases.torch_available() else set())
    assert [c["impl"] for c in data["skipped"]] == ["numpy"]
    assert "not measured: tv 4x8 float32 fwd naive NumPy (out of memory)" in (tmp_path / "results.md").read_text()
    # Any other failure is listed too, the other cases are still measured and
    # written, and the command exits non-zero.
    monkeypatch.setattr(cases, "measure", lambda *a: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(SystemExit, match="case.s. failed"):
        report.main(["--quick", "--kernels", "tv", "--size", "4x8", "--no-accuracy", "--no-plots",
                     "--linear-sizes", "--out", str(tmp_path)])
    assert "(failed: ValueError: a bug)" in (tmp_path / "results.md").read_text()


def test_rotation_copies_leave_the_cache_and_spare_huge_inputs():
    assert cases.rotation_copies(1 << 20) == 16
    assert cases.rotation_copies(48 << 20) == 2 and cases.rotation_copies(1 << 30) == 2
    assert cases.rotation_copies((1 << 30) + 1) == 1
    assert len(cases.make_inputs("ce_labels", SHAPE).args) == 16


def test_accuracy_sweep_shows_the_textbook_failure():
    sweep = {row["eps"]: row for row in cases.kl_accuracy_sweep(rows=8, classes=256)}
    assert sweep[1e-6]["jaxdiv"] < 1e-5
    assert sweep[1e-4]["numpy"] > 1e-2


@pytest.mark.parametrize("kernel", linear_heads.LINEAR_KERNELS)
def test_linear_heads_compute_the_same_loss_and_gradients(kernel):
    inputs = linear_heads.make_linear_inputs(kernel, (16, 8, 301))
    results = {}
    for impl in linear_heads.LINEAR_KERNELS[kernel].impls:
        value, grads = jax.jit(linear_heads.linear_function(kernel, impl, "fwd+bwd"))(*inputs.args)
        results[impl] = (float(value), [np.asarray(g) for g in grads])
    args64 = [np.asarray(a, np.float64) if a.dtype == jnp.float32 else np.asarray(a) for a in inputs.args]
    ref_value, *ref_grads = linear_heads.LINEAR_KERNELS[kernel].reference(*args64)
    for impl, (value, grads) in results.items():
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, err_msg=impl)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.max(np.abs(r)), err_msg=impl)
    errors = linear_heads.linear_accuracy(kernel, "fused", "float32", shape=(32, 16, 1001))
    assert errors["rel_err_loss"] < 1e-5 and errors["rel_err_grads"] < 1e-4
    prepared = linear_heads.prepare_linear(kernel, "fused", "fwd+bwd", inputs)
    assert prepared.temp_bytes is not None and len(prepared.calls) == 1


def test_linear_plans():
    args = report.parse_args([])
    assert report.linear_plan(args, "cpu") == [
        ("linear_ce", (2048, 1024, 32000), "float32"), ("linear_distill", (2048, 1024, 32000), "float32")]
    gpu = report.linear_plan(args, "gpu")
    assert ("linear_ce", (16384, 4096, 151936), "bfloat16") in gpu
    assert report.linear_plan(report.parse_args(["--linear-sizes"]), "cpu") == []
    with pytest.raises(SystemExit):
        report.parse_args(["--linear-sizes", "8192x1024"])


def test_the_pallas_and_liger_cases_exist_on_accelerators_only(monkeypatch):
    """On the CPU the Pallas path is the XLA one (nothing to time) and Liger needs CUDA."""
    assert not cases.available("kl", "pallas", "fwd") and not cases.available("kl", "liger", "fwd")
    monkeypatch.setattr(cases, "_accelerator", lambda: True)
    assert cases.available("kl", "pallas", "fwd") and cases.available("ce_options", "pallas", "fwd+bwd")
    assert not cases.available("renyi", "pallas", "fwd")        # no kernel: no case
    p, q = cases.make_inputs("kl", (4, 300), copies=1).args[0]
    text = jax.jit(cases.jax_function("kl", "pallas", "fwd")).trace(p, q).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text


def test_a_python_with_jax_and_the_packages_runs_the_report_as_is():
    """A GPU machine's own jax is used rather than a new environment's CPU one."""
    from benchmarks import _env

    assert _env._has(("jax", "numpy"))
    assert not _env._has(("jax", "no_such_module_here")) and not _env._has(())


def test_triton_tiles_sets_the_kernel_tiles_and_restores_them():
    from benchmarks import triton_tiles
    from jaxdiv import _pallas

    assert _pallas._triton_tiles(64, 131072, 2) == (1, 2048, 4)      # the H200's choice
    assert _pallas._triton_tiles(64, 131072, 1) == (1, 4096, 4)
    with triton_tiles.tiles(4, 512, 8, 3, 2):
        assert _pallas._triton_tiles(64, 131072, 2) == (4, 512, 8) and _pallas._TRITON_STAGES == 3
    assert _pallas._triton_tiles(64, 131072, 2) == (1, 2048, 4) and _pallas._TRITON_STAGES == 1
    with pytest.raises(SystemExit, match="needs a GPU"):
        triton_tiles.main([])
