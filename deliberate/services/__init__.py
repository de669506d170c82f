"""Shared services every stage uses: spec, data, models, generation, chat API, run outputs, training helpers."""
