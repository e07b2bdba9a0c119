"""Graded exercises for notebooks 6.1-6.5: stubs a learner fills in, and the grader (`python -m exercises.check`)."""
