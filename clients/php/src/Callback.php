<?php

declare(strict_types=1);

namespace PendingJobs;

/**
 * Verify the signed callbacks pending-jobs POSTs when a job ends (Standard Webhooks).
 *
 * Signed content: "{webhook-id}.{webhook-timestamp}.{raw body}", HMAC-SHA256 with the bytes a
 * `whsec_<base64>` secret encodes; the `webhook-signature` header holds one or more space-separated
 * `v1,<base64>` signatures (two while a secret is being rotated).
 */
final class Callback
{
    public const SECRET_PREFIX = 'whsec_';
    public const DEFAULT_TOLERANCE = 300;
    private const REQUIRED = ['webhook-id', 'webhook-timestamp', 'webhook-signature'];
    private const READ_DEPTH = 100_000;  // PHP's parser itself gives up near 10,000 levels (see decode())

    /**
     * Check a callback and return its decoded JSON body; throws InvalidSignature saying why not.
     *
     * $secrets: one `whsec_…` secret or several (during a rotation any may match).
     * $headers: getallheaders(), $_SERVER (HTTP_WEBHOOK_ID …) or a PSR-7 getHeaders() array; names
     * are matched case-insensitively. $body: the raw body, file_get_contents('php://input').
     * $now: Unix time (default: the current time); a timestamp more than $tolerance seconds away
     * from it is refused, so a captured request cannot be replayed later.
     *
     * @param string|list<string> $secrets
     * @param array<mixed> $headers
     * @return array<mixed>
     */
    public static function verify(
        string|array $secrets,
        array $headers,
        string $body,
        ?int $now = null,
        int $tolerance = self::DEFAULT_TOLERANCE,
    ): array {
        $keys = array_map(self::key(...), is_array($secrets) ? array_values($secrets) : [$secrets]);
        if ($keys === []) {
            throw new \InvalidArgumentException('no callback secret given');
        }
        if ($tolerance < 0) {
            throw new \InvalidArgumentException('tolerance must not be negative');
        }
        $found = self::normalise($headers);
        foreach (self::REQUIRED as $name) {
            if (is_array($found[$name] ?? null)) {
                throw new InvalidSignature(sprintf('header %s is %s, not a string', $name, $found[$name][0]));
            }
            if (($found[$name] ?? '') === '') {
                throw new InvalidSignature("missing header $name");
            }
        }
        $timestamp = $found['webhook-timestamp'];
        if (preg_match('/^[0-9]{1,12}$/', $timestamp) !== 1) {
            throw new InvalidSignature('webhook-timestamp is not a Unix time in seconds');
        }
        $age = ($now ?? time()) - (int) $timestamp;
        if ($age > $tolerance) {
            $reason = 'webhook-timestamp is too old: %d seconds ago, over the %d-second tolerance';
            throw new InvalidSignature(sprintf($reason, $age, $tolerance));
        }
        if (-$age > $tolerance) {
            $reason = 'webhook-timestamp is too new: %d seconds ahead, over the %d-second tolerance';
            throw new InvalidSignature(sprintf($reason, -$age, $tolerance));
        }
        $given = self::signatures($found['webhook-signature']);
        $signed = $found['webhook-id'] . '.' . $timestamp . '.' . $body;
        $matched = false;
        foreach ($keys as $key) {
            $expected = base64_encode(hash_hmac('sha256', $signed, $key, true));
            foreach ($given as $signature) {
                // hash_equals takes the same time wherever the strings differ; compare every pair
                // rather than stop at a match, so timing tells nothing about which one matched.
                $matched = hash_equals($expected, $signature) || $matched;
            }
        }
        if (!$matched) {
            throw new InvalidSignature(
                'no matching signature: the body or headers were altered, or the secret is not the sender\'s'
            );
        }
        return self::decode($body);
    }

    /** The HMAC key a `whsec_<base64>` secret encodes (the prefix is optional, padding may be left out). */
    private static function key(mixed $secret): string
    {
        if (!is_string($secret)) {
            throw new \InvalidArgumentException('a callback secret must be a string');
        }
        $encoded = str_starts_with($secret, self::SECRET_PREFIX)
            ? substr($secret, strlen(self::SECRET_PREFIX))
            : $secret;
        $key = base64_decode($encoded . str_repeat('=', (4 - strlen($encoded) % 4) % 4), true);
        if ($key === false || $key === '') {
            // Never echo the secret: it may be a real key with one typo.
            throw new \InvalidArgumentException("a callback secret is not valid base64 after 'whsec_'");
        }
        return $key;
    }

    /**
     * Header names in lower case with dashes; `HTTP_WEBHOOK_ID` ($_SERVER) becomes `webhook-id`. An integer
     * value is its decimal text (a framework or test may give the timestamp as an int); a value of another
     * type is kept as [its type], so verify() can say so rather than call the header missing.
     *
     * @param array<mixed> $headers
     * @return array<string, string|array{0: string}>
     */
    private static function normalise(array $headers): array
    {
        $found = [];
        foreach ($headers as $name => $value) {
            $name = strtolower(str_replace('_', '-', (string) $name));
            if (str_starts_with($name, 'http-')) {
                $name = substr($name, strlen('http-'));
            }
            if ($value === null || !in_array($name, self::REQUIRED, true)) {
                continue;  // null: as good as missing
            }
            if (is_array($value)) {  // PSR-7: a list of values per header
                $value = array_map(fn (mixed $one) => is_int($one) ? (string) $one : $one, $value);
                $value = implode(' ', array_filter($value, 'is_string'));
            }
            $found[$name] = match (true) {
                is_string($value) => trim($value),
                is_int($value) => (string) $value,
                default => [get_debug_type($value)],
            };
        }
        return $found;
    }

    /** @return list<string> the base64 values of the `v1,` entries (other versions are ignored) */
    private static function signatures(string $header): array
    {
        $given = [];
        foreach (preg_split('/\s+/', $header) ?: [] as $entry) {
            [$version, $value] = array_pad(explode(',', $entry, 2), 2, '');
            if ($version === 'v1' && $value !== '') {
                $given[] = $value;
            }
        }
        if ($given === []) {
            throw new InvalidSignature('webhook-signature holds no v1 signature');
        }
        return $given;
    }

    /**
     * The signed body, decoded. The sender signed it, so a body that is not a JSON object is not an
     * InvalidSignature but an \UnexpectedValueException. json_decode's default depth (512) would refuse a
     * real callback: PostgreSQL stores a job's result nested thousands of levels deep, and the body holds it.
     *
     * @return array<mixed>
     */
    private static function decode(string $body): array
    {
        try {
            $document = json_decode($body, true, self::READ_DEPTH, JSON_THROW_ON_ERROR);
        } catch (\JsonException $error) {
            // PHP's parser says 'Syntax error' where its own stack ends, near 10,000 levels.
            $deep = substr_count($body, '[') + substr_count($body, '{') >= 9_000
                ? ', or nests deeper than PHP\'s JSON parser reads (near 10,000 levels)'
                : '';
            throw new \UnexpectedValueException(
                'the signed body is not JSON: ' . $error->getMessage() . $deep,
                0,
                $error,
            );
        }
        // An array from json_decode is an object or a list: only the first character tells `{}` from `[]`.
        if (!is_array($document) || ltrim($body, " \t\n\r")[0] !== '{') {
            throw new \UnexpectedValueException('the signed body is not a JSON object');
        }
        return $document;
    }
}
