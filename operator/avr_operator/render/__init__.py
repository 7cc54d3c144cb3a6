"""Pure rendering: an AVRDeployment in, the Kubernetes manifests it needs out. No I/O here."""
