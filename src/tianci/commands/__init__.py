"""Entry points of the `tianci` subcommands: each module has add_arguments(parser) and run(args)."""
