"""ThreatConnect REST API: HMAC signing and indicator listings (v2 and v3)."""
