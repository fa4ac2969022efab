<?php

// PHP-only demo, step 2: the callback receiver, a router script for PHP's built-in server.
//
//   PENDING_JOBS_CALLBACK_SECRET=whsec_… PENDING_JOBS_DEMO_LOG=/tmp/jobs.log \
//       php -S 127.0.0.1:8080 examples/php/receiver.php
//
// Verifies each callback's Standard Webhooks signature with the secret the runner signs with (the
// same PENDING_JOBS_CALLBACK_SECRET; comma-separated during a rotation) and appends one line
// "job <id> <status> <result-json>" to the file PENDING_JOBS_DEMO_LOG names. Answers 204, or 401
// with the reason when the signature does not hold (the runner then retries later). On 127.0.0.1 the
// runner sends to it only with PENDING_JOBS_CALLBACK_ALLOW=127.0.0.1 (see enqueue_signup.php).

declare(strict_types=1);

require __DIR__ . '/../../clients/php/autoload.php';

use PendingJobs\Callback;
use PendingJobs\InvalidSignature;

$secret = getenv('PENDING_JOBS_CALLBACK_SECRET');
$log = getenv('PENDING_JOBS_DEMO_LOG');
if ($secret === false || $secret === '' || $log === false || $log === '') {
    error_log('receiver.php: set PENDING_JOBS_CALLBACK_SECRET and PENDING_JOBS_DEMO_LOG');
    http_response_code(500);
    return;
}
if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    header('Allow: POST');
    http_response_code(405);
    return;
}

$secrets = array_map('trim', explode(',', $secret));
try {
    $event = Callback::verify($secrets, $_SERVER, (string) file_get_contents('php://input'));
} catch (InvalidSignature $error) {
    error_log('receiver.php: callback refused: ' . $error->getMessage());
    http_response_code(401);
    echo $error->getMessage(), "\n";  // kept in pending_job_callback_attempts.response_excerpt
    return;
}

$job = $event['data'];
$result = json_encode($job['result'], JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
file_put_contents($log, sprintf("job %d %s %s\n", $job['id'], $job['status'], $result), FILE_APPEND | LOCK_EX);
http_response_code(204);
