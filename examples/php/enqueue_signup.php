<?php

// PHP-only demo, step 1: a signup enqueues a `save_user` job whose outcome is POSTed to a callback URL.
//
//   PENDING_JOBS_PDO_DSN='sqlite:/tmp/demo.sqlite3' php examples/php/enqueue_signup.php \
//       http://127.0.0.1:8080/hooks/jobs [NAME [EMAIL]]
//
// The database comes from PENDING_JOBS_PDO_DSN (a PDO DSN: mysql:…, pgsql:…, sqlite:…) with
// PENDING_JOBS_PDO_USER and PENDING_JOBS_PDO_PASSWORD. Prints the job id; signing up the same
// email again prints the same id (the idempotency key). The handler is signup_tasks.py beside this
// file; receiver.php receives the callback. Run the runner with the receiver's address allowed: it
// refuses callbacks to loopback and private addresses unless callback_allow names them. The tables come
// first (`pending-jobs migrate`); `run --drain` returns once nothing is due (a plain `run` serves, as under cron,
// until the next tick's run takes over or --max-runtime, an hour, passes):
//
//   export PENDING_JOBS_DATABASE_URL=sqlite:////tmp/demo.sqlite3 && pending-jobs migrate
//   PENDING_JOBS_CALLBACK_ALLOW=127.0.0.1 PENDING_JOBS_CALLBACK_SECRET=whsec_… PENDING_JOBS_TASKS=signup_tasks \
//       PYTHONPATH=examples/php pending-jobs run --drain

declare(strict_types=1);

require __DIR__ . '/../../clients/php/autoload.php';

$callbackUrl = $argv[1] ?? null;
$dsn = getenv('PENDING_JOBS_PDO_DSN');
if ($callbackUrl === null || $dsn === false || $dsn === '') {
    fwrite(STDERR, "usage: PENDING_JOBS_PDO_DSN=… php enqueue_signup.php CALLBACK_URL [NAME [EMAIL]]\n");
    exit(2);
}
$name = $argv[2] ?? 'John';
$email = $argv[3] ?? 'john@example.com';

try {
    $pdo = new PDO(
        $dsn,
        getenv('PENDING_JOBS_PDO_USER') ?: null,
        getenv('PENDING_JOBS_PDO_PASSWORD') ?: null,
        [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION],
    );
    $jobs = new PendingJobs\Client($pdo);
    $pdo->beginTransaction();
    // ... the signup's own writes (the users row) go here: the job exists only if they commit ...
    $jobId = $jobs->enqueue('save_user', ['name' => $name, 'email' => $email], [
        'callback_url' => $callbackUrl,
        'idempotency_key' => 'signup-' . $email,
    ]);
    $pdo->commit();
} catch (InvalidArgumentException $error) {
    fwrite(STDERR, 'refused: ' . $error->getMessage() . "\n");
    exit(2);
} catch (Throwable $error) {
    fwrite(STDERR, 'enqueue failed: ' . $error->getMessage() . "\n");
    exit(1);
}
echo $jobId, "\n";
