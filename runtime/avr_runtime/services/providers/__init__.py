"""Clients for AVR's provider protocols."""
