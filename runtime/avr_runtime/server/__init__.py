"""The worker: call legs (AudioSocket, WebSocket stream), the HTTP API, and the process lifecycle."""
