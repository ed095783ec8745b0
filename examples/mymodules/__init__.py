"""Example modules for modserver (the example project of ModuleServer's README)."""
