"""Shared core of every service: settings, logging, errors, servers, channels, cache, telemetry."""
