"""recur: train recurrent-depth (looped) language models."""
