"""Repository-wide test configuration: every test directory imports `tests.support` helpers."""
