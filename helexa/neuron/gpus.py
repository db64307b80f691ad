"""GPU inventory and live readings through NVML, behind two functions; host facts for CPU-only neurons.

No NVML library or no NVIDIA device is not an error: the neuron is then CPU-only and reports no devices (and
says why in ``gpu_error``). NVML calls are blocking, so callers run :func:`discover` and :func:`read_health`
in a worker thread (``asyncio.to_thread``); they never touch the event loop.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading

from helexa.wire.neuron import DeviceHealth, DeviceInfo, Discovery, HostInfo

__all__ = ["discover", "host_info", "read_health"]

logger = logging.getLogger(__name__)
_MB = 1024 * 1024
_lock = threading.Lock()
_initialised: bool | None = None  # None: not tried; False: NVML unavailable
_init_error = ""


def _nvml() -> object | None:
    """Initialise NVML once per process; return the module, or None when there is no usable NVML."""
    global _initialised, _init_error  # noqa: PLW0603  (process-wide: NVML itself is process-wide)
    with _lock:
        if _initialised is None:
            try:
                import pynvml  # noqa: PLC0415  (nvidia-ml-py; imported on first use, not at start-up)

                pynvml.nvmlInit()
                _initialised = True
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError…
                _initialised, _init_error = False, f"{type(exc).__name__}: {exc}"
                logger.info("no NVIDIA GPUs usable (%s); this neuron is CPU-only", _init_error)
        if not _initialised:
            return None
        import pynvml  # noqa: PLC0415

        return pynvml


def host_info() -> HostInfo:
    """CPU count and RAM of this host (from ``/proc/meminfo`` where available)."""
    total = available = 0
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        total = int(fields["MemTotal"].split()[0]) // 1024
        available = int(fields.get("MemAvailable", fields["MemFree"]).split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = available = pages * size // _MB
    return HostInfo(cpu_count=os.cpu_count() or 0, ram_total_mb=total, ram_available_mb=available)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover(harnesses: list[str], version: str) -> Discovery:
    """Inventory of this host: devices, driver and CUDA versions, host facts. Blocking (NVML)."""
    uname = platform.uname()
    base = Discovery(
        hostname=socket.gethostname(),
        os=f"{uname.system} {platform.freedesktop_os_release().get('PRETTY_NAME', '')}".strip()
        if hasattr(platform, "freedesktop_os_release") and os.path.exists("/etc/os-release")
        else uname.system,
        kernel=uname.release,
        host=host_info(),
        harnesses=sorted(harnesses),
        version=version,
    )
    nvml = _nvml()
    if nvml is None:
        base.gpu_error = _init_error
        return base
    try:
        base.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        base.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            base.devices.append(
                DeviceInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    vram_total_mb=nvml.nvmlDeviceGetMemoryInfo(handle).total // _MB,
                    compute_capability=f"{major}.{minor}",
                )
            )
    except Exception as exc:  # a device that errors makes the inventory partial, not the neuron dead
        logger.warning("NVML discovery failed part-way: %s", exc)
        base.gpu_error = f"{type(exc).__name__}: {exc}"
    return base


def read_health(device_count: int) -> list[DeviceHealth]:
    """Live readings of each device. Blocking (NVML). A device that fails to read is reported as zeros."""
    nvml = _nvml()
    if nvml is None:
        return []
    out: list[DeviceHealth] = []
    for index in range(device_count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            out.append(
                DeviceHealth(
                    index=index,
                    vram_used_mb=mem.used // _MB,
                    vram_free_mb=mem.free // _MB,
                    utilization_pct=int(util.gpu),
                    temp_c=int(temp),
                )
            )
        except Exception as exc:
            logger.warning("NVML read of device %d failed: %s", index, exc)
            out.append(DeviceHealth(index=index))
    return out
