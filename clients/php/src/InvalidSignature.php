<?php

declare(strict_types=1);

namespace PendingJobs;

/**
 * A callback that must not be trusted: a header is missing, the timestamp is outside the tolerance,
 * or no signature matches. The message says which, and never contains a secret. Answer 401.
 */
final class InvalidSignature extends \UnexpectedValueException
{
}
