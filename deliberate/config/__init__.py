"""The recipe: one YAML file validated into pydantic sections (what every stage reads)."""
