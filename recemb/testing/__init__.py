"""Test support that ships with recemb (a real local Ray cluster for job tests)."""
