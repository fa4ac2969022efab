-- A status page for pending-jobs in plain SQL; every query runs on MariaDB/MySQL, PostgreSQL and SQLite.

-- What is waiting, running or finished, per queue (the view pending_jobs_summary, created by `migrate`).
SELECT queue, status, jobs, oldest_run_at, oldest_created_at
FROM pending_jobs_summary
ORDER BY queue, status;

-- The last runs: gaps between started_at values are missed cron ticks, long ones are slow runs,
-- exit_code <> 0 failed runs, and finished_at IS NULL a run still going (or killed).
SELECT id, host, pid, started_at, finished_at, claimed, succeeded, failed, retried, rescued,
       callbacks_delivered, callbacks_failed, exit_code
FROM pending_job_runs
ORDER BY id DESC
LIMIT 20;

-- The newest failed jobs and why.
SELECT id, queue, task, attempts, finished_at, last_error
FROM pending_jobs
WHERE status = 'failed'
ORDER BY finished_at DESC, id DESC
LIMIT 20;

-- Callbacks that need a person: failed for good, or pending with errors.
SELECT id, task, status, callback_status, callback_attempts, callback_next_at, callback_last_error
FROM pending_jobs
WHERE callback_status = 'failed' OR (callback_status = 'pending' AND callback_last_error IS NOT NULL)
ORDER BY id DESC
LIMIT 20;
