"""The seed API's pieces: its results database and its progress line."""
