"""Concept erasure methods behind one artifact (`artifact`): MACE (`resurgence.mace`), UCE (`uce`)."""
