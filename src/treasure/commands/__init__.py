"""CLI subcommands. Each module has `register(subparsers)` and keeps heavy imports inside its functions."""
