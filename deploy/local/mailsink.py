"""A local SMTP server for ``make run`` that prints every mail instead of delivering it.

Verification, password-reset and invitation mails then appear in the ``mail`` process's
log lines, links included, with no mail account anywhere.

    python -m deploy.local.mailsink --port 1025
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
from typing import Any

from aiosmtpd.controller import Controller


class PrintingHandler:
    """Prints sender, recipients, subject and the plain-text body of each message."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain", "html"))
        text = body.get_content() if body is not None else ""
        print(
            f"mail to {', '.join(envelope.rcpt_tos)}: {msg['subject']}\n"
            + "\n".join(f"    {line}" for line in str(text).strip().splitlines()),
            flush=True,
        )
        return "250 Message accepted for delivery"


async def serve(host: str, port: int) -> None:
    controller = Controller(PrintingHandler(), hostname=host, port=port)
    controller.start()
    print(f"mail sink on {host}:{port}: mails are printed here", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.mailsink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
