"""Package data: shipped artifacts (see fedjax_mm.models.tower_artifacts)."""
