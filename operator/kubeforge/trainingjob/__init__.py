"""TrainingJob: spec → Indexed Job (+ headless Service) → status."""
