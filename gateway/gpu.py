"""GPU metrics: a Prometheus collector that reads NVML on scrape, never per request.

`GPUCollector` is a prometheus_client custom collector. Every `collect()` (one scrape) reads,
per GPU: utilisation, memory used/total, power draw and the total energy counter, and exports

    effgate_gpu_utilization_ratio{gpu,name}       0..1
    effgate_gpu_memory_used_bytes{gpu,name}
    effgate_gpu_memory_total_bytes{gpu,name}
    effgate_gpu_power_watts{gpu,name}             from nvmlDeviceGetPowerUsage (mW)
    effgate_gpu_energy_joules_total{gpu,name}     from nvmlDeviceGetTotalEnergyConsumption (mJ)
    effgate_model_gpu_energy_joules_total{model}  energy attributed to policy models

Energy attribution (docs/contracts.md): a model whose policy entry lists `local_gpus` owns those
GPUs' energy. When several models list one GPU, each scrape interval's energy delta on that GPU is
split among them by their output tokens in that interval, equally when none produced tokens.

Where there is no NVIDIA driver (nvmlInit raises NVMLError) the collector yields nothing, logs
once at INFO, and never raises; a failed call for one value skips that value only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["NVML", "GPUCollector", "load_nvml"]

log = logging.getLogger(__name__)

# pynvml.NVML_ERROR_NOT_SUPPORTED; repeated here so this module never imports pynvml eagerly.
NVML_ERROR_NOT_SUPPORTED = 3
GPU_LABELS = ("gpu", "name")


class Utilization(Protocol):
    @property
    def gpu(self) -> int: ...  # percent, 0..100


class MemoryInfo(Protocol):
    @property
    def used(self) -> int: ...  # bytes

    @property
    def total(self) -> int: ...  # bytes


class NVML(Protocol):
    """The slice of the `pynvml` module (package nvidia-ml-py) this collector calls."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...
    def nvmlDeviceGetName(self, handle: object) -> str | bytes: ...
    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization: ...
    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo: ...
    def nvmlDeviceGetPowerUsage(self, handle: object) -> int: ...  # milliwatts
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int: ...  # millijoules


def load_nvml() -> NVML | None:
    """Import the real `pynvml` module; None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    nvml: NVML = pynvml
    return nvml


@dataclass(slots=True)
class _GPU:
    """Mutable per-GPU scrape state; only touched under the collector's lock."""

    index: int
    handle: object
    name: str
    # "counter": energy is NVML's total energy counter. "integrate": the counter is not supported
    # on this GPU (pre-Volta), so energy is power integrated over scrape intervals (trapezoids).
    mode: Literal["counter", "integrate"] = "counter"
    energy_j: float | None = None
    last_power: tuple[float, float] | None = None  # (clock seconds, watts), for "integrate"
    # energy and cumulative output tokens per model at this GPU's last attribution
    attributed: tuple[float, dict[str, float]] | None = None
    labels: list[str] = field(default_factory=list)


class GPUCollector:
    """Prometheus collector for GPU power, memory, utilisation and per-model energy.

    `model_gpus()` maps model id -> GPU indices (the live policy's `local_gpus`);
    `output_tokens()` gives cumulative output tokens per model id. Both are called on scrape.

    `effgate_gpu_energy_joules_total` is NVML's total energy counter (millijoules since the
    driver loaded) in joules. On GPUs where that counter is NOT_SUPPORTED, it is instead the
    integral of power over scrape intervals (trapezoid rule between consecutive power
    readings, starting at 0 with the first scrape): coarser, and blind to spikes shorter than
    the scrape interval.
    """

    def __init__(
        self,
        nvml: NVML | None = None,
        *,
        model_gpus: Callable[[], Mapping[str, Sequence[int]]] = dict,
        output_tokens: Callable[[], Mapping[str, float]] = dict,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._model_gpus = model_gpus
        self._output_tokens = output_tokens
        self._clock = clock
        self._lock = threading.Lock()
        self._state: Literal["new", "ready", "unavailable"] = "new"
        self._gpus: list[_GPU] = []
        self._model_energy_j: dict[str, float] = {}

    def describe(self) -> list[Metric]:
        # Registration calls describe(); returning [] keeps it from calling collect() (NVML).
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._scrape()
        yield from families

    def close(self) -> None:
        """Release NVML (the gateway's lifespan calls this on shutdown)."""
        with self._lock:
            if self._state == "ready" and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    log.debug("nvmlShutdown failed", exc_info=True)
            self._state = "unavailable"
            self._gpus = []

    def _start(self) -> bool:
        if self._state != "new":
            return self._state == "ready"
        self._state = "unavailable"
        nvml = self._nvml if self._nvml is not None else load_nvml()
        if nvml is None:
            log.info("GPU metrics off: nvidia-ml-py is not installed")
            return False
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.info("GPU metrics off: NVML unavailable (%s)", exc)
            return False
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                raw = nvml.nvmlDeviceGetName(handle)
            except nvml.NVMLError as exc:
                log.info("GPU %d skipped: %s", index, exc)
                continue
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            self._gpus.append(_GPU(index, handle, name, labels=[str(index), name]))
        log.info("GPU metrics on: %d GPU(s)", len(self._gpus))
        self._state = "ready"
        return True

    def _scrape(self) -> list[Metric]:
        if not self._start():
            return []
        assert self._nvml is not None
        nvml = self._nvml
        util = GaugeMetricFamily(
            "effgate_gpu_utilization_ratio", "GPU busy time share, 0..1.", labels=GPU_LABELS
        )
        used = GaugeMetricFamily(
            "effgate_gpu_memory_used_bytes", "GPU memory in use.", labels=GPU_LABELS
        )
        total = GaugeMetricFamily(
            "effgate_gpu_memory_total_bytes", "GPU memory installed.", labels=GPU_LABELS
        )
        power = GaugeMetricFamily("effgate_gpu_power_watts", "GPU power draw.", labels=GPU_LABELS)
        energy = CounterMetricFamily(
            "effgate_gpu_energy_joules", "GPU energy consumed.", labels=GPU_LABELS
        )
        fresh: list[_GPU] = []
        for gpu in self._gpus:
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
                util.add_metric(gpu.labels, rates.gpu / 100)
            except nvml.NVMLError:
                log.debug("GPU %d utilisation unavailable", gpu.index, exc_info=True)
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(gpu.handle)
                used.add_metric(gpu.labels, memory.used)
                total.add_metric(gpu.labels, memory.total)
            except nvml.NVMLError:
                log.debug("GPU %d memory unavailable", gpu.index, exc_info=True)
            watts = self._read_power(nvml, gpu)
            if watts is not None:
                power.add_metric(gpu.labels, watts)
            if self._read_energy(nvml, gpu, watts):
                assert gpu.energy_j is not None
                energy.add_metric(gpu.labels, gpu.energy_j)
                fresh.append(gpu)
        return [util, used, total, power, energy, self._attribute(fresh)]

    def _read_power(self, nvml: NVML, gpu: _GPU) -> float | None:
        try:
            return nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000
        except nvml.NVMLError:
            log.debug("GPU %d power unavailable", gpu.index, exc_info=True)
            return None

    def _read_energy(self, nvml: NVML, gpu: _GPU, watts: float | None) -> bool:
        """Update gpu.energy_j for this scrape; False when there is no new value."""
        if gpu.mode == "counter":
            try:
                gpu.energy_j = nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) / 1000
                return True
            except nvml.NVMLError as exc:
                if gpu.energy_j is not None or getattr(exc, "value", None) != (
                    NVML_ERROR_NOT_SUPPORTED
                ):
                    log.debug("GPU %d energy unavailable", gpu.index, exc_info=True)
                    return False
                log.info("GPU %d has no energy counter; integrating power instead", gpu.index)
                gpu.mode = "integrate"
        if watts is None:
            return False
        now = self._clock()
        if gpu.last_power is None:
            gpu.energy_j = 0.0
        else:
            then, previous = gpu.last_power
            gpu.energy_j = (gpu.energy_j or 0.0) + (previous + watts) / 2 * max(now - then, 0.0)
        gpu.last_power = (now, watts)
        return True

    def _attribute(self, fresh: list[_GPU]) -> CounterMetricFamily:
        """Split each freshly read GPU's energy since its last attribution among its models."""
        owners: dict[int, list[str]] = {}
        for model, indices in self._model_gpus().items():
            self._model_energy_j.setdefault(model, 0.0)
            for index in set(indices):
                owners.setdefault(index, []).append(model)
        tokens = dict(self._output_tokens())
        for gpu in fresh:
            assert gpu.energy_j is not None
            previous = gpu.attributed
            gpu.attributed = (gpu.energy_j, tokens)
            models = owners.get(gpu.index)
            if previous is None or not models:
                continue
            delta_j = gpu.energy_j - previous[0]
            if delta_j <= 0:  # idle, or the counter restarted (driver reload): nothing to add
                continue
            produced = {m: _delta(tokens.get(m, 0.0), previous[1].get(m, 0.0)) for m in models}
            produced_total = sum(produced.values())
            for model in models:
                share = produced[model] / produced_total if produced_total else 1 / len(models)
                self._model_energy_j[model] += delta_j * share
        family = CounterMetricFamily(
            "effgate_model_gpu_energy_joules",
            "GPU energy attributed to a model (its policy local_gpus, split by output tokens).",
            labels=("model",),
        )
        for model, joules in sorted(self._model_energy_j.items()):
            family.add_metric([model], joules)
        return family


def _delta(now: float, before: float) -> float:
    """Tokens produced between two cumulative readings; a counter reset counts from zero."""
    return now - before if now >= before else now
