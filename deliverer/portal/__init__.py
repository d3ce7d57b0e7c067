"""The merchant portal's services: sessions, what its pages read, Diagnose."""
