"""The async shell of the campaign layer: HTTP API, gateway client, sign-up tools."""
