"""The bundled data (reference models, task files). Installed as the package
``gatescope_data`` (see pyproject.toml); the code finds it through ``probe.paths``."""
