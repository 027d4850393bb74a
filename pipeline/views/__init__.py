"""Read-side helpers for the studio and the demo: reports, comparisons, the demo model."""
