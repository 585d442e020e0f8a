"""Running LiteRT's converters out of process, offline, with failures that say what the tool said.

onnx2tf is slow to import and rewrites its input in place; TensorFlow's calibrator and LiteRT's
kernels abort the whole process on some bad quantizations. Out of process, both become errors
that name the tool, its version and the op instead of a dead build.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from pipeline.backends.litert.flatbuffer import ANSI_ESCAPE
from pipeline.errors import ToolchainError


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    # nothing may be downloaded: any HTTP(S) request goes to a closed local port and fails at once
    env.update({k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")})
    env.update({"NO_PROXY": "", "no_proxy": "", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    return env


def run_tool(command: list[str], cwd: Path, timeout: int, tool: str, variant: str, where: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=cwd, env=offline_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"did not finish within {timeout} s (raise timeout_seconds)", tool=tool, stage=where, variant=variant) from None


def failure_summary(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"killed by {signal.Signals(-done.returncode).name}"
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error|ERROR|error:", line)]
    return f"exit {done.returncode}: " + " | ".join((errors or lines)[-4:])
