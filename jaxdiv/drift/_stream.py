r"""Streaming drift detection: counts as state, a divergence per window, CUSUM and Page-Hinkley.

The state is a pytree of counts (the reference, the open window, a ring of
the last closed windows) and detector sums. :meth:`Monitor.update` adds a
batch's counts, O(features x bins) of state whatever the rows; the count parts
of two states merge by addition (row shards, processes, days).
:meth:`Monitor.close_window` scores the open window against the reference
with a divergence and feeds the detectors, per feature:

- CUSUM: :math:`S_t = \max(0, S_{t-1} + x_t - \mu_0 - k)`, alarm when
  :math:`S_t > h` (then restart at 0);
- Page-Hinkley (as River's): :math:`m_t = \sum_{i \le t} (x_i - \bar x_i - \delta)`,
  alarm when :math:`m_t - \min_{i \le t} m_i > \lambda` (then restart).

:meth:`Monitor.calibrate` fixes :math:`\mu_0`, :math:`k = \sigma_0 / 2`,
:math:`\delta` and the thresholds :math:`h`, :math:`\lambda` by simulation under
no drift: many runs, each drawing a reference of the reference's size and then
windows of the given size from the reference's own histogram (multinomial),
feed the detectors for a grid of thresholds at once; the thresholds are those
whose average run length between false alarms is the requested ``arl``
windows. A reference is a sample: its own noise biases every window's
divergence the same way for the whole run, which CUSUM accumulates, so the
simulation keeps it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.drift import _binning, _statistics

Array = jax.Array


class State(NamedTuple):
    """A monitor's state; every field is an array, so it jits, saves and merges.

    Made by :meth:`Monitor.init`, advanced by :meth:`Monitor.update` and
    :meth:`Monitor.close_window`, combined by :func:`merge`.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(100.0)}, bins=4)
      >>> state = drift.Monitor(bins).init()
      >>> state.current.shape, int(state.closed)   # [features, bins], nothing closed
      ((1, 5), 0)
    """

    reference: Array   # [F, B] reference counts
    history: Array     # [K, F, B] the last K closed windows (a ring)
    current: Array     # [F, B] counts of the open window
    closed: Array      # () windows closed so far
    cusum: Array       # [F] CUSUM sums
    ph_sum: Array      # [F] Page-Hinkley cumulative deviation
    ph_min: Array      # [F] its running minimum
    ph_mean: Array     # [F] running mean of the divergence since the last restart
    ph_count: Array    # [F] windows since the last restart


class Window(NamedTuple):
    """What :meth:`Monitor.close_window` reports for each feature (every field ``[F]``).

    Attributes:
      divergence: the window's statistic against the reference.
      n: rows in the window.
      cusum: the CUSUM sum after this window.
      cusum_alarm: whether it crossed its limit.
      page_hinkley: the Page-Hinkley statistic.
      ph_alarm: whether it crossed its limit.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(100.0)}, bins=4)
      >>> monitor = drift.Monitor(bins)
      >>> state = monitor.update(monitor.init(), bins.encode({"x": np.arange(100.0)}))
      >>> state, window = monitor.close_window(state)
      >>> float(window.divergence[0]), int(window.n[0])   # the reference itself
      (0.0, 100)
    """

    divergence: Array      # [F]
    n: Array               # [F] rows in the window (non-missing or missing alike)
    cusum: Array           # [F] CUSUM sum after this window
    cusum_alarm: Array     # [F] bool
    page_hinkley: Array    # [F] m_t - min m
    ph_alarm: Array        # [F] bool


class Detector(NamedTuple):
    """Detector settings, per feature ``[F]``, as :meth:`Monitor.calibrate` sets them.

    Attributes:
      mu0: the in-control mean of the window statistic.
      k: the CUSUM allowance.
      h: the CUSUM limit.
      delta: the Page-Hinkley tolerance.
      lam: the Page-Hinkley limit.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(1000.0)}, bins=4)
      >>> monitor = drift.Monitor(bins).calibrate(window=100, arl=50)
      >>> sorted(monitor.detector._fields)
      ['delta', 'h', 'k', 'lam', 'mu0']
    """

    mu0: Array
    k: Array
    h: Array
    delta: Array
    lam: Array


def batch_counts(x, edges, *, block: Optional[int] = None):
    """``[features, B]`` counts of an encoded batch ``x [rows, features]``; jittable, any rows."""
    rows, features = x.shape
    if block is None:
        # About 2^20 values (4 MiB) per block: what the per-edge loop re-reads stays
        # in cache (2^19 was 14-25% slower at 300-3000 features). At most 4096 rows,
        # counted in int16 (100 features: 8192 rows in int32 was 20% slower), but
        # for a few features, where 8192 rows in int32 are faster (see rows_below).
        cap = 8192 if features <= 64 else 4096
        block = int(min(cap, max(64, 1 << max((1 << 20) // max(features, 1), 1).bit_length() - 1)))
    block = min(block, max(rows, 1))
    full = rows // block

    def one(b):
        b = _binning._top_is_finite(b)
        return _binning.rows_below(b, edges), jnp.sum(jnp.isnan(b), axis=0, dtype=jnp.int32)

    # Whole blocks sliced in place, then the last rows as a smaller block: padding
    # the batch to whole blocks would copy all of it.
    below = jnp.zeros(edges.shape, jnp.int32)
    missing = jnp.zeros((features,), jnp.int32)
    if full:
        below, missing = jax.lax.map(lambda i: one(jax.lax.dynamic_slice_in_dim(x, i * block, block)),
                                     jnp.arange(full))
        below, missing = below.sum(0), missing.sum(0)
    if rows > full * block:
        tail_below, tail_missing = one(x[full * block:])
        below, missing = below + tail_below, missing + tail_missing
    present = rows - missing
    steps = jnp.concatenate([jnp.zeros_like(present)[:, None], below, present[:, None]], 1)
    return jnp.concatenate([jnp.diff(steps, axis=1), missing[:, None]], 1).astype(jnp.float32)


# XLA:CPU reads a host buffer aligned to this many bytes in place; any other is
# copied first, which for a NumPy batch of 1000 features took longer than counting it.
_HOST_ALIGNMENT = 64
# Below this size the copy is cheap, and waiting for the counts would cost more.
_IN_PLACE_BYTES = 1 << 20
# NumPy batches of this many distinct row counts are each updated whole (see Monitor._row_pieces).
_WHOLE_ROW_COUNTS = 8


def _in_place_parts(x):
    """A float32 NumPy batch ``x [R, F]`` whose start is not aligned, as ``(body,
    rest, skip)``: ``body``, the aligned view of the ``(R - 1) * F`` values that
    start ``skip`` values in (so its column j holds feature (j + skip) % F, from
    consecutive rows), and ``rest``, the one row of the values left over
    (``x[0, :skip]`` and ``x[-1, skip:]``). ``()`` when ``x`` is aligned (read
    in place as it is); None when it is small or the view does not exist."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous
            and x.nbytes >= _IN_PLACE_BYTES and x.shape[0] >= 2):
        return None
    rows, features = x.shape
    offset = x.ctypes.data % _HOST_ALIGNMENT
    skip = (_HOST_ALIGNMENT - offset) // x.itemsize
    if offset == 0:
        return ()
    if offset % x.itemsize or skip > features:
        return None
    flat = x.reshape(-1)
    end = skip + (rows - 1) * features
    body = flat[skip:end].reshape(rows - 1, features)
    rest = np.concatenate([flat[:skip], flat[end:]])[None]
    return body, rest, np.int32(skip)


def _on_host(counts) -> bool:
    """Counts held, concretely, on CPU devices only: where XLA:CPU reads a NumPy batch
    in place. A traced state (``update`` under ``jit``) or one on an accelerator
    copies the batch as any argument, and need not wait for its counts."""
    return (isinstance(counts, jax.Array) and not isinstance(counts, jax.core.Tracer)
            and all(d.platform == "cpu" for d in counts.devices()))


class Monitor:
    """A streaming drift monitor over the features of :class:`~jaxdiv.drift.Bins`.

    Args:
      bins: bins fitted on the reference.
      reference: the reference table, or its ``[F, B]`` counts (default: the
        counts of the table the bins were fitted on).
      statistic: the divergence scored per window (any of :data:`STATISTICS`).
      history: how many closed windows the state keeps.
      reference_mode: ``"fixed"`` (the reference) or ``"rolling"`` (the sum of the
        kept closed windows, once there are any).
      eps: pseudo-count of the divergences.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> rng = np.random.default_rng(0)
      >>> reference = {"latency": rng.lognormal(3, 0.5, 20000)}
      >>> bins = drift.fit_bins(reference)
      >>> monitor = drift.Monitor(bins, reference).calibrate(window=500, arl=200)
      >>> state = monitor.init()
      >>> for hour in range(6):
      ...     shift = 0.6 if hour >= 4 else 0.0      # an incident from hour 4
      ...     batch = {"latency": rng.lognormal(3 + shift, 0.5, 500)}
      ...     state = monitor.update(state, bins.encode(batch))
      ...     state, window = monitor.close_window(state)
      ...     print(hour, bool(window.cusum_alarm[0]))
      0 False
      1 False
      2 False
      3 False
      4 True
      5 True
    """

    def __init__(self, bins: _binning.Bins, reference=None, *, statistic: str = "js",
                 history: int = 16, reference_mode: str = "fixed", eps: float = 0.5,
                 detector: Optional[Detector] = None):
        _statistics.check_names(statistic)
        if reference_mode not in ("fixed", "rolling"):
            raise ValueError(f"reference_mode must be 'fixed' or 'rolling', got {reference_mode!r}.")
        if not (isinstance(history, int) and history >= 1):
            raise ValueError(f"history must be a positive integer, got {history!r}.")
        self.bins = bins
        if reference is None:
            counts = jnp.asarray(bins.reference_counts, jnp.float32)
        elif isinstance(reference, (np.ndarray, jax.Array)) and np.ndim(reference) == 2 \
                and np.shape(reference) == (len(bins.columns), bins.num_bins):
            counts = jnp.asarray(reference, jnp.float32)
        else:
            counts = jnp.asarray(_binning.count(bins, reference)[:, 0], jnp.float32)
        self.reference_counts = counts
        self.statistic, self.history, self.reference_mode, self.eps = statistic, history, reference_mode, eps
        features = len(bins.columns)
        self.detector = detector if detector is not None else Detector(
            *(jnp.full((features,), v, jnp.float32) for v in (0.0, 0.0, jnp.inf, 0.0, jnp.inf)))
        self._edges = jnp.asarray(bins.edges)
        self._own = jnp.asarray(bins.own)
        self._optional = jnp.asarray(bins.optional)
        self._ordered = jnp.asarray(bins.ordered)
        self._centres = jnp.asarray(bins.centres)
        self._row_counts = set()

    def init(self, mesh=None, axis: str = "features") -> State:
        """A state with the reference counts and nothing seen yet.

        With a ``jax.sharding.Mesh``, every per-feature array is sharded over
        its ``axis``: feed :meth:`update` batches sharded as
        ``PartitionSpec(None, axis)`` and each device counts and scores its own
        features, with no collective in the compiled update or window close.

        Args:
          mesh: optional ``jax.sharding.Mesh`` to shard the state over.
          axis: the mesh axis the features are split over.

        Returns:
          A :class:`State`.
        """
        f, b = self.reference_counts.shape
        zeros = jnp.zeros((f,), jnp.float32)
        state = State(self.reference_counts, jnp.zeros((self.history, f, b), jnp.float32),
                      jnp.zeros((f, b), jnp.float32), jnp.zeros((), jnp.int32),
                      zeros, zeros, zeros, zeros, zeros)
        if mesh is None:
            return state
        from jax.sharding import NamedSharding, PartitionSpec as P

        if axis not in mesh.axis_names:
            raise ValueError(f"axis {axis!r} names no axis of the mesh {mesh.axis_names}.")
        specs = State(P(axis), P(None, axis), P(axis), P(), P(axis), P(axis), P(axis), P(axis), P(axis))
        return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), state, specs,
                            is_leaf=lambda x: isinstance(x, P))

    def update(self, state: State, x) -> State:
        """Add the counts of a batch ``x`` (``[rows, features]``, from :meth:`Bins.encode`).

        Jittable: ``x`` and ``state`` may be traced. A NumPy batch is no longer
        read when the call returns, so the caller may refill it at once: with
        the state on the CPU, a float32 batch of 1 MiB or more is read in place
        (no copy) and counted before the call returns; any other is copied.
        The first eight row counts of NumPy batches are each compiled for;
        a batch of any other count is counted in pieces of whole powers of
        two rows, so a stream of batches of ever-changing size compiles a
        few dozen programs in all, not one per batch.

        Args:
          state: the monitor's :class:`State`.
          x: ``[rows, features]`` encoded values.

        Returns:
          The :class:`State` with the batch counted into the open window.
        """
        if np.ndim(x) != 2 or np.shape(x)[1] != len(self.bins.columns):
            raise ValueError(f"expected an encoded batch [rows, {len(self.bins.columns)}], "
                             f"got shape {np.shape(x)}.")
        if not isinstance(x, np.ndarray) or isinstance(state.current, jax.core.Tracer):
            return self._update(state, x)
        for start, stop in self._row_pieces(x.shape[0]):
            state = self._update_numpy(state, x[start:stop])
        return state

    def _row_pieces(self, rows: int):
        """``[start, stop)`` pieces of a NumPy batch of ``rows`` rows, in as few
        compiled shapes as a stream allows: each jitted update compiles once per
        row count, which for batches of ever-changing size would mean a compile
        (~0.1 s) per batch. The first few row counts seen are taken whole (a
        stream of fixed-size batches compiles once); any other count goes as
        its binary digits, whole powers of two, at most one piece per bit."""
        if rows in self._row_counts or len(self._row_counts) < _WHOLE_ROW_COUNTS:
            self._row_counts.add(rows)
            return [(0, rows)]
        pieces, start = [], 0
        for bit in reversed(range(rows.bit_length())):
            if rows >> bit & 1:
                pieces.append((start, start + (1 << bit)))
                start += 1 << bit
        return pieces

    def _update_numpy(self, state: State, x: np.ndarray) -> State:
        parts = _in_place_parts(x) if _on_host(state.current) else None
        if parts is None:
            # A private copy: JAX reads an aligned NumPy array in place, and once
            # this call returns the caller may change it.
            return self._update(state, np.array(x, np.float32, order="C"))
        # XLA:CPU reads the caller's memory (the batch or its aligned view): the
        # counts are done before the caller may change it.
        new = self._update_in_place(state, *parts) if parts else self._update(state, x)
        return jax.block_until_ready(new)

    @functools.partial(jax.jit, static_argnums=0)
    def _update(self, state: State, x) -> State:
        return state._replace(current=state.current + batch_counts(x, self._edges))

    @functools.partial(jax.jit, static_argnums=0)
    def _update_in_place(self, state: State, body, rest, skip) -> State:
        # Column j of ``body`` holds feature (j + skip) % F: rotate the edges to it, the counts back.
        rotated = batch_counts(body, jnp.roll(self._edges, -skip, axis=0))
        counts = jnp.roll(rotated, skip, axis=0) + batch_counts(rest, self._edges)
        return state._replace(current=state.current + counts)

    def score(self, reference, current):
        """The monitor's statistic of ``current`` against ``reference`` counts.

        Args:
          reference, current: ``[..., F, B]`` counts.

        Returns:
          ``[..., F]`` values.
        """
        bins_in = _statistics.bins_taking_part(self._own, self._optional, reference, current)
        return _statistics.statistic(
            self.statistic, reference, current, bins_in, own=self._own & ~self._optional,
            ordered=self._ordered, centres=self._centres, eps=self.eps)

    @functools.partial(jax.jit, static_argnums=0)
    def close_window(self, state: State):
        """Score the open window, update the detectors, start a new window.

        Args:
          state: the monitor's :class:`State`.

        Returns:
          ``(state, window)``: the new :class:`State` and the closed
          window's :class:`Window` report.
        """
        if self.reference_mode == "rolling":
            kept = state.history.sum(0)
            reference = jnp.where(state.closed > 0, kept, state.reference)
        else:
            reference = state.reference
        x = self.score(reference, state.current)
        seen = state.current.sum(-1) > 0
        cusum, ph = _detect(self.detector, (state.cusum, state.ph_sum, state.ph_min, state.ph_mean,
                                            state.ph_count), x, seen)
        slot = state.closed % self.history
        state = state._replace(
            history=state.history.at[slot].set(state.current),
            current=jnp.zeros_like(state.current),
            closed=state.closed + 1,
            cusum=cusum.value, ph_sum=ph.sums[0], ph_min=ph.sums[1], ph_mean=ph.sums[2],
            ph_count=ph.sums[3])
        return state, Window(x, state.history[slot].sum(-1), cusum.value, cusum.alarm,
                             ph.value, ph.alarm)

    def calibrate(self, window: int, *, arl: float = 1000.0, simulations: int = 4000,
                  runs: int = 16, seed: int = 0) -> "Monitor":
        """A copy whose detectors have average run length ``arl`` windows under no drift.

        Args:
          window: rows per window in the stream to watch.
          arl: the wanted average number of windows between false alarms.
          simulations: null windows drawn per feature to learn the divergence's law.
          runs: detector runs simulated per feature and threshold.
          seed: the simulations' random seed.

        Returns:
          A new :class:`Monitor` with its :class:`Detector` set.
        """
        detector = calibrate_detectors(
            self.score, self.reference_counts, window, arl=arl, simulations=simulations,
            runs=runs, key=jax.random.key(seed))
        return Monitor(self.bins, self.reference_counts, statistic=self.statistic,
                       history=self.history, reference_mode=self.reference_mode, eps=self.eps,
                       detector=detector)


class _Step(NamedTuple):
    value: Array
    alarm: Array
    sums: tuple = ()


def _detect(d: Detector, carry, x, seen):
    """One CUSUM and one Page-Hinkley step per feature; windows with no rows change nothing."""
    cusum, ph_sum, ph_min, ph_mean, ph_count = carry
    s = jnp.maximum(0.0, cusum + x - d.mu0 - d.k)
    c_alarm = seen & (s > d.h)
    s = jnp.where(seen, jnp.where(c_alarm, 0.0, s), cusum)
    count = ph_count + 1
    mean = ph_mean + (x - ph_mean) / count
    total = ph_sum + x - mean - d.delta
    low = jnp.minimum(ph_min, total)
    gap = total - low
    p_alarm = seen & (gap > d.lam)
    keep = seen & ~p_alarm
    restart = lambda v, old: jnp.where(keep, v, jnp.where(p_alarm, 0.0, old))
    ph = (restart(total, ph_sum), restart(low, ph_min), restart(mean, ph_mean), restart(count, ph_count))
    return _Step(s, c_alarm), _Step(gap, p_alarm, ph)


def _share(reference_counts):
    ref = jnp.asarray(reference_counts, jnp.float32)
    return ref / jnp.maximum(ref.sum(-1, keepdims=True), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))
def _calibrate(score, reference_counts, window, simulations, runs, arl, key):
    # The reference is a sample too: each simulated run draws its own reference of
    # the same size (fixed for the whole run, as in the stream), then its windows.
    # Scoring against the observed reference as if it were the truth would miss the
    # bias a fixed, noisy reference puts into every window, which CUSUM accumulates.
    k_ref, k_pool, k_runs = jax.random.split(key, 3)
    share = _share(reference_counts)
    size = jnp.round(jnp.asarray(reference_counts, jnp.float32).sum(-1))
    refs = jax.random.multinomial(k_ref, size, share, shape=(runs,) + share.shape)           # [R, F, B]
    pool = jax.random.multinomial(k_pool, float(window), share, shape=(simulations,) + share.shape)
    null = score(refs[jnp.arange(simulations) % runs], pool)                                  # [S, F]
    mu0, sigma0 = null.mean(0), null.std(0)
    steps = int(4 * arl)
    # Thresholds on a geometric grid in units of sigma0; the run length is read off
    # by renewal (steps / alarms, restarting after each alarm), then interpolated.
    grid = jnp.geomspace(0.05, 200.0, 32)
    f = null.shape[1]
    draws = jax.random.randint(k_runs, (steps, runs, f), 0, simulations)
    feature = jnp.arange(f)
    h = grid[:, None, None] * jnp.maximum(sigma0, 1e-12)                  # [G, 1, F]
    d = Detector(mu0, 0.5 * sigma0, h, 0.5 * sigma0, h)
    zeros = jnp.zeros((grid.size, runs, f))

    def step(carry, draw):
        c, ph, alarms = carry
        x = score(refs, pool[draw, feature])                                 # [R, F]
        cu, p = _detect(d, (c,) + ph, x, jnp.ones_like(c, bool))
        return (cu.value, p.sums, alarms + jnp.stack([cu.alarm, p.alarm])), None

    init = (zeros, (zeros, zeros, zeros, zeros), jnp.zeros((2,) + zeros.shape))
    (_, _, alarms), _ = jax.lax.scan(step, init, draws)
    run_length = steps * runs / jnp.maximum(alarms.sum(2), 0.5)           # [2, G, F]
    # The smallest threshold whose run length reaches arl (log-linear between grid points).
    log_rl = jnp.log(run_length)
    target = jnp.log(arl)

    def threshold(lr):
        above = lr >= target
        i = jnp.clip(jnp.argmax(above, 0), 1, grid.size - 1)
        lo, hi = lr[i - 1, jnp.arange(f)], lr[i, jnp.arange(f)]
        t = jnp.clip((target - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
        g = jnp.exp(jnp.log(grid[i - 1]) + t * (jnp.log(grid[i]) - jnp.log(grid[i - 1])))
        return jnp.where(above.any(0), g, grid[-1]) * sigma0

    return Detector(mu0, 0.5 * sigma0, threshold(log_rl[0]), 0.5 * sigma0, threshold(log_rl[1]))


def calibrate_detectors(score, reference_counts, window, *, arl, simulations, runs, key) -> Detector:
    """Detector settings with average run length ``arl`` under no drift; see :class:`Monitor`."""
    if not (isinstance(window, (int, np.integer)) and window >= 1):
        raise ValueError(f"window must be a positive number of rows, got {window!r}.")
    if not arl >= 2:
        raise ValueError(f"arl must be at least 2 windows, got {arl!r}.")
    return _calibrate(score, reference_counts, int(window), int(simulations), int(runs),
                      float(arl), key)


def merge(a: State, b: State) -> State:
    """Add the counts of two states of one monitor (row shards of a stream, processes, days).

    The open-window and closed-window counts add. The reference is shared and
    taken from ``a``, and so are the detector sums, which are not additive:
    merge the shards' states, then close the window once.

    Args:
      a, b: states of the same monitor.

    Returns:
      The merged :class:`State`.

    Example:
      >>> import numpy as np
      >>> from jaxdiv import drift
      >>> bins = drift.fit_bins({"x": np.arange(100.0)}, bins=4)
      >>> monitor = drift.Monitor(bins)
      >>> shard = lambda rows: monitor.update(monitor.init(), bins.encode({"x": rows}))
      >>> merged = drift.merge(shard(np.arange(50.0)), shard(np.arange(50.0, 100.0)))
      >>> int(merged.current.sum())
      100
    """
    return a._replace(history=a.history + b.history, current=a.current + b.current)


def save(path, state: State) -> None:
    """Save a state with NumPy (``.npz``), to resume or merge it later.

    Args:
      path: a file name or open file (NumPy adds ``.npz`` to a name without it).
      state: the :class:`State`.

    Returns:
      None.

    Example:
      >>> import os, tempfile, numpy as np
      >>> from jaxdiv import drift
      >>> state = drift.Monitor(drift.fit_bins({"x": np.arange(10.0)}, bins=2)).init()
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> drift.save(path, state)
      >>> int(drift.load(path).closed)
      0
    """
    np.savez(path, **{name: np.asarray(v) for name, v in state._asdict().items()})


def load(path) -> State:
    """A state saved by :func:`save`.

    Args:
      path: the ``.npz`` file.

    Returns:
      The :class:`State`.

    Raises:
      ValueError: if the file is not a saved state (naming the missing fields).

    Example:
      >>> import os, tempfile, numpy as np
      >>> from jaxdiv import drift
      >>> state = drift.Monitor(drift.fit_bins({"x": np.arange(10.0)}, bins=2)).init()
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> drift.save(path, state)
      >>> drift.load(path)._fields == drift.State._fields
      True
    """
    with np.load(path) as f:
        missing = [n for n in State._fields if n not in f]
        if missing:
            raise ValueError(f"{path} is not a saved drift state: it lacks {missing}.")
        return State(*(jnp.asarray(f[n]) for n in State._fields))
