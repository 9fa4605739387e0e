"""Clients of a FaceGate server: the camera client (`facegate client`) and the HTTP helpers it and
the tests use. Know the server only through its HTTP API."""
