"""The push token recipe in plain Python (standard library only, no pending-jobs needed): a browser given
this token may follow one job's end over the push endpoints until it expires. See docs/push.md.

    PENDING_JOBS_PUSH_SECRET=… python examples/push/push_token.py JOB_ID [TTL_SECONDS [NOW]]
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time


def push_token(secret: str, job_id: int, ttl_seconds: int = 3600, now: int | None = None) -> str:
    claims = f"v1.{job_id}.{int(time.time() if now is None else now) + ttl_seconds}"
    return claims + "." + hmac.new(secret.encode(), claims.encode(), hashlib.sha256).hexdigest()


if __name__ == "__main__":
    secret = os.environ.get("PENDING_JOBS_PUSH_SECRET", "")
    if not secret or len(sys.argv) < 2:
        sys.exit("usage: PENDING_JOBS_PUSH_SECRET=… python push_token.py JOB_ID [TTL_SECONDS [NOW]]")
    ttl = int(sys.argv[2]) if len(sys.argv) > 2 else 3600
    print(push_token(secret, int(sys.argv[1]), ttl, int(sys.argv[3]) if len(sys.argv) > 3 else None))
