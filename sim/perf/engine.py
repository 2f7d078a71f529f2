"""The simpy event engine: one device's HBM, matrix engine, vector units and scale-up link as resources.

A kernel is a process: after its fixed cost (launch, prologue) a *loader* streams the plan's chunks from HBM into a
bounded set of buffers (``simpy.Container``; 2 = double buffering) and a *worker* takes each loaded chunk through
dequantization (vector units; the part that cannot hide under matrix work occupies the matrix engine too), then
the matrix engine (or the vector units), then writes results back through the same HBM resource, which loads of
later chunks contend with. Every busy interval is recorded with its category; the kernel's time is then split
into exposed hbm / matrix / vector / dequant / link / overhead time (each instant charged to one category, the
busiest first) so that the parts add up to the kernel time and the largest names what bounds it.

Time unit: seconds (float) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from sim.perf.kernels import KernelPlan

CATEGORIES = ("hbm", "matrix", "vector", "dequant", "link", "overhead")
BOUND_NAMES = {"hbm": "hbm", "matrix": "compute", "vector": "vector", "dequant": "dequant", "link": "link",
               "overhead": "overhead"}


@dataclass(frozen=True)
class KernelTiming:
    """Simulated time of one kernel and its split into exposed time per category (sums to time_s)."""

    time_s: float
    hbm_s: float
    matrix_s: float
    vector_s: float
    dequant_s: float
    link_s: float
    overhead_s: float
    busy: dict

    @property
    def bound(self) -> str:
        parts = {c: getattr(self, f"{c}_s") for c in CATEGORIES}
        return BOUND_NAMES[max(parts, key=parts.get)]

    def split(self) -> dict[str, float]:
        return {f"{c}_s": getattr(self, f"{c}_s") for c in CATEGORIES}


class Device:
    """The resources of one device in one simpy environment, and the record of what used them."""

    def __init__(self, env: simpy.Environment, record: bool = True):
        self.env = env
        self.hbm = simpy.Resource(env, capacity=1)
        self.matrix = simpy.Resource(env, capacity=1)
        self.vector = simpy.Resource(env, capacity=1)
        self.link = simpy.Resource(env, capacity=1)
        self.record = record
        self.intervals: list[tuple[str, float, float, str]] = []  # (category, start, end, kernel name)

    def use(self, resource: simpy.Resource, category: str, duration_s: float, kernel: str):
        """Process: hold ``resource`` for ``duration_s`` and record the interval under ``category``."""
        if duration_s <= 0.0:
            return
        with resource.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(duration_s)
            if self.record:
                self.intervals.append((category, start, self.env.now, kernel))


def kernel_process(dev: Device, plan: KernelPlan):
    """simpy process running one kernel plan on ``dev`` (see the module docstring)."""
    env = dev.env
    start = env.now
    if plan.fixed_s > 0.0:
        yield env.timeout(plan.fixed_s)
        if dev.record:
            dev.intervals.append(("overhead", start, env.now, plan.name))
    if plan.link_s > 0.0:
        yield env.process(dev.use(dev.link, "link", plan.link_s, plan.name))
    if not plan.chunks:
        return
    free = simpy.Container(env, capacity=plan.buffers, init=plan.buffers)
    loaded = simpy.Store(env)

    def loader():
        for chunk in plan.chunks:
            yield free.get(1)
            yield env.process(dev.use(dev.hbm, "hbm", chunk.load_bytes / chunk.load_rate_bytes_per_s, plan.name))
            yield loaded.put(chunk)

    expanded = simpy.Store(env)

    def expander():
        # vector-unit stage (INT4 -> FP8/BF16 expansion, or attention's softmax) that overlaps matrix work
        for _ in plan.chunks:
            chunk = yield loaded.get()
            if chunk.dequant_hidden_s > 0.0:
                yield env.process(dev.use(dev.vector, chunk.side_category, chunk.dequant_hidden_s, plan.name))
            yield expanded.put(chunk)

    def worker():
        pending_writes = []
        for _ in plan.chunks:
            chunk = yield expanded.get()
            res = dev.matrix if chunk.compute_resource == "matrix" else dev.vector
            if chunk.dequant_serial_s > 0.0:
                yield env.process(dev.use(res, "dequant", chunk.dequant_serial_s, plan.name))
            yield env.process(dev.use(res, chunk.compute_resource, chunk.compute_s, plan.name))
            yield free.put(1)
            if chunk.write_bytes > 0.0:
                pending_writes.append(env.process(
                    dev.use(dev.hbm, "hbm", chunk.write_bytes / chunk.write_rate_bytes_per_s, plan.name)))
        if pending_writes:
            yield simpy.AllOf(env, pending_writes)

    procs = [env.process(loader()), env.process(expander()), env.process(worker())]
    yield simpy.AllOf(env, procs)


def split_timeline(intervals, start: float, end: float) -> dict[str, float]:
    """Charge every instant of [start, end] to one category: the busiest of those active, idle -> overhead."""
    busy = {c: 0.0 for c in CATEGORIES}
    for cat, s, e, _ in intervals:
        busy[cat] += e - s
    order = sorted(CATEGORIES, key=lambda c: (c == "overhead", -busy[c]))
    rank = {c: i for i, c in enumerate(order)}
    edges = []
    for cat, s, e, _ in intervals:
        edges.append((s, 1, cat))
        edges.append((e, -1, cat))
    edges.sort(key=lambda x: (x[0], x[1]))
    active = {c: 0 for c in CATEGORIES}
    exposed = {c: 0.0 for c in CATEGORIES}
    t_prev = start
    for t, delta, cat in edges:
        if t > t_prev:
            live = [c for c in CATEGORIES if active[c] > 0]
            owner = min(live, key=rank.get) if live else "overhead"
            exposed[owner] += t - t_prev
            t_prev = t
        active[cat] += delta
    if end > t_prev:
        exposed["overhead"] += end - t_prev
    return exposed, busy


def run_kernel(plan: KernelPlan) -> KernelTiming:
    """Simulate one kernel alone on a fresh device and return its timing split."""
    env = simpy.Environment()
    dev = Device(env)
    env.process(kernel_process(dev, plan))
    env.run()
    exposed, busy = split_timeline(dev.intervals, 0.0, env.now)
    return KernelTiming(time_s=env.now, busy=busy, **{f"{c}_s": exposed[c] for c in CATEGORIES})


def run_sequence(plans: list[KernelPlan]) -> tuple[float, Device]:
    """Simulate kernels back to back on one stream (for traces); returns end time and the device record."""
    env = simpy.Environment()
    dev = Device(env)

    def stream():
        for plan in plans:
            yield env.process(kernel_process(dev, plan))

    env.process(stream())
    env.run()
    return env.now, dev
