<?php

declare(strict_types=1);

namespace PendingJobs;

/**
 * A token that lets a browser follow one job over the console's push endpoint (WebSocket or SSE).
 *
 * Format: "{jobId}.{expires}.{sig}", where expires is a Unix time in seconds and sig is the
 * base64url encoding, without padding, of HMAC-SHA256(key = the secret's UTF-8 bytes as given,
 * message = "{jobId}.{expires}"). The Python server verifies exactly this format.
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
        $claims = sprintf('%d.%d', $jobId, ($now ?? time()) + $ttlSeconds);
        $mac = hash_hmac('sha256', $claims, $secret, true);
        return $claims . '.' . rtrim(strtr(base64_encode($mac), '+/', '-_'), '=');
    }
}
