<?php

// The push token recipe in plain PHP (no library): a browser given this token may follow one job's end
// over the push endpoints (/push/jobs/{id}/ws?token=… or /push/jobs/{id}/events?token=…) until it expires.
// The PHP client has the same as PendingJobs\PushToken::mint(). See docs/push.md.
//
//   php examples/push/push_token.php JOB_ID [TTL_SECONDS [NOW]]    (the secret in PENDING_JOBS_PUSH_SECRET)

declare(strict_types=1);

function push_token(string $secret, int $jobId, int $ttlSeconds = 3600, ?int $now = null): string
{
    $claims = sprintf('v1.%d.%d', $jobId, ($now ?? time()) + $ttlSeconds);
    return $claims . '.' . hash_hmac('sha256', $claims, $secret);   // lowercase hex
}

if (PHP_SAPI === 'cli' && realpath($argv[0]) === __FILE__) {
    $secret = getenv('PENDING_JOBS_PUSH_SECRET');
    if ($secret === false || $secret === '' || count($argv) < 2) {
        fwrite(STDERR, "usage: PENDING_JOBS_PUSH_SECRET=… php push_token.php JOB_ID [TTL_SECONDS [NOW]]\n");
        exit(2);
    }
    echo push_token($secret, (int) $argv[1], (int) ($argv[2] ?? 3600), isset($argv[3]) ? (int) $argv[3] : null), "\n";
}
