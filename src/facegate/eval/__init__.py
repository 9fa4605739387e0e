"""`facegate eval`: accuracy on a folder of people (verification, identification, degraded copies,
settings compared) and the metrics it reports. Knows nothing of HTTP."""
