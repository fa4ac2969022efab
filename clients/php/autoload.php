<?php

// For applications without Composer: `require 'path/to/clients/php/autoload.php';` loads the
// PendingJobs\ classes from src/ (the same PSR-4 mapping as composer.json).

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $prefix = 'PendingJobs\\';
    if (strncmp($class, $prefix, strlen($prefix)) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
