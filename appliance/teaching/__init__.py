"""Teaching-file workflow: anonymize and modify, downloads, import."""
