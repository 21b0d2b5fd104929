"""Services: the rules of accounts, sessions, notifications and the audit log; handlers call these."""
