"""``python -m predictionlog``: the log writer process (see ``predictionlog.writer``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from predictionlog.counters import Counters
from predictionlog.retention import Retention
from predictionlog.store import open_store, redacted
from predictionlog.writer import Writer, log


def listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(64)
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictionlog", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    parser.add_argument(
        "--store", required=True, help="sqlite:///path.db, a path, or postgresql://..."
    )
    parser.add_argument("--repository", type=Path, help="model repository (drift baselines)")
    parser.add_argument("--max-age", type=float, help="seconds a prediction is kept")
    parser.add_argument("--max-rows", type=int, help="predictions kept at most")
    parser.add_argument("--max-bytes", type=int, help="bytes the log may use")
    parser.add_argument("--linger", type=float, default=0.02, help="seconds between commits")
    parser.add_argument("--drift-window", type=int, default=2000)
    parser.add_argument("--parent", type=int, help="stop when this process is gone")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--nice",
        type=int,
        default=5,
        help="scheduling niceness added (default 5): on a busy core the service's requests "
        "go first; the writer still gets a quarter of the core when it needs it (at nice 10, "
        "a tenth: pruning a full log at concurrency 64 it dropped 45 %% of fashion-cnn's rows)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    if args.nice:
        os.nice(args.nice)
    try:
        store = open_store(args.store)
    except Exception as exc:
        print(
            f"error: cannot open the prediction log {redacted(args.store)}: {exc}",
            file=sys.stderr,
        )
        return 2
    writer = Writer(
        store,
        listen(args.socket),
        repository=args.repository,
        retention=Retention(args.max_age, args.max_rows, args.max_bytes),
        linger=args.linger,
        drift_window=args.drift_window,
        parent=args.parent,
        counters=Counters(args.socket.with_name(args.socket.name + ".counters")),
    )
    signal.set_wakeup_fd(writer._wake_write.fileno())
    signal.signal(signal.SIGTERM, writer.stop)
    signal.signal(signal.SIGINT, writer.stop)
    try:
        writer.run()
    finally:
        store.close()
        args.socket.unlink(missing_ok=True)
        log.info(
            "stopped: %d written, %d dropped, %d pruned",
            writer.counts["written"],
            writer.counts["dropped"],
            writer.counts["pruned"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
