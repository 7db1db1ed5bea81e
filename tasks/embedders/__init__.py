"""Embedders per modality behind one contract (`base.Embedder`), found by name (`registry`)."""
