"""Images, dataset readers and interchange formats."""
