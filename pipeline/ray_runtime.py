"""One place that starts (or joins) Ray, so every command runs on the same engine the same way."""

from __future__ import annotations

import os
import sys
import time

from pipeline.errors import SignfeatError


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Join RAY_ADDRESS / ``address`` when given, else start a local instance; no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        check_address(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Workers import signfeat from the driver's working copy, installed or not.
            ray.init(num_cpus=num_cpus, **kwargs)
    except ValueError as exc:  # Ray's words for a malformed address ("Invalid address format: garbage")
        if address and "address" in str(exc).lower():
            raise SignfeatError(f"--address {address}: {str(exc).splitlines()[0]}; give HOST:PORT, auto, or ray://HOST:PORT") from None
        raise
    except ConnectionError as exc:  # a cluster address nobody answers at
        raise SignfeatError(f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "check --address / RAY_ADDRESS") from None
    except Exception as exc:
        if "timed out during startup" not in str(exc):
            raise
        # Ray's own words are a traceback; on a busy machine its raylet gives up waiting for its agents
        raise SignfeatError("the local Ray instance did not start in time (its raylet gave up: a busy machine?); rerun the command, "
                            "or start Ray yourself (`ray start --head --num-cpus N`) and pass --address auto") from None
    stop_on_sigterm()


LEAVING_NOTE = ""  # what the command adds when it leaves at once (extract --overwrite: rerun without it)


def stop_on_sigterm() -> None:
    """SIGTERM stops the driver as Ctrl-C does (a clean exit, 143), in place of the failure handler Ray's core
    worker installs in the driver, which answered SIGTERM with a native stack dump and an abort ("*** SIGTERM
    received ... PC: @ ..."): what timeout, Slurm, Kubernetes and systemd send looked like a crash."""
    import signal
    import threading

    from pipeline.errors import Terminated

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        return
    received = []

    def terminate(signum, frame):
        if received and time.monotonic() - received[0] < 1.0:
            return  # the same stop: GNU timeout sends SIGTERM to the process and then to its whole process group
        if received:  # a second SIGTERM: the first one's unwinding is stuck, or code in its way swallowed it
            print("signfeat: terminated again (SIGTERM): leaving at once; rerun the same command to go on" + LEAVING_NOTE, file=sys.stderr, flush=True)
            os._exit(143)
        received.append(time.monotonic())
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT nobody answers at: ray.init retries it for minutes, logging "Failed to connect to GCS", and
    never raises. One TCP connection says so at once. ``auto``, ``local`` and ``ray://`` addresses are Ray's to
    resolve."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SignfeatError(f"--address {address}: expected HOST:PORT (the head's GCS port, 6379 by default), auto, or ray://HOST:PORT")
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SignfeatError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check --address / RAY_ADDRESS "
                            "(the head's GCS port, 6379 by default)") from None
