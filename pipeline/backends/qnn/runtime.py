"""Loading Qualcomm's QNN execution provider into onnxruntime, and HTP sessions on it.

The `onnxruntime-qnn` wheel is a plugin execution provider: its library is registered with
onnxruntime once per process (`register_execution_provider_library`), then a session adds it for
the devices it offers. The HTP backend library in the wheel runs the Hexagon kernels in
simulation on x86. A missing or broken install is the user's environment, not a bug: it fails
with the package to install and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import UserError

PACKAGE = "onnxruntime-qnn"
PINNED = "2.7.0"
EP_NAME = "QNNExecutionProvider"
FIX = f"install it with `pip install {PACKAGE}=={PINNED}` (or `make setup`, which installs the pinned requirements)"

_registered: dict[str, Any] = {}


def qnn_package() -> Any:
    """The imported `onnxruntime_qnn` module, its libraries checked to exist."""
    try:
        import onnxruntime_qnn
    except ImportError as exc:
        raise UserError(f"the Qualcomm DSP backend (qnn) needs the {PACKAGE} package, which cannot be imported ({exc})", hint=FIX) from None
    missing = [
        path
        for path in (onnxruntime_qnn.get_library_path(), onnxruntime_qnn.get_qnn_htp_path(), ir_backend_path(onnxruntime_qnn))
        if not Path(path).is_file()
    ]
    if missing:
        raise UserError(f"the {PACKAGE} install is broken: {', '.join(missing)} missing", hint=f"reinstall it: {FIX}")
    return onnxruntime_qnn


def ir_backend_path(package: Any) -> str:
    """QNN's IR backend, which writes a graph as a DLC container instead of running it."""
    return str(Path(package.LIB_DIR_FULL_PATH) / "libQnnIr.so")


def qnn_devices() -> list:
    """The QNN execution provider's devices, registering its library with onnxruntime on first use."""
    import onnxruntime as ort

    package = qnn_package()
    # libsndfile loaded after QNN's HTP backend crashes the process on its first read (general protection fault in
    # libsndfile, measured with soundfile 0.14.0 and onnxruntime-qnn 2.7.0); loaded before, both work
    import soundfile  # noqa: F401

    if "devices" not in _registered:
        if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
            try:
                ort.register_execution_provider_library(EP_NAME, package.get_library_path())
            except Exception as exc:  # onnxruntime raises a bare RuntimeError/Fail for a library it cannot load
                raise UserError(
                    f"onnxruntime {ort.__version__} cannot load the {PACKAGE} execution provider "
                    f"{package.get_library_path()}: {exc}",
                    hint=f"{PACKAGE} {PINNED} needs onnxruntime >= 1.24.2; {FIX}",
                ) from None
        devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
        if not devices:
            raise UserError(f"the {PACKAGE} execution provider registered but offers no device", hint=FIX)
        _registered["devices"] = devices
    return _registered["devices"]


def versions() -> dict[str, str]:
    """onnxruntime-qnn and the QNN SDK (QAIRT) it ships."""
    package = qnn_package()
    info = package.build_and_package_info
    return {PACKAGE: package.__version__, "qnn_sdk": str(getattr(info, "qnn_version", "unknown"))}


def htp_session(
    model: Path,
    provider_options: dict[str, str] | None = None,
    config: dict[str, str] | None = None,
    threads: int = 1,
    log_severity: int = 3,
):
    """An onnxruntime session on the QNN HTP backend with CPU fallback disabled: every node runs on HTP or it fails."""
    import onnxruntime as ort

    package = qnn_package()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = log_severity
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.add_provider_for_devices(qnn_devices(), {"backend_path": package.get_qnn_htp_path(), **(provider_options or {})})
    return ort.InferenceSession(str(model), sess_options=options)


def soc_options(soc_model: int, htp_arch: str) -> dict[str, str]:
    # the highest graph finalization optimization: what a shipped context binary gets (and ~30 % faster in simulation)
    return {"soc_model": str(soc_model), "htp_arch": htp_arch.removeprefix("v"), "htp_graph_finalization_optimization_mode": "3"}
