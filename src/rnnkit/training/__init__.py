"""The training loop: events, callbacks, Learner, Recorder."""
