r"""Drift and anomaly monitoring from counts.

Bins are fitted on the reference only (:func:`fit_bins`); every window of the
data becomes counts, a ``[features, windows, bins]`` tensor made in one
jitted compare-and-reduce (:func:`count`); every statistic, p-value and
detector works on counts, so a resample costs O(bins) and states merge by
addition. Divergences go through :mod:`jaxdiv.probs` (exact in float32 however
small the drift) with a symmetric pseudo-count, so an empty bin gives neither
``inf`` nor NaN; p-values account for both sample sizes; corrections run over
features and windows.

- :func:`drift_report`: a reference against current data, or each of its
  windows (rows or time), with statistics, p-values and corrections.
- :func:`fit_bins`, :func:`count`, :func:`statistic`, :data:`STATISTICS`: the parts.
- :func:`asymptotic_p_value`, :func:`bootstrap_p_value`, :func:`adjust`,
  :func:`combine`: p-values and multiple testing.
- :func:`tumbling`, :func:`sliding`, :func:`by_time`, :func:`references`,
  :func:`chunk_thresholds`: windows and their references.
- :class:`Monitor`, :func:`merge`, :func:`save`, :func:`load`: streaming with
  CUSUM and Page-Hinkley calibrated to an average run length.

The command line: ``python -m jaxdiv.drift REFERENCE CURRENT`` (``--help``).
"""

from jaxdiv.drift._binning import Bins, count, fit_bins
from jaxdiv.drift._multiple import CORRECTIONS, adjust, combine
from jaxdiv.drift._pvalues import asymptotic as asymptotic_p_value
from jaxdiv.drift._pvalues import bootstrap as bootstrap_p_value
from jaxdiv.drift._report import DriftReport, chunk_thresholds, drift_report
from jaxdiv.drift._statistics import STATISTICS, statistic
from jaxdiv.drift._stream import Detector, Monitor, State, Window, load, merge, save
from jaxdiv.drift._windows import Windows, by_time, references, sliding, tumbling

__all__ = [
    "Bins", "CORRECTIONS", "chunk_thresholds", "Detector", "DriftReport", "Monitor", "STATISTICS", "State",
    "Window", "Windows", "adjust", "asymptotic_p_value", "bootstrap_p_value", "by_time",
    "combine", "count", "drift_report", "fit_bins", "load", "merge", "references", "save",
    "sliding", "statistic", "tumbling",
]
