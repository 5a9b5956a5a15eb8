"""Runs inside one anchor's own environment: ``python drift_anchors.py ANCHOR TASK DATA.npz``.

Prints one JSON object. The anchors' pins conflict on pandas and NumPy, so
``benchmarks/drift.py`` gives each its own virtual environment and calls this
file there; it imports nothing from jaxdiv. Each anchor is used with its
documented defaults: that is what their users get.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")   # NannyML's analytics
warnings.filterwarnings("ignore")

# Evidently reports p-values for these tests and distances for the others.
_P_VALUE_TESTS = {"ks", "chisquare", "z", "fisher_exact", "g_test", "t_test", "mannw", "anderson",
                  "cramer_von_mises", "epps_singleton", "empirical_mmd", "es", "ed"}


def _frame(x, prefix="f"):
    import pandas as pd
    x = np.asarray(x)
    return pd.DataFrame({f"{prefix}{j}": x[:, j] for j in range(x.shape[1])})


def evidently_flags(ref, cur, method=None):
    """Per column, Evidently's drift decision; ``method=None`` is the preset's own choice."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    preset = DataDriftPreset() if method is None else DataDriftPreset(method=method)
    snapshot = Report([preset]).run(current_data=cur, reference_data=ref)
    flags = {}
    for m in snapshot.dict()["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith("ValueDrift"):
            v, t = m["value"], cfg["threshold"]
            flags[cfg["column"]] = (v < t) if cfg["method"] in _P_VALUE_TESTS else (v >= t)
    return flags


def nannyml_flags(ref, cur, chunk_size, method="jensen_shannon"):
    import nannyml as nml
    cols = list(ref.columns)
    calc = nml.UnivariateDriftCalculator(column_names=cols, continuous_methods=[method],
                                         categorical_methods=[method if method != "kolmogorov_smirnov" else "chi2"],
                                         chunk_size=chunk_size)
    calc.fit(ref)
    res = calc.calculate(cur).filter(period="analysis").to_df()
    return {c: bool(res[(c, method if c in cols else method, "alert")].iloc[0]) for c in cols}


def alibi_flags(ref, cur):
    from alibi_detect.cd import KSDrift
    out = []
    for j in range(ref.shape[1]):
        cd = KSDrift(ref[:, j:j + 1].astype(np.float32), p_val=0.05)
        out.append(bool(cd.predict(cur[:, j:j + 1].astype(np.float32), drift_type="feature")["data"]["is_drift"][0]))
    return out


def frouros_psi(ref, cur):
    from frouros.detectors.data_drift import PSI
    out = []
    for j in range(ref.shape[1]):
        d = PSI(num_bins=10)
        d.fit(X=ref[:, j])
        out.append(float(d.compare(X=cur[:, j])[0].distance))
    return out


def speed(anchor, data):
    ref, cur = data["ref"], data["cur"]
    best = np.inf
    for _ in range(2):
        began = time.perf_counter()
        if anchor == "evidently":
            evidently_flags(_frame(ref), _frame(cur))
        elif anchor == "nannyml":
            nannyml_flags(_frame(ref), _frame(cur), chunk_size=len(cur))
        elif anchor == "alibi-detect":
            from alibi_detect.cd import KSDrift
            KSDrift(ref, p_val=0.05).predict(cur, drift_type="feature")
        elif anchor == "frouros":
            frouros_psi(ref, cur)
        else:
            return {"skipped": "no batch drift report"}
        best = min(best, time.perf_counter() - began)
    return {"seconds": best}


def _window_flags(anchor, ref, windows):
    """Fraction of windows flagged, per rule of this anchor. ``windows`` is ``[W, n]``."""
    n = windows.shape[1]
    w = windows.shape[0]
    if anchor == "evidently":
        ref_df = _frame(np.repeat(ref[:, None], w, 1), "w")
        cur_df = _frame(windows.T, "w")
        return {"Evidently PSI > 0.1": float(np.mean(list(evidently_flags(ref_df, cur_df, "psi").values()))),
                "Evidently default": float(np.mean(list(evidently_flags(ref_df, cur_df).values())))}
    if anchor == "nannyml":
        ref_df = _frame(np.repeat(ref[:, None], w, 1), "w")
        cur_df = _frame(windows.T, "w")
        return {"NannyML JS, 3-sigma chunks": float(np.mean(list(nannyml_flags(ref_df, cur_df, n).values())))}
    if anchor == "alibi-detect":
        return {"alibi-detect KS p < 0.05": float(np.mean(alibi_flags(np.repeat(ref[:, None], w, 1), windows.T)))}
    if anchor == "frouros":
        return {"frouros PSI > 0.1": float(np.mean(np.array(frouros_psi(np.repeat(ref[:, None], w, 1), windows.T)) > 0.1))}
    return {}


def false_alarms(anchor, data):
    ref = data["ref"]
    return {str(n): _window_flags(anchor, ref, data[f"null_{n}"]) for n in data["sizes"]}


def power(anchor, data):
    ref = data["ref"]
    out = {}
    for key in data.files:
        if key.startswith("shift_"):
            out[key] = _window_flags(anchor, ref, data[key])
    if anchor in ("evidently", "nannyml"):
        ref_c, cur_c = data["cat_ref"].astype(str), data["cat_cur"].astype(str)
        w = cur_c.shape[0]
        import pandas as pd
        ref_df = pd.DataFrame({f"w{j}": ref_c for j in range(w)})
        cur_df = pd.DataFrame({f"w{j}": cur_c[j] for j in range(w)})
        if anchor == "evidently":
            out["new_category"] = {"Evidently default": float(np.mean(list(evidently_flags(ref_df, cur_df).values())))}
        else:
            out["new_category"] = {"NannyML JS, 3-sigma chunks": float(np.mean(list(
                nannyml_flags(ref_df, cur_df, cur_c.shape[1]).values())))}
    return out


def stream(anchor, data):
    if anchor != "river":
        return {}
    from river import drift
    streams, change = data["streams"], int(data["change"])
    out = {}
    for name, make in (("River ADWIN", lambda: drift.ADWIN()), ("River Page-Hinkley", lambda: drift.PageHinkley()),
                       ("River KSWIN", lambda: drift.KSWIN(seed=1))):
        false, delays, began, updates = 0, [], time.perf_counter(), 0
        for s in streams:
            d = make()
            found = None
            for i, x in enumerate(s.tolist()):
                d.update(x)
                updates += 1
                if d.drift_detected:
                    if i < change:
                        false += 1
                    elif found is None:
                        found = i - change
                        break
            delays.append(found)
        seconds = time.perf_counter() - began
        hit = [d for d in delays if d is not None]
        out[name] = {"false_alarms_per_100k": false / (len(streams) * change) * 1e5,
                     "detected": len(hit) / len(delays),
                     "median_delay": float(np.median(hit)) if hit else None,
                     "updates_per_s": updates / seconds}
    return out


def agreement(anchor, data):
    ref, cur = data["agree_ref"].astype(str), data["agree_cur"].astype(str)
    import pandas as pd
    out = {}
    if anchor == "evidently":
        from evidently import Report
        from evidently.presets import DataDriftPreset
        for method in ("psi", "kl_div", "jensenshannon"):
            snap = Report([DataDriftPreset(method=method)]).run(
                current_data=pd.DataFrame({"c": cur}), reference_data=pd.DataFrame({"c": ref}))
            out[method] = [m["value"] for m in snap.dict()["metrics"] if m["config"].get("column") == "c"][0]
    if anchor == "nannyml":
        import nannyml as nml
        calc = nml.UnivariateDriftCalculator(column_names=["c"], categorical_methods=["jensen_shannon"],
                                             chunk_size=len(cur))
        calc.fit(pd.DataFrame({"c": ref}))
        res = calc.calculate(pd.DataFrame({"c": cur})).filter(period="analysis").to_df()
        out["jensen_shannon"] = float(res[("c", "jensen_shannon", "value")].iloc[0])
    return out


if __name__ == "__main__":
    anchor, task, path = sys.argv[1:4]
    data = np.load(path, allow_pickle=False)
    result = {"speed": speed, "false_alarms": false_alarms, "power": power, "stream": stream,
              "agreement": agreement}[task](anchor, data)
    print("RESULT " + json.dumps(result))
