<?php

declare(strict_types=1);

namespace PendingJobs;

/**
 * Enqueue jobs and read their status through the application's own PDO connection.
 *
 * The client never begins, commits or rolls back: called inside the application's transaction, the
 * job exists only if the application's own writes commit.
 */
final class Client
{
    private const DRIVERS = ['mysql', 'pgsql', 'sqlite'];

    // Times as UTC text with microseconds. PostgreSQL formats them itself, so the session's TimeZone
    // and DateStyle do not matter; MariaDB/MySQL and SQLite store UTC text already. A time outside years
    // 1..9999 (infinity, BC, year 10000, written with SQL) comes as PostgreSQL's own text: to_char would
    // make infinity NULL and drop the BC.
    private const PG_TIME = "CASE WHEN %1\$s >= '0001-01-01 00:00:00+00' AND %1\$s < '10000-01-01 00:00:00+00' "
        . "THEN to_char(%1\$s AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') "
        . "ELSE CAST(%1\$s AS text) END AS %1\$s";
    private const TIME_COLUMNS = ['created_at', 'started_at', 'finished_at', 'run_at'];
    // A stored time status() turns into a \DateTimeImmutable: UTC, years 0001..9999, as the runner and the
    // client write it (SQLite's own clock gives milliseconds). Anything else is returned as its text.
    private const STORED_TIME =
        '/^([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?\z/';
    // json_decode's default depth is 512; PostgreSQL stores a result nested thousands of levels deep.
    // PHP's parser itself gives up near 10,000 levels, where status() returns the text.
    private const READ_DEPTH = 100_000;

    private readonly string $driver;
    private bool $charsetChecked = false;

    /**
     * @param \PDO $pdo a connection to the database that holds the pending_jobs table
     * @param int $payloadLimit the largest payload in bytes: the runner's payload_limit setting, which fails a
     *                          larger job unrun (the same default, 1,000,000)
     */
    public function __construct(private readonly \PDO $pdo, private readonly int $payloadLimit = JobRow::PAYLOAD_LIMIT)
    {
        if ($payloadLimit < 1 || $payloadLimit > JobRow::PAYLOAD_LIMIT_MAX) {
            throw new \InvalidArgumentException(
                sprintf('payloadLimit must be 1..%d bytes, as the payload_limit setting', JobRow::PAYLOAD_LIMIT_MAX)
            );
        }
        $driver = (string) $pdo->getAttribute(\PDO::ATTR_DRIVER_NAME);
        if (!in_array($driver, self::DRIVERS, true)) {
            throw new \InvalidArgumentException(
                "unsupported PDO driver '$driver': use mysql (MariaDB/MySQL), pgsql or sqlite"
            );
        }
        $this->driver = $driver;
    }

    /**
     * Insert one job and return its id; with an idempotency_key that is taken, the first job's id.
     *
     * Options: queue, priority, delay (seconds, on the database clock), run_at (DateTimeInterface),
     * max_attempts, callback_url, idempotency_key, concurrency_key. Throws \InvalidArgumentException
     * saying what is wrong, before any SQL runs.
     *
     * @param array<mixed>|object $payload a JSON object: an associative array, [] for {}, or an object
     *                                     (stdClass, ArrayObject) for keys PHP would make integers ('0')
     * @param array<string, mixed> $options
     */
    public function enqueue(string $task, array|object $payload = [], array $options = []): int
    {
        $row = JobRow::fromArguments($task, $payload, $options, $this->payloadLimit);
        [$sql, $params] = $this->insertSql($row);
        if ($row->idempotencyKey === null) {
            return $this->driver === 'mysql'
                ? $this->insertMysql($sql, $params)
                : $this->insertReturning($sql, $params);
        }
        if ($this->driver === 'mysql') {
            // On a taken key, LAST_INSERT_ID(id) makes lastInsertId() the existing job's id. The
            // duplicate is not an error, so the caller's transaction carries on untouched. InnoDB
            // locks the existing row until the caller commits (a claim's SKIP LOCKED passes it by
            // meanwhile); INSERT IGNORE would not, but it also turns real errors into warnings.
            return $this->insertMysql($sql . ' ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)', $params);
        }
        // PostgreSQL and SQLite: DO NOTHING, then read the existing id. Chosen over
        // `ON CONFLICT DO UPDATE ... RETURNING id`, which would return the id in one statement but
        // write a new version of the existing job and lock its row until the caller commits,
        // waiting on (or blocking) a runner that holds it. DO NOTHING raises no error either, so
        // the caller's transaction is not aborted.
        $id = $this->execute($sql . ' ON CONFLICT (idempotency_key) DO NOTHING RETURNING id', $params)->fetchColumn();
        if ($id !== false) {
            return (int) $id;
        }
        $existing = $this->execute('SELECT id FROM pending_jobs WHERE idempotency_key = ?', [$row->idempotencyKey])
            ->fetchColumn();
        if ($existing === false) {
            throw new \RuntimeException('the job holding this idempotency_key was deleted during the enqueue');
        }
        return (int) $existing;
    }

    /**
     * Where a job stands, or null when there is no such job.
     *
     * Keys: id, task, queue, status, attempts, max_attempts, result (decoded JSON), last_error,
     * callback_status, and created_at, started_at, finished_at, run_at as \DateTimeImmutable in UTC
     * (null when not set).
     *
     * A row written by hand with SQL may hold what the client cannot read: status() does not throw for it
     * and invents nothing. A time that is not `YYYY-MM-DD HH:MM:SS[.ffffff]` in years 0001..9999 (on SQLite
     * any text, 'soon'; on PostgreSQL 'infinity' or a BC date; on MariaDB year 0) comes back as the stored
     * text, a string; a result that json_decode cannot read (not JSON, or nested deeper than PHP's parser
     * goes, near 10,000 levels) comes back as its JSON text, a string.
     *
     * @return array<string, mixed>|null
     */
    public function status(int $id): ?array
    {
        $columns = ['id', 'task', 'queue', 'status', 'attempts', 'max_attempts', 'result', 'last_error',
            'callback_status'];
        foreach (self::TIME_COLUMNS as $column) {
            $columns[] = $this->driver === 'pgsql' ? sprintf(self::PG_TIME, $column) : $column;
        }
        $row = $this->execute('SELECT ' . implode(', ', $columns) . ' FROM pending_jobs WHERE id = ?', [$id])
            ->fetch(\PDO::FETCH_ASSOC);
        if ($row === false) {
            return null;
        }
        foreach (['id', 'attempts', 'max_attempts'] as $column) {
            $row[$column] = (int) $row[$column];
        }
        $row['result'] = $row['result'] === null ? null : self::result((string) $row['result']);
        foreach (self::TIME_COLUMNS as $column) {
            $row[$column] = $row[$column] === null ? null : self::time((string) $row[$column]);
        }
        return $row;
    }

    /** The decoded result, or its text when json_decode cannot read it (see status()). */
    private static function result(string $json): mixed
    {
        $result = json_decode($json, true, self::READ_DEPTH);
        return json_last_error() === JSON_ERROR_NONE ? $result : $json;
    }

    /**
     * A stored time as UTC, or the text itself when it is not one (see status()). Neither the
     * DateTimeImmutable constructor ('soon' throws, 'tomorrow' is a time) nor createFromFormat alone
     * ('2030-02-31' becomes March 3) is strict: the text must be a time that formats back to itself.
     */
    private static function time(string $text): \DateTimeImmutable|string
    {
        if (preg_match(self::STORED_TIME, $text, $part) !== 1 || $part[1] === '0000') {
            return $text;
        }
        $normal = sprintf('%s-%s-%s %s:%s:%s.%s', $part[1], $part[2], $part[3], $part[4], $part[5], $part[6],
            str_pad($part[7] ?? '', 6, '0'));
        $time = \DateTimeImmutable::createFromFormat('!Y-m-d H:i:s.u', $normal, new \DateTimeZone('UTC'));
        return $time !== false && $time->format('Y-m-d H:i:s.u') === $normal ? $time : $text;
    }

    /** @return array{0: string, 1: list<int|string|null>} the INSERT (without its tail) and its parameters */
    private function insertSql(JobRow $row): array
    {
        $payload = $this->driver === 'pgsql' ? 'CAST(? AS jsonb)' : '?';
        $columns = ['task' => '?', 'payload' => $payload, 'queue' => '?', 'priority' => '?'];
        $params = [$row->task, $row->payload, $row->queue, $row->priority];
        if ($row->delayMicroseconds !== null) {
            $columns['run_at'] = $this->afterNow();
            $params[] = $this->driver === 'sqlite'
                ? sprintf('%+.6f seconds', $row->delayMicroseconds / 1_000_000)
                : $row->delayMicroseconds;
        }
        if ($row->runAt !== null) {
            $columns['run_at'] = $this->driver === 'pgsql' ? 'CAST(? AS timestamptz)' : '?';
            $params[] = $this->driver === 'pgsql' ? $row->runAt . '+00' : $row->runAt;
        }
        $optional = ['max_attempts' => $row->maxAttempts, 'callback_url' => $row->callbackUrl,
            'idempotency_key' => $row->idempotencyKey, 'concurrency_key' => $row->concurrencyKey];
        foreach ($optional as $column => $value) {
            if ($value !== null) {  // an omitted column takes the table's default
                $columns[$column] = '?';
                $params[] = $value;
            }
        }
        $names = implode(', ', array_keys($columns));
        return [sprintf('INSERT INTO pending_jobs (%s) VALUES (%s)', $names, implode(', ', $columns)), $params];
    }

    /** The database clock plus a bound delay, as the Python store computes it (UTC, microseconds). */
    private function afterNow(): string
    {
        return match ($this->driver) {
            'mysql' => 'UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND',
            'pgsql' => "now() + CAST(? AS bigint) * interval '1 microsecond'",
            'sqlite' => "strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
        };
    }

    /** @param list<int|string|null> $params */
    private function insertMysql(string $sql, array $params): int
    {
        $this->execute($sql, $params);
        return (int) $this->pdo->lastInsertId();
    }

    /** @param list<int|string|null> $params */
    private function insertReturning(string $sql, array $params): int
    {
        return (int) $this->execute($sql . ' RETURNING id', $params)->fetchColumn();
    }

    /**
     * Prepare and run one statement; a failure throws a \PDOException whatever PDO::ATTR_ERRMODE is.
     *
     * @param list<int|string|null> $params
     */
    private function execute(string $sql, array $params): \PDOStatement
    {
        if (!$this->charsetChecked && $this->driver === 'mysql' && self::anyNonAscii($params)) {
            $this->checkCharset();
        }
        try {
            $statement = $this->pdo->prepare($sql);
            if ($statement === false) {
                throw $this->failure($this->pdo->errorInfo());
            }
            foreach ($params as $index => $value) {
                $type = match (true) {
                    is_int($value) => \PDO::PARAM_INT,
                    $value === null => \PDO::PARAM_NULL,
                    default => \PDO::PARAM_STR,
                };
                $statement->bindValue($index + 1, $value, $type);
            }
            if (!$statement->execute()) {
                throw $this->failure($statement->errorInfo());
            }
        } catch (\PDOException $error) {
            throw self::hinted($error);
        }
        return $statement;
    }

    /**
     * The error with what to do added when the pending_jobs table is missing: the first enqueue of a new
     * application usually runs before `pending-jobs migrate`, and "Table 'app.pending_jobs' doesn't exist"
     * alone did not say which command makes it. Any other error comes back as it was.
     */
    private static function hinted(\PDOException $error): \PDOException
    {
        $info = $error->errorInfo ?? [];
        // 42S02 on MariaDB/MySQL, 42P01 on PostgreSQL, HY000 "no such table" on SQLite
        $missing = in_array($info[0] ?? '', ['42S02', '42P01', 'HY000'], true)
            && preg_match('/\bpending_jobs\b/', (string) ($info[2] ?? '')) === 1
            && preg_match("/doesn't exist|does not exist|no such table/", (string) ($info[2] ?? '')) === 1;
        if (!$missing) {
            return $error;
        }
        $hinted = new \PDOException($error->getMessage() . ' (run `pending-jobs migrate` against this database '
            . 'first: it creates the pending_jobs table)', 0, $error);
        $hinted->errorInfo = $info;
        return $hinted;
    }

    /** @param array<int, mixed> $params */
    private static function anyNonAscii(array $params): bool
    {
        foreach ($params as $value) {
            if (is_string($value) && preg_match('/[\x80-\xff]/', $value) === 1) {
                return true;
            }
        }
        return false;
    }

    /**
     * Refuse a MariaDB/MySQL connection that does not talk utf8mb4, once per client, before the first statement
     * that sends text beyond ASCII: over a latin1 connection the server converted the UTF-8 bytes again and
     * stored "é" as "Ã©" (the job ran with another payload, silently); over utf8mb3 an emoji failed as SQLSTATE
     * 22007 "Invalid datetime format". ASCII is the same bytes in every one of them: an application whose
     * connection is latin1 on purpose (its own tables) goes on enqueueing such jobs, with no extra round trip.
     */
    private function checkCharset(): void
    {
        $this->charsetChecked = true;
        $statement = $this->pdo->query('SELECT @@character_set_client, @@character_set_connection, '
            . '@@character_set_results');
        if ($statement === false) {
            throw $this->failure($this->pdo->errorInfo());
        }
        $charsets = $statement->fetch(\PDO::FETCH_NUM);
        $statement->closeCursor();
        // character_set_results NULL: the server sends results as stored, utf8mb4.
        if ($charsets === false || $charsets[0] !== 'utf8mb4' || $charsets[1] !== 'utf8mb4'
            || !in_array($charsets[2], ['utf8mb4', null], true)) {
            $this->charsetChecked = false;
            throw new \InvalidArgumentException(sprintf(
                'the PDO connection must use utf8mb4 (charset=utf8mb4 in the DSN), not %s: MariaDB/MySQL would '
                . 'store a payload that differs from the one given, or refuse it',
                json_encode($charsets === false ? null : array_combine(['client', 'connection', 'results'], $charsets)),
            ));
        }
    }

    /** @param array<int, mixed> $info PDO's errorInfo() */
    private function failure(array $info): \PDOException
    {
        // Only reached when the caller's PDO does not throw (ERRMODE_SILENT or ERRMODE_WARNING).
        $message = sprintf('pending_jobs: SQLSTATE[%s]: %s', $info[0] ?? '?', $info[2] ?? 'unknown error');
        $error = new \PDOException($message);
        $error->errorInfo = $info;
        return $error;
    }
}
