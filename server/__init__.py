"""Assembly: the app factory, the CLI, settings, logs and typed keys; services, real time and adapters below."""
