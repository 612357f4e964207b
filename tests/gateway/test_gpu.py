"""GPUCollector against an injected fake NVML (2 GPUs, GPU 0 shared by two models)."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field

import pynvml
import pytest
from prometheus_client import CollectorRegistry

from gateway.gpu import GPUCollector

# "small" runs on GPU 0; "big" on GPUs 0 and 1, so GPU 0 is shared by both.
MODEL_GPUS = {"small": [0], "big": [0, 1]}


@dataclass
class FakeUtilization:
    gpu: int
    memory: int = 0


@dataclass
class FakeMemory:
    used: int
    total: int


@dataclass
class FakeGPU:
    name: str | bytes
    util_pct: int = 0
    used: int = 0
    total: int = 0
    power_mw: int = 0
    energy_mj: int = 0
    # name of an NVML call -> error code it raises for this GPU
    errors: dict[str, int] = field(default_factory=dict)
    # added to energy_mj after each energy read (to see reads race under concurrency)
    energy_step_mj: int = 0

    def check(self, call: str) -> None:
        if call in self.errors:
            raise pynvml.NVMLError(self.errors[call])


class FakeNVML:
    """The NVML Protocol over plain data; errors are the real pynvml exception classes."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGPU], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return self.gpus[index]

    def _gpu(self, handle: object, call: str) -> FakeGPU:
        assert isinstance(handle, FakeGPU)
        self.calls.append(call)
        handle.check(call)
        return handle

    def nvmlDeviceGetName(self, handle: object) -> str | bytes:
        return self._gpu(handle, "name").name

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> FakeUtilization:
        return FakeUtilization(self._gpu(handle, "utilization").util_pct)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> FakeMemory:
        gpu = self._gpu(handle, "memory")
        return FakeMemory(gpu.used, gpu.total)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self._gpu(handle, "power").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        gpu = self._gpu(handle, "energy")
        value = gpu.energy_mj
        gpu.energy_mj += gpu.energy_step_mj
        if gpu.energy_step_mj:
            time.sleep(0.0002)  # widen the window in which unlocked scrapes would interleave
        return value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def two_gpus() -> FakeNVML:
    return FakeNVML(
        [
            FakeGPU("NVIDIA H100 80GB HBM3", 37, 12 * 2**30, 80 * 2**30, 250_500, 1_000_000),
            FakeGPU("NVIDIA L4", 5, 2**30, 24 * 2**30, 72_000, 500_000),
        ]
    )


class Scraper:
    """A collector on a fresh registry, with token counts the test moves by hand."""

    def __init__(self, nvml: FakeNVML) -> None:
        self.tokens: dict[str, float] = {}
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.collector = GPUCollector(
            nvml,
            model_gpus=lambda: MODEL_GPUS,
            output_tokens=lambda: self.tokens,
            clock=self.clock,
        )
        self.registry.register(self.collector)

    def gpu(self, metric: str, index: int, name: str) -> float | None:
        return self.registry.get_sample_value(metric, {"gpu": str(index), "name": name})

    def model_energy(self) -> dict[str, float | None]:
        self.scrape()
        return {
            m: self.registry.get_sample_value("effgate_model_gpu_energy_joules_total", {"model": m})
            for m in MODEL_GPUS
        }

    def scrape(self) -> None:
        # get_sample_value collects again; an explicit collect is one scrape
        list(self.registry.collect())


def test_registration_does_not_touch_nvml() -> None:
    nvml = two_gpus()
    Scraper(nvml)
    assert nvml.calls == []


def test_gauges_and_energy_in_base_units() -> None:
    s = Scraper(two_gpus())
    h100, l4 = "NVIDIA H100 80GB HBM3", "NVIDIA L4"
    assert s.gpu("effgate_gpu_utilization_ratio", 0, h100) == pytest.approx(0.37)
    assert s.gpu("effgate_gpu_utilization_ratio", 1, l4) == pytest.approx(0.05)
    assert s.gpu("effgate_gpu_memory_used_bytes", 0, h100) == 12 * 2**30
    assert s.gpu("effgate_gpu_memory_total_bytes", 0, h100) == 80 * 2**30
    assert s.gpu("effgate_gpu_memory_total_bytes", 1, l4) == 24 * 2**30
    assert s.gpu("effgate_gpu_power_watts", 0, h100) == pytest.approx(250.5)  # 250_500 mW
    assert s.gpu("effgate_gpu_power_watts", 1, l4) == pytest.approx(72.0)
    assert s.gpu("effgate_gpu_energy_joules_total", 0, h100) == pytest.approx(1000.0)  # mJ
    assert s.gpu("effgate_gpu_energy_joules_total", 1, l4) == pytest.approx(500.0)


def test_bytes_name_is_decoded() -> None:
    s = Scraper(FakeNVML([FakeGPU(b"Tesla T4", power_mw=70_000)]))
    assert s.gpu("effgate_gpu_power_watts", 0, "Tesla T4") == pytest.approx(70.0)


def test_energy_split_by_output_token_share() -> None:
    nvml = two_gpus()
    s = Scraper(nvml)
    s.tokens = {"small": 10, "big": 0}
    # first scrape is the baseline: energy since boot belongs to no model
    assert s.model_energy() == {"small": 0.0, "big": 0.0}

    nvml.gpus[0].energy_mj += 300_000  # GPU 0 (shared): +300 J
    nvml.gpus[1].energy_mj += 120_000  # GPU 1 (big only): +120 J
    s.tokens = {"small": 30, "big": 10}  # +20 small, +10 big
    # small: 300 * 20/30 = 200; big: 300 * 10/30 + 120 = 220
    energy = s.model_energy()
    assert energy["small"] == pytest.approx(200.0)
    assert energy["big"] == pytest.approx(220.0)


def test_equal_split_when_no_tokens() -> None:
    nvml = two_gpus()
    s = Scraper(nvml)
    s.tokens = {"small": 5, "big": 5}
    s.scrape()
    nvml.gpus[0].energy_mj += 90_000
    # no tokens in this interval on GPU 0: 45 J each; GPU 1 unchanged
    energy = s.model_energy()
    assert energy["small"] == pytest.approx(45.0)
    assert energy["big"] == pytest.approx(45.0)


def test_model_energy_is_monotone_and_conserved() -> None:
    rng = random.Random(7)
    nvml = two_gpus()
    s = Scraper(nvml)
    s.scrape()
    added_j = lost_j = 0.0
    last = {"small": 0.0, "big": 0.0}
    for step in range(60):
        previous_mj = nvml.gpus[1].energy_mj
        for gpu in nvml.gpus:
            joules = rng.choice([0, 0, 1, 37, 250])
            gpu.energy_mj += joules * 1000
            added_j += joules
        for model in s.tokens or MODEL_GPUS:
            s.tokens[model] = s.tokens.get(model, 0) + rng.choice([0, 3, 40])
        if step == 30:
            s.tokens = {"small": 1, "big": 0}  # the token source restarted from zero
        if step == 40:
            lost_j = (nvml.gpus[1].energy_mj - previous_mj) / 1000
            nvml.gpus[1].energy_mj = 0  # driver reload resets the GPU counter
        energy = s.model_energy()
        for model, value in energy.items():
            assert value is not None
            assert value >= last[model], (step, model)
            last[model] = value
    # every joule is attributed except what the reset at step 40 lost on GPU 1
    assert sum(last.values()) == pytest.approx(added_j - lost_j)


def test_energy_not_supported_integrates_power() -> None:
    nvml = two_gpus()
    nvml.gpus[1].errors["energy"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    nvml.gpus[1].power_mw = 200_000
    s = Scraper(nvml)
    l4 = "NVIDIA L4"
    s.tokens = {"small": 0, "big": 0}
    s.scrape()
    assert s.gpu("effgate_gpu_energy_joules_total", 1, l4) == 0.0
    # other values of that GPU are still exported
    assert s.gpu("effgate_gpu_power_watts", 1, l4) == pytest.approx(200.0)
    assert s.gpu("effgate_gpu_utilization_ratio", 1, l4) == pytest.approx(0.05)

    s.clock.now += 10
    nvml.gpus[1].power_mw = 300_000
    # trapezoid: (200 W + 300 W) / 2 * 10 s = 2500 J, all of it big's (GPU 1 is big's only)
    assert s.model_energy()["big"] == pytest.approx(2500.0)
    assert s.gpu("effgate_gpu_energy_joules_total", 1, l4) == pytest.approx(2500.0)
    # the supported GPU still reads its counter
    assert s.gpu("effgate_gpu_energy_joules_total", 0, "NVIDIA H100 80GB HBM3") == 1000.0


def test_failed_call_skips_only_that_value() -> None:
    nvml = two_gpus()
    nvml.gpus[0].errors["power"] = pynvml.NVML_ERROR_UNKNOWN
    nvml.gpus[0].errors["utilization"] = pynvml.NVML_ERROR_GPU_IS_LOST
    s = Scraper(nvml)
    h100 = "NVIDIA H100 80GB HBM3"
    assert s.gpu("effgate_gpu_power_watts", 0, h100) is None
    assert s.gpu("effgate_gpu_utilization_ratio", 0, h100) is None
    assert s.gpu("effgate_gpu_memory_used_bytes", 0, h100) == 12 * 2**30
    assert s.gpu("effgate_gpu_energy_joules_total", 0, h100) == pytest.approx(1000.0)
    assert s.gpu("effgate_gpu_power_watts", 1, "NVIDIA L4") == pytest.approx(72.0)


def test_transient_energy_error_defers_attribution() -> None:
    nvml = two_gpus()
    s = Scraper(nvml)
    s.tokens = {"small": 0, "big": 0}
    s.scrape()
    nvml.gpus[0].energy_mj += 100_000
    nvml.gpus[0].errors["energy"] = pynvml.NVML_ERROR_TIMEOUT
    s.tokens = {"small": 10, "big": 0}
    assert s.model_energy() == {"small": 0.0, "big": 0.0}
    assert s.gpu("effgate_gpu_energy_joules_total", 0, "NVIDIA H100 80GB HBM3") is None
    del nvml.gpus[0].errors["energy"]
    nvml.gpus[0].energy_mj += 100_000
    s.tokens = {"small": 10, "big": 10}
    # 200 J over both intervals; tokens over both intervals: small 10, big 10
    energy = s.model_energy()
    assert energy["small"] == pytest.approx(100.0)
    assert energy["big"] == pytest.approx(100.0)


def test_unknown_gpu_index_in_policy_is_ignored() -> None:
    nvml = FakeNVML([FakeGPU("A10", energy_mj=0)])
    tokens: dict[str, float] = {}
    registry = CollectorRegistry()
    registry.register(
        GPUCollector(nvml, model_gpus=lambda: {"m": [3]}, output_tokens=lambda: tokens)
    )
    list(registry.collect())
    nvml.gpus[0].energy_mj += 5000
    value = registry.get_sample_value("effgate_model_gpu_energy_joules_total", {"model": "m"})
    assert value == 0.0


def test_no_driver_yields_nothing_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = two_gpus()
    nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    registry = CollectorRegistry()
    registry.register(GPUCollector(nvml, model_gpus=lambda: MODEL_GPUS))
    with caplog.at_level(logging.INFO, logger="gateway.gpu"):
        for _ in range(3):
            assert list(registry.collect()) == []
    assert nvml.calls == ["nvmlInit"]  # not retried on every scrape
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.gpu"]
    assert len(messages) == 1
    assert "NVML unavailable" in messages[0]
    assert caplog.records[0].levelno == logging.INFO


def test_real_pynvml_on_this_machine_does_not_raise() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        expected_gpus = 0  # no driver here: the collector must yield nothing
    else:
        expected_gpus = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    registry = CollectorRegistry()
    collector = GPUCollector()
    registry.register(collector)
    samples = [s for family in registry.collect() for s in family.samples]
    try:
        total = [s for s in samples if s.name == "effgate_gpu_memory_total_bytes"]
        assert len(total) == expected_gpus
        if expected_gpus == 0:
            assert samples == []
    finally:
        collector.close()


def test_close_shuts_nvml_down_and_stops_exporting() -> None:
    nvml = two_gpus()
    registry = CollectorRegistry()
    collector = GPUCollector(nvml)
    registry.register(collector)
    assert list(registry.collect())
    collector.close()
    assert nvml.calls[-1] == "nvmlShutdown"
    assert list(registry.collect()) == []


def test_concurrent_scrapes_attribute_each_joule_once() -> None:
    nvml = two_gpus()
    for gpu in nvml.gpus:
        gpu.energy_step_mj = 1000  # every energy read sees 1 J more than the last
    registry = CollectorRegistry()
    registry.register(GPUCollector(nvml, model_gpus=lambda: MODEL_GPUS))
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            for _ in range(50):
                list(registry.collect())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # scrape 401: each GPU's counter rose 400 J since the baseline scrape, all of it owned
    families = {f.name: f for f in registry.collect()}
    total = sum(s.value for s in families["effgate_model_gpu_energy_joules"].samples)
    assert total == pytest.approx(2 * 400)
