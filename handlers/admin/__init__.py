"""The admin panel: a sub-application with cookie sessions, CSRF and server-rendered pages."""
