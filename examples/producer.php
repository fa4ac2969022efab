<?php
// A PHP producer: insert a job with PDO inside the application's own transaction.
//
//   php examples/producer.php 'mysql:host=127.0.0.1;dbname=app;charset=utf8mb4' app secret john@example.com
//   php examples/producer.php 'sqlite:/srv/app/pending_jobs.sqlite3' '' '' john@example.com
//
// Every column but task and payload has a server-side default (status, run_at, attempts, ...).
// Prints the new job's id. Exit 1 with the reason on stderr when the insert fails.

[$script, $dsn, $user, $password, $email] = array_pad($argv, 5, null);
if ($dsn === null || $email === null) {
    fwrite(STDERR, "usage: php producer.php DSN USER PASSWORD EMAIL\n");
    exit(2);
}

try {
    $pdo = new PDO($dsn, $user ?: null, $password ?: null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    $pdo->beginTransaction();
    // ... the application's own writes go here; the job exists only if they commit ...
    $insert = $pdo->prepare(
        'INSERT INTO pending_jobs (task, payload, queue, idempotency_key) VALUES (?, ?, ?, ?)'
    );
    $insert->execute([
        'send_welcome_email',
        json_encode(['email' => $email], JSON_THROW_ON_ERROR),
        'mail',
        'welcome-' . $email,   // a second insert with this key is refused: enqueue once per signup
    ]);
    $jobId = $pdo->lastInsertId();
    $pdo->commit();
} catch (Throwable $error) {
    fwrite(STDERR, 'enqueue failed: ' . $error->getMessage() . "\n");
    exit(1);
}
echo $jobId, "\n";
