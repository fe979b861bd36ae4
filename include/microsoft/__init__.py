"""Microsoft side: MSAL token provider, Graph tiIndicators and Sentinel STIX upload clients."""
