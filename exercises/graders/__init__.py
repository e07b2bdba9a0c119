"""The graders, one module per notebook: each `grade_<exercise>` runs a learner's code and raises `Wrong` when it
is wrong (`common.Wrong`: a key naming the mistake and a message in Chinese that teaches it)."""
