"""What redacting a log record costs: `python bench/log_redaction.py [--reps N]`.

guard's one log handler redacts every record it emits (guard/_logging.py). For three debug-level records
of the shapes `--log-level debug` prints — a guard line, an SSE chunk carrying a 1 KB tool result (as
sse_starlette logs it), and one carrying a 64 KB result — this prints the time to format the record with
the redacting formatter (text and json) and with logging's plain formatter, best of 5 runs of N each; and
the cost of a `logger.debug` call at `--log-level info` (never formatted, so never redacted).
"""

from __future__ import annotations

import argparse
import json
import logging
import timeit

from guard.cli.logs import JsonFormatter, RedactingFormatter

RESULT = {
    "status": 402,
    "costSats": 30,
    "invoice": "lnbc300n1p43d748pp5k2q4m22jqzk65a6y05m5p9d53qwm2ky7eahtwd3pag0p2ar5f6kssp5rkuplskhv63zp2c9wnfclf7k6",
    "paymentHash": "b2815da95200adaa77447d374095b4881db5589ecf6eb73621ea1e1574744ead",
    "macaroon": "ZmFrZS1tYWNhcm9vbiB2MQpsb2NhdGlvbiA9IGh0dHBzOi8vYXBpLmV4YW1wbGUKcGF5bWVudF9oYXNoID0g",
    "message": "Payment of 30 sats required. autoPay disabled: call l402-pay with this invoice to continue.",
}


def chunk(size: int) -> str:
    body = json.dumps({**RESULT, "body": "x" * max(0, size - len(json.dumps(RESULT)))})
    message = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": body}], "isError": False}}
    return "event: message\r\ndata: " + json.dumps(message) + "\r\n\r\n"


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("sse_starlette.sse", logging.DEBUG, __file__, 1, message, args, None)


def best_us(function: object, reps: int) -> float:
    return min(timeit.repeat(function, number=reps, repeat=5)) / reps * 1e6  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    reps = parser.parse_args().reps
    records = {
        "guard line (90 B)": record("hold %d: payment %s is already held by another hold", 3, RESULT["paymentHash"]),
        "SSE chunk, 1 KB result": record("chunk: %s", chunk(1024).encode()),
        "SSE chunk, 64 KB result": record("chunk: %s", chunk(65536).encode()),
    }
    formatters = {
        "plain": logging.Formatter("guard %(levelname)s %(name)s: %(message)s"),
        "redacting text": RedactingFormatter(),
        "redacting json": JsonFormatter(),
    }
    print(f"{'record':<26}" + "".join(f"{name:>18}" for name in formatters) + "   (µs per record)")
    for name, rec in records.items():
        times = [
            best_us(lambda f=f, r=rec: f.format(r), max(1, reps // (1 + len(rec.getMessage()) // 1024)))
            for f in formatters.values()
        ]
        print(f"{name:<26}" + "".join(f"{t:>18.1f}" for t in times))
    quiet = logging.getLogger("bench.quiet")
    quiet.setLevel(logging.INFO)
    message = chunk(65536).encode()
    below = best_us(lambda: quiet.debug("chunk: %s", message), reps * 10)
    print(f"\nlogger.debug below the level (never formatted): {below:.2f} µs per call")


if __name__ == "__main__":
    main()
