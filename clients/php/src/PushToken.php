<?php

declare(strict_types=1);

namespace PendingJobs;

/**
 * A token that lets a browser follow one job over the console's push endpoint (WebSocket or SSE).
 *
 * Format: "v1.{jobId}.{expires}.{mac}", where expires is a Unix time in seconds and mac is the
 * lowercase hex HMAC-SHA256(key = the secret's bytes as given, message = "v1.{jobId}.{expires}").
 * The Python server (pending_jobs/web/tokens.py) verifies exactly this format; docs/push.md.
 */
final class PushToken
{
    /** A token for $jobId that expires $ttlSeconds from $now (default: the current time). */
    public static function mint(string $secret, int $jobId, int $ttlSeconds = 3600, ?int $now = null): string
    {
        if ($secret === '') {
            throw new \InvalidArgumentException('the push token secret is empty');
        }
        if ($jobId < 1) {
            throw new \InvalidArgumentException('jobId must be a positive job id');
        }
        if ($ttlSeconds < 1) {
            throw new \InvalidArgumentException('ttlSeconds must be at least 1');
        }
        $claims = sprintf('v1.%d.%d', $jobId, ($now ?? time()) + $ttlSeconds);
        return $claims . '.' . hash_hmac('sha256', $claims, $secret);
    }
}
