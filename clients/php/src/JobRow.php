<?php

declare(strict_types=1);

namespace PendingJobs;

/**
 * One job's validated column values, built from enqueue()'s arguments.
 *
 * The rules and limits are those of the Python API (pending_jobs/enqueue.py and validation.py), so a
 * PHP producer is refused for the same reasons, before any SQL runs: a refused job never touches the
 * caller's transaction.
 *
 * @internal used by Client; not part of the public API
 */
final class JobRow
{
    public const NAME_LIMIT = 191;
    public const QUEUE_LIMIT = 64;
    public const URL_LIMIT = 2048;
    public const PRIORITY_MIN = -1000;
    public const PRIORITY_MAX = 1000;
    public const MAX_ATTEMPTS_LIMIT = 1000;
    public const PAYLOAD_LIMIT = 1_000_000;  // the payload_limit setting's default
    public const PAYLOAD_LIMIT_MAX = 100_000_000;  // and its largest value
    // MariaDB's JSON_VALID (the payload column's CHECK) refuses a document nested deeper, so such a job
    // failed in SQL on MariaDB alone. The rule of pending_jobs/validation.py: a scalar is 0, {} or [] is 1.
    public const PAYLOAD_DEPTH_LIMIT = 31;
    // Python's datetime holds years 1..9999: outside them a run_at was stored where Python cannot read it
    // (year 0 on MariaDB and SQLite) or refused in SQL (PostgreSQL has no year 0, MariaDB no BC).
    public const YEAR_MIN = 1;
    public const YEAR_MAX = 9999;

    private const OPTIONS = [
        'queue', 'priority', 'delay', 'run_at', 'max_attempts', 'callback_url', 'idempotency_key', 'concurrency_key',
    ];
    // What Python's str.strip() removes, listed: PCRE's \s also holds U+180E, which Python has not counted as
    // white space since Unicode 6.3, so 'mail\u{180E}' was refused here and taken by Python.
    private const SPACE = '[\x09-\x0d\x1c-\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}'
        . '\x{3000}]';
    private const EDGE_SPACE = '/^' . self::SPACE . '|' . self::SPACE . '\z/u';
    // A NUL as json_encode writes it: \u0000 at the end of an odd run of backslashes. In an even run the last
    // backslash is itself escaped, and the string holds the six characters \u0000 (a Windows path, a regex).
    private const NUL_ESCAPE = '/(?<!\\\\)(?:\\\\\\\\)*\\\\u0000/';
    // The characters NFKC turns into / ? # @ or : (Unicode 14, as Python 3.11's unicodedata): urlsplit refuses
    // a netloc holding one, because IDNA would read another host or port in it.
    private const NFKC_DELIMITERS = '/[\x{2047}-\x{2049}\x{2100}\x{2101}\x{2105}\x{2106}\x{2a74}\x{fe13}\x{fe16}'
        . '\x{fe55}\x{fe56}\x{fe5f}\x{fe6b}\x{ff03}\x{ff0f}\x{ff1a}\x{ff1f}\x{ff20}]/u';
    // JSON_PRESERVE_ZERO_FRACTION: 1.0 stays 1.0, as Python writes it, so a handler reads a float, not the int 1.
    // JSON_UNESCAPED_LINE_TERMINATORS: U+2028/U+2029 stay 3 bytes, as Python measures them, not a 6-byte escape.
    private const JSON_FLAGS = JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION
        | JSON_UNESCAPED_LINE_TERMINATORS | JSON_THROW_ON_ERROR;

    private function __construct(
        public readonly string $task,
        public readonly string $payload,
        public readonly string $queue,
        public readonly int $priority,
        public readonly ?int $delayMicroseconds,
        public readonly ?string $runAt,
        public readonly ?int $maxAttempts,
        public readonly ?string $callbackUrl,
        public readonly ?string $idempotencyKey,
        public readonly ?string $concurrencyKey,
    ) {
    }

    /**
     * Validate enqueue()'s arguments; throws \InvalidArgumentException saying what is wrong.
     *
     * @param array<mixed>|object $payload
     * @param array<string, mixed> $options
     */
    public static function fromArguments(
        string $task,
        array|object $payload,
        array $options,
        int $payloadLimit = self::PAYLOAD_LIMIT,
    ): self {
        $unknown = array_diff(array_keys($options), self::OPTIONS);
        if ($unknown !== []) {
            throw new \InvalidArgumentException(sprintf(
                'unknown enqueue option %s; the options are %s',
                self::quote((string) reset($unknown)),
                implode(', ', self::OPTIONS),
            ));
        }
        self::checkName('task', $task, self::NAME_LIMIT);
        if (preg_match(self::EDGE_SPACE, $task) === 1) {  // ' ' or 'mail ' names no handler, and is hard to see
            throw new \InvalidArgumentException('task must not be blank or start or end with whitespace');
        }
        $queue = self::keyOption($options, 'queue', self::QUEUE_LIMIT) ?? 'default';
        $priority = self::intOption($options, 'priority', self::PRIORITY_MIN, self::PRIORITY_MAX) ?? 0;
        $maxAttempts = self::intOption($options, 'max_attempts', 1, self::MAX_ATTEMPTS_LIMIT);
        $callbackUrl = self::callbackUrl($options['callback_url'] ?? null);
        $key = self::keyOption($options, 'idempotency_key', self::NAME_LIMIT);
        $concurrencyKey = self::keyOption($options, 'concurrency_key', self::NAME_LIMIT);
        [$delay, $runAt] = self::when($options['delay'] ?? null, $options['run_at'] ?? null);
        return new self(
            task: $task,
            payload: self::payloadJson($payload, $payloadLimit),
            queue: $queue,
            priority: $priority,
            delayMicroseconds: $delay,
            runAt: $runAt,
            maxAttempts: $maxAttempts,
            callbackUrl: $callbackUrl,
            idempotencyKey: $key,
            concurrencyKey: $concurrencyKey,
        );
    }

    /**
     * The payload as a JSON object: an empty array becomes {} (never []), a list is refused. PHP turns
     * the array key '0' into the integer 0, so ['0' => 'x'] is the list ['x']: an object (stdClass,
     * ArrayObject) keeps such keys, and is accepted when it encodes to a JSON object.
     *
     * @param array<mixed>|object $payload
     */
    private static function payloadJson(array|object $payload, int $limit): string
    {
        if ($payload === []) {
            return '{}';
        }
        if (is_array($payload) && array_is_list($payload)) {
            throw new \InvalidArgumentException(
                'payload must be a JSON object (an associative array with string keys), got a list; '
                . "for keys such as '0', pass an object: (object) ['0' => ...]"
            );
        }
        try {
            // json_encode's default depth (512) stays: it bounds the C recursion of the encoder.
            $json = json_encode($payload, self::JSON_FLAGS);
        } catch (\JsonException $error) {
            if ($error->getCode() === JSON_ERROR_DEPTH) {
                throw new \InvalidArgumentException(sprintf(
                    'payload nests more than 512 levels deep; at most %d can be stored on every database '
                    . '(MariaDB\'s limit)',
                    self::PAYLOAD_DEPTH_LIMIT,
                ), 0, $error);
            }
            throw new \InvalidArgumentException('payload is not JSON-encodable: ' . $error->getMessage(), 0, $error);
        }
        if (!str_starts_with($json, '{')) {  // a JsonSerializable object may encode to anything
            throw new \InvalidArgumentException(
                'payload must be a JSON object, but the object given encodes to ' . substr($json, 0, 40)
            );
        }
        if (strlen($json) > $limit) {
            throw new \InvalidArgumentException(
                sprintf('payload is %d bytes, over the %d-byte limit', strlen($json), $limit)
            );
        }
        // JSON_UNESCAPED_UNICODE still escapes control characters, so a NUL shows up as \u0000.
        if (preg_match(self::NUL_ESCAPE, $json) === 1) {
            throw new \InvalidArgumentException(
                'payload contains a NUL character, which PostgreSQL jsonb cannot store'
            );
        }
        $depth = self::depth($json);
        if ($depth > self::PAYLOAD_DEPTH_LIMIT) {
            throw new \InvalidArgumentException(sprintf(
                'payload nests %d levels deep; at most %d can be stored on every database (MariaDB\'s limit)',
                $depth,
                self::PAYLOAD_DEPTH_LIMIT,
            ));
        }
        return $json;
    }

    /**
     * How deep a JSON text nests: a scalar is 0, {} or [] is 1. The text json_encode wrote is measured, not
     * the PHP value, so an object's own encoding (JsonSerializable, ArrayObject) counts as stored; a loop,
     * not recursion, so no input is too deep to measure.
     */
    private static function depth(string $json): int
    {
        if (substr_count($json, '{') + substr_count($json, '[') <= self::PAYLOAD_DEPTH_LIMIT) {
            return 0;  // too few brackets to go over the limit, even inside strings: nothing to measure
        }
        $depth = $deepest = 0;
        $length = strlen($json);
        for ($at = strcspn($json, '"[]{}'); $at < $length; $at += 1 + strcspn($json, '"[]{}', $at + 1)) {
            $char = $json[$at];
            if ($char === '"') {  // skip the string: its end is a quote after an even run of backslashes
                do {
                    $at = (int) strpos($json, '"', $at + 1);  // json_encode's output: always closed
                    $before = $at - 1;
                    while ($json[$before] === '\\') {
                        $before--;
                    }
                } while (($at - 1 - $before) % 2 === 1);
            } elseif ($char === '[' || $char === '{') {
                $deepest = max($deepest, ++$depth);
            } else {
                $depth--;
            }
        }
        return $deepest;
    }

    /** @return array{0: ?int, 1: ?string} the delay in microseconds, or run_at as UTC text */
    private static function when(mixed $delay, mixed $runAt): array
    {
        if ($delay !== null && $runAt !== null) {
            throw new \InvalidArgumentException('give delay or run_at, not both');
        }
        if ($runAt !== null) {
            if (!$runAt instanceof \DateTimeInterface) {
                throw new \InvalidArgumentException('run_at must be a DateTimeInterface');
            }
            $utc = \DateTimeImmutable::createFromInterface($runAt)->setTimezone(new \DateTimeZone('UTC'));
            // PHP has years 0, 10000 and BC; the databases store them wrongly or refuse them in SQL.
            $year = (int) $utc->format('Y');
            if ($year < self::YEAR_MIN || $year > self::YEAR_MAX) {
                throw new \InvalidArgumentException(sprintf(
                    'run_at must be in the years %d..%d in UTC, not %s',
                    self::YEAR_MIN,
                    self::YEAR_MAX,
                    $utc->format('Y-m-d H:i:s P'),
                ));
            }
            return [null, $utc->format('Y-m-d H:i:s.u')];
        }
        if ($delay === null) {
            return [null, null];
        }
        if ((!is_int($delay) && !is_float($delay)) || !is_finite((float) $delay) || $delay < 0) {
            throw new \InvalidArgumentException('delay must be a non-negative number of seconds');
        }
        // Bounded so the microsecond count stays a 64-bit integer on every database.
        if ($delay > 100 * 365 * 86400) {
            throw new \InvalidArgumentException('delay must be at most 100 years');
        }
        return [(int) round($delay * 1_000_000), null];
    }

    private static function callbackUrl(mixed $url): ?string
    {
        if ($url === null) {
            return null;
        }
        if (!is_string($url)) {
            throw new \InvalidArgumentException('callback_url must be a string');
        }
        // The rules of the task and the keys (checkName): pdo_pgsql cut the URL at a NUL, and MariaDB stored
        // invalid UTF-8 that the runner could not read. The limit counts characters, as VARCHAR(2048) does.
        // In Python's order (validation.callback_url_problem), so a URL wrong twice is refused in the same words.
        if (str_contains($url, "\0")) {
            throw new \InvalidArgumentException('invalid callback_url: it must not contain NUL');
        }
        if (preg_match('//u', $url) !== 1) {
            throw new \InvalidArgumentException('invalid callback_url: it must be valid UTF-8');
        }
        if (preg_match('/[\x00-\x20\x7f]/', $url, $blank, PREG_OFFSET_CAPTURE) === 1) {
            throw new \InvalidArgumentException(sprintf(
                'invalid callback_url: a space or control character at position %d (percent-encode it)',
                self::length('callback_url', substr($url, 0, $blank[0][1])),  // in characters, as Python counts
            ));
        }
        if (self::length('callback_url', $url) > self::URL_LIMIT) {
            throw new \InvalidArgumentException(
                sprintf('invalid callback_url: longer than %d characters', self::URL_LIMIT)
            );
        }
        $parts = parse_url($url);
        if ($parts === false) {
            throw new \InvalidArgumentException('invalid callback_url: not a URL (or a bad port)');
        }
        $problem = self::authorityProblem($url);
        if ($problem !== null) {
            throw new \InvalidArgumentException('invalid callback_url: ' . $problem);
        }
        $scheme = strtolower($parts['scheme'] ?? '');
        if ($scheme !== 'http' && $scheme !== 'https') {
            throw new \InvalidArgumentException(sprintf(
                'invalid callback_url: scheme must be http or https, not %s',
                $scheme === '' ? 'missing' : self::quote($scheme),
            ));
        }
        if (($parts['host'] ?? '') === '') {
            throw new \InvalidArgumentException('invalid callback_url: no host');
        }
        return $url;
    }

    /**
     * What Python's urlsplit (3.11), with which the runner checks every row, refuses in a URL's authority and
     * PHP's parse_url takes: brackets around no IP address ([notip], u[x]@host, host]), characters that NFKC
     * turns into a delimiter (a fullwidth ＠ or ：), and a port that is not digits (host:80:80, host:+80).
     * Without it such a job was accepted here and failed unrun. Split as urlsplit splits.
     */
    private static function authorityProblem(string $url): ?string
    {
        $rest = substr($url, strpos($url, ':') + 1);
        if (!str_starts_with($rest, '//')) {
            return null;
        }
        $netloc = substr($rest, 2, strcspn($rest, '/?#', 2));
        if (str_contains($netloc, '[') !== str_contains($netloc, ']')) {
            return 'Invalid IPv6 URL';
        }
        if (str_contains($netloc, '[')) {  // the first bracket of the whole netloc, user part included
            $problem = self::bracketedProblem(explode(']', explode('[', $netloc, 2)[1], 2)[0]);
            if ($problem !== null) {
                return $problem;
            }
        }
        if (preg_match(self::NFKC_DELIMITERS, $netloc) === 1) {
            return sprintf("netloc '%s' contains invalid characters under NFKC normalization", $netloc);
        }
        $at = strrpos($netloc, '@');
        $hostinfo = $at === false ? $netloc : substr($netloc, $at + 1);
        if (str_contains($hostinfo, '[')) {
            $after = explode(']', explode('[', $hostinfo, 2)[1], 2)[1] ?? '';
            $port = explode(':', $after, 2)[1] ?? '';
        } else {
            $port = explode(':', $hostinfo, 2)[1] ?? '';
        }
        if ($port !== '' && preg_match('/\A[0-9]+\z/', $port) !== 1) {
            return sprintf('Port could not be cast to integer value as %s', self::quote($port));
        }
        return null;
    }

    /** Python's rule for a bracketed host: IPvFuture, or an IPv6 address with an optional zone (%eth0). */
    private static function bracketedProblem(string $host): ?string
    {
        if (str_starts_with($host, 'v')) {
            return preg_match('/\Av[a-fA-F0-9]+\..+\z/s', $host) === 1 ? null : 'IPvFuture address is invalid';
        }
        if (filter_var($host, FILTER_VALIDATE_IP, FILTER_FLAG_IPV4) !== false) {
            return 'An IPv4 address cannot be in brackets';
        }
        [$address, $zone] = explode('%', $host, 2) + [1 => null];
        if (($zone === null || ($zone !== '' && !str_contains($zone, '%')))
            && filter_var($address, FILTER_VALIDATE_IP, FILTER_FLAG_IPV6) !== false) {
            return null;
        }
        return sprintf("'%s' does not appear to be an IPv4 or IPv6 address", $host);
    }

    /** @param array<string, mixed> $options */
    private static function intOption(array $options, string $name, int $min, int $max): ?int
    {
        $value = $options[$name] ?? null;
        if ($value !== null && (!is_int($value) || $value < $min || $value > $max)) {
            throw new \InvalidArgumentException(sprintf('%s must be an integer in %d..%d', $name, $min, $max));
        }
        return $value;
    }

    /** @param array<string, mixed> $options */
    private static function textOption(array $options, string $name, int $limit): ?string
    {
        $value = $options[$name] ?? null;
        if ($value !== null) {
            self::checkName($name, $value, $limit);
        }
        return $value;
    }

    /**
     * A queue, idempotency_key or concurrency_key: text that must compare the same on every database.
     * MariaDB's PAD SPACE collation makes 'k' and 'k ' one, PostgreSQL and SQLite two, so edge whitespace is
     * refused (the rule of pending_jobs/validation.py, Python's str.strip()).
     *
     * @param array<string, mixed> $options
     */
    private static function keyOption(array $options, string $name, int $limit): ?string
    {
        $value = self::textOption($options, $name, $limit);
        if ($value !== null && preg_match(self::EDGE_SPACE, $value) === 1) {
            throw new \InvalidArgumentException(sprintf('%s must not start or end with whitespace', $name));
        }
        return $value;
    }

    private static function checkName(string $what, mixed $value, int $limit): void
    {
        $length = is_string($value) ? self::length($what, $value) : 0;
        if ($length === 0 || $length > $limit) {
            throw new \InvalidArgumentException(
                sprintf('%s must be a non-empty string of at most %d characters', $what, $limit)
            );
        }
        // pdo_pgsql ends a string at its first NUL: 'a\0b' would be stored as 'a', and two keys that differ
        // after a NUL would be one. Refused everywhere, so a job is refused or stored alike on every database.
        if (str_contains($value, "\0")) {
            throw new \InvalidArgumentException(sprintf('%s must not contain NUL', $what));
        }
    }

    /** Characters (code points), as the database's VARCHAR counts them; refuses invalid UTF-8. */
    private static function length(string $what, string $value): int
    {
        $count = preg_match_all('/./su', $value);
        if ($count === false) {
            throw new \InvalidArgumentException(sprintf('%s must be valid UTF-8', $what));
        }
        return $count;
    }

    private static function quote(string $value): string
    {
        return "'" . addcslashes($value, "'\\") . "'";
    }
}
