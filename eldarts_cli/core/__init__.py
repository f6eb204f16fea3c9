"""Utilities every layer uses: errors, the registry type, devices, atomic file writes, validation messages."""
