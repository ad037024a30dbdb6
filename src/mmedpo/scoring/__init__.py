"""Clinical relevance scoring: judges and the normalisation of their scores."""
