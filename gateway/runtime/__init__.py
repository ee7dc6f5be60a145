"""The async shell: the clock, the store, the carriers, the API, one anyio task group."""
