"""One module per stage. A stage reaches another only through its saved outputs (a dataset file, a model folder)."""
