#!/usr/bin/env python
"""Time `asyrp app` on this machine (issue 20's targets: start ≤ 10 s, one edit ≤ 10 s, offline, shapes world).

* start: from launching ``python -m asyrp app`` (a fresh process, ASYRP_OFFLINE=1) until its page answers on
  127.0.0.1;
* first edit: a new image uploaded → inverted, reconstructed, edited at strength 1, measured (S_dir, reader) —
  what the app does before the edit appears; slider: the same image at another strength. The CLIP for S_dir is
  loaded first (clip_warmup_s), as the app does in the background once its page is up.

    python scripts/app_timing.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from asyrp.app import Editor
from asyrp.worlds import shapes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere). On a busy machine this is what
    the start costs the CPU: about the wall time it would take on an idle one (the start is single-threaded)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_start(timeout: float = 120.0) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds) from the process start until http://127.0.0.1:PORT/ answers 200."""
    port = free_port()
    env = {**os.environ, "ASYRP_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "asyrp", "app", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started, cpu_seconds(proc.pid)
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"asyrp app did not answer within {timeout} s")
    finally:
        proc.terminate()
        proc.wait()


def time_edits() -> dict:
    torch.set_num_threads(1)  # as `asyrp app` (its --threads default)
    editor = Editor("shapes")
    label = next(iter(editor.directions))
    started = time.perf_counter()
    editor.clip()  # the app loads it in the background as soon as the page is up
    clip = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "red_circle.png"
        Image.fromarray(shapes.render(shapes.ShapeSpec("circle", "red", "large", "white"))).save(path)
        started = time.perf_counter()
        picture = editor.load_image(path)
        editor.edit(picture, [(label, 1.0)])
        first = time.perf_counter() - started
        started = time.perf_counter()
        editor.edit(picture, [(label, 0.5)])
        slider = time.perf_counter() - started
    return {"clip_warmup_s": round(clip, 2), "first_edit_s": round(first, 2), "slider_edit_s": round(slider, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    starts = [time_start() for _ in range(args.repeats)]
    print(json.dumps({"start_s": [round(w, 2) for w, _ in starts],
                      "start_cpu_s": [c if c is None else round(c, 2) for _, c in starts], **time_edits(),
                      "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
