"""Cameras watched by the server: streams read live, faces tracked, one event per decided track.

``source`` reads frames (PyAV), ``tracks`` follows faces and votes, ``watch`` runs one camera,
``claim`` makes one server watch each camera, ``manager`` holds them all. Knows nothing of HTTP.
"""
