"""Readers, validation, chat templates and collation for every JSONL format the stages read."""
