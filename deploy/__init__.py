"""Running it: settings, the app factory, the CLI, model preparation."""
