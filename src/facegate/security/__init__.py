"""Security: API keys and roles, the audit log, and encryption at rest (Fernet, sealed names).
Knows nothing of models; the gallery stores what these modules produce."""
