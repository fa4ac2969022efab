<?php

// A PHP producer: enqueue a job with the PHP client (clients/php) inside the application's own
// transaction, so the job exists only if the application's writes commit.
//
//   php examples/producer.php 'mysql:host=127.0.0.1;dbname=app;charset=utf8mb4' app secret john@example.com
//   php examples/producer.php 'pgsql:host=127.0.0.1;dbname=app' app secret john@example.com
//   php examples/producer.php 'sqlite:/srv/app/pending_jobs.sqlite3' '' '' john@example.com
//
// Prints the job's id. The idempotency key makes a second run for the same email print the first
// job's id instead of enqueueing again. Exit 1 with the reason on stderr when the enqueue fails.

declare(strict_types=1);

require __DIR__ . '/../clients/php/autoload.php';  // or Composer's vendor/autoload.php

[$script, $dsn, $user, $password, $email] = array_pad($argv, 5, null);
if ($dsn === null || $email === null) {
    fwrite(STDERR, "usage: php producer.php DSN USER PASSWORD EMAIL\n");
    exit(2);
}

try {
    $pdo = new PDO($dsn, $user ?: null, $password ?: null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    $jobs = new PendingJobs\Client($pdo);
    $pdo->beginTransaction();
    // ... the application's own writes go here ...
    $jobId = $jobs->enqueue('send_welcome_email', ['email' => $email], [
        'queue' => 'mail',
        'idempotency_key' => 'welcome-' . $email,  // one welcome email per signup, however often this runs
    ]);
    $pdo->commit();
} catch (Throwable $error) {
    fwrite(STDERR, 'enqueue failed: ' . $error->getMessage() . "\n");
    exit(1);
}
echo $jobId, "\n";
