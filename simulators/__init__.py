"""Local simulators of ThreatConnect and Microsoft's login, Graph and Sentinel endpoints (not the product)."""
