"""What both scheduler families share, below both: argument checks, per-call arguments, bounded caches,
step progress and the frozen-config mixin."""
