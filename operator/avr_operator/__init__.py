"""AVR operator: reconciles AVRDeployment resources into Kubernetes workloads."""

__version__ = "0.1.0"
