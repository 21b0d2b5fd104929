"""Route handlers, one module per resource; each stays thin and calls a service in server/."""
